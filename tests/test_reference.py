"""The ``reference`` stage: SFT log-probs of every preference completion, and a small
sample -> score -> pairs -> reference run on a tiny model (the log-prob arithmetic itself:
tests/test_sequences.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import stages.score
from stages.lib.common import write_jsonl
from stages.lib.config import load_params
from stages.lib.contracts import PREFERENCES, read_reference, read_rows
from stages.pairs import make_preference_file
from stages.reference import reference
from stages.sample import sample
from stages.score import score

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: The repository's params; tests override single keys of it.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
PROMPTS = ["the film was", "I loved this movie and", "bad", "the plot is not very good but"]
COMPLETIONS = [" great fun.", " the acting was never boring, really.", "", " dull."]


def _params(**sections) -> dict:
    """The repository's params with some keys of some sections overridden."""
    return {**PARAMS, **{name: {**PARAMS[name], **keys} for name, keys in sections.items()}}


def _naive_logprob(
    model, tokenizer, prompt: str, completion: str, max_length: int
) -> tuple[float, int]:
    """One sequence at a time: full log-softmax, sum over the completion positions."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"][: max_length - len(p)]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
    total = sum(logprobs[len(p) + t - 1, tok].item() for t, tok in enumerate(c))
    return total, len(c)


def _preference_rows() -> list[dict]:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        comps = COMPLETIONS[i:] + COMPLETIONS[:i]
        rows.append(
            {
                "prompt_id": f"train-{i}",
                "prompt": prompt,
                "completions": comps,
                "rewards": [0.0, 1.0, 2.0, 3.0],
                "pairs": [[1, 0], [3, 2]],
                "split": "val" if i == 2 else "train",
            }
        )
    return rows


def test_reference_stage_rows_in_preference_order(tmp_path, monkeypatch, tiny_lm_dir, tiny_lm):
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    monkeypatch.chdir(tmp_path)
    prefs = _preference_rows()
    write_jsonl("data/preferences.jsonl", prefs)
    summary = reference(_params(reference={"batch_size": 5, "max_length": 64}), progress=False)
    rows = read_reference("data/reference.jsonl", read_rows("data/preferences.jsonl", PREFERENCES))
    assert summary["completions"] == 16 and summary["rows"] == 4
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"] for p in prefs]
    model, tokenizer = tiny_lm
    for pref, ref in zip(prefs, rows):
        for c, lp, n in zip(pref["completions"], ref["logps"], ref["n_tokens"]):
            want, want_n = _naive_logprob(model, tokenizer, pref["prompt"], c, 64)
            assert n == want_n and lp == pytest.approx(want, abs=1e-4)
    counts = [n for r in rows for n in r["n_tokens"]]
    assert summary["mean_tokens"] == pytest.approx(sum(counts) / 16)


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"batch_size": 0, "max_length": 64}, "params: reference.batch_size: must be >= 1, got 0"),
        ({"batch_size": 4, "max_length": 1}, "params: reference.max_length: must be >= 2, got 1"),
        ({"batch_size": 4}, "params: reference.max_length: is missing"),
    ],
)
def test_bad_reference_params(tmp_path, monkeypatch, section, needle):
    monkeypatch.chdir(tmp_path)  # checked before any file is read
    with pytest.raises(ValueError) as err:
        reference({**PARAMS, "reference": section}, progress=False)
    assert str(err.value).startswith(needle)


def test_missing_inputs(tmp_path, monkeypatch, tiny_lm_dir):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data/preferences\.jsonl: file not found"):
        reference(PARAMS, progress=False)
    write_jsonl("data/preferences.jsonl", _preference_rows())
    with pytest.raises(FileNotFoundError, match=r"models/sft: no model found"):
        reference(PARAMS, progress=False)


def test_sample_score_pairs_reference_chain(tmp_path, monkeypatch, tiny_lm_dir):
    """The four stages in a row on a tiny model and a stand-in reward model."""
    monkeypatch.setattr(stages.score, "load_reward_model", lambda path: (None, None))
    monkeypatch.setattr(
        stages.score,
        "score_texts",
        lambda m, t, texts, *, score="logit", batch_size=64: [float(len(x) % 7) for x in texts],
    )
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    (tmp_path / "models" / "reward").mkdir()
    monkeypatch.chdir(tmp_path)
    write_jsonl(
        "data/prompts/train.jsonl",
        [{"prompt_id": f"train-{i}", "prompt": p} for i, p in enumerate(PROMPTS * 3)],
    )
    params = _params(
        data={"source": "synthetic"},
        sample={"n_per_prompt": 4, "max_new_tokens": 8, "batch_size": 16},
        pairs={"strategy": "first_round", "val_fraction": 0.2},
        reference={"batch_size": 16, "max_length": 64},
    )
    sample(params, progress=False)
    score(params)
    metrics = make_preference_file(params)
    reference(params, progress=False)
    prefs = read_rows("data/preferences.jsonl", PREFERENCES)
    refs = read_reference("data/reference.jsonl", prefs)
    assert len(refs) == metrics["prompts_with_pairs"] and "gold_agreement" in metrics
    assert all(len(r["logps"]) == 4 for r in refs)
    assert all(lp <= 0 for r in refs for lp in r["logps"])
