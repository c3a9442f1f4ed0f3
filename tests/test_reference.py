"""The ``reference`` stage: SFT log-probs of every preference completion, equal to the
log-probs recorded while sampling them, and a small sample -> score -> pairs -> reference run on
a tiny model (the log-prob arithmetic itself: tests/test_sequences.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

import stages.score
from stages.lib.common import write_jsonl
from stages.lib.config import SampleConfig, load_params, read_section
from stages.lib.contracts import PREFERENCES, SAMPLES, check_row, read_reference, read_rows
from stages.lib.sampling import sample_rows
from stages.lib.sequences import reference_rows
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
    model, tokenizer, prompt: str, ids: list[int], max_length: int
) -> tuple[float, int]:
    """One sequence at a time: full log-softmax, sum over the completion positions."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = ids[: max_length - len(p)]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
    total = sum(logprobs[len(p) + t - 1, tok].item() for t, tok in enumerate(c))
    return total, len(c)


def _preference_rows(tokenizer) -> list[dict]:
    """Rows as the pipeline writes them: the completions' ids, EOS last where finished."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        comps = COMPLETIONS[i:] + COMPLETIONS[:i]
        finished = [True, False, True, True]
        ids = tokenizer(comps, add_special_tokens=False)["input_ids"]
        rows.append(
            {
                "prompt_id": f"train-{i}",
                "prompt": prompt,
                "completions": comps,
                "completion_ids": [c + [tokenizer.eos_token_id] * f for c, f in zip(ids, finished)],
                "finished": finished,
                "rewards": [0.0, 1.0, 2.0, 3.0],
                "pairs": [[1, 0], [3, 2]],
                "split": "val" if i == 2 else "train",
            }
        )
    return rows


def test_reference_stage_rows_in_preference_order(tmp_path, monkeypatch, tiny_lm_dir, tiny_lm):
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    monkeypatch.chdir(tmp_path)
    model, tokenizer = tiny_lm
    prefs = _preference_rows(tokenizer)
    write_jsonl("data/preferences.jsonl", prefs)
    summary = reference(_params(reference={"batch_size": 5, "max_length": 64}), progress=False)
    rows = read_reference("data/reference.jsonl", read_rows("data/preferences.jsonl", PREFERENCES))
    assert summary["completions"] == 16 and summary["rows"] == 4
    assert summary["finished"] == 0.75 and summary["cut"] == 0
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"] for p in prefs]
    for pref, ref in zip(prefs, rows):
        for c, lp, n in zip(pref["completion_ids"], ref["logps"], ref["n_tokens"]):
            want, want_n = _naive_logprob(model, tokenizer, pref["prompt"], c, 64)
            assert n == want_n == len(c) and lp == pytest.approx(want, abs=1e-4)
    counts = [n for r in rows for n in r["n_tokens"]]
    assert summary["mean_tokens"] == pytest.approx(sum(counts) / 16)
    n_prompt = max(len(p) for p in tokenizer(PROMPTS, add_special_tokens=False)["input_ids"])
    short = reference(_params(reference={"batch_size": 5, "max_length": n_prompt + 2}), False)
    assert short["cut"] > 0  # counted: completions longer than the budget


def test_reference_logprob_is_the_logprob_recorded_while_sampling(tiny_lm):
    """The reference stage scores exactly what the policy sampled: for every sample of the
    ``sample`` stage, its reference log-prob equals the sum of log π (untempered) recorded by
    ``generate`` for its tokens, the EOS included when the policy emitted it."""
    from stages.lib.generation import generate_completions

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: o.index_add_(-1, torch.tensor([eos]), torch.full((*o.shape[:-1], 1), 2.5))
    )  # EOS ~35x likelier at T 0.7: about half the samples finish
    params = _params(sample={"n_per_prompt": 6, "max_new_tokens": 12, "batch_size": 7})
    cfg = read_section(params, "sample", SampleConfig)
    prompts = [{"prompt_id": f"train-{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    rows, _ = sample_rows(model, tokenizer, prompts, cfg, seed=3, progress=False)
    recorded = generate_completions(
        model,
        tokenizer,
        PROMPTS,
        n_per_prompt=6,
        temperature=cfg.temperature,
        max_new_tokens=12,
        batch_size=7,
        seed=3,
        stream="sample",
        record_logprobs=True,
        progress=False,
    )
    assert [r["completion_ids"] for r in rows] == recorded.token_ids  # the same draws
    assert all(check_row(r, SAMPLES, "row") for r in rows)
    finished = [f for r in rows for f in r["finished"]]
    assert 0 < sum(finished) < len(finished)
    refs = reference_rows(model, tokenizer, rows, batch_size=5, max_length=64, progress=False)
    for row, ref, logps in zip(rows, refs, recorded.logprobs):
        assert ref["n_tokens"] == [len(ids) for ids in row["completion_ids"]]
        assert ref["logps"] == pytest.approx(logps, rel=1e-6, abs=1e-5)  # float32


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


def test_missing_inputs(tmp_path, monkeypatch, tiny_lm):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data/preferences\.jsonl: file not found"):
        reference(PARAMS, progress=False)
    write_jsonl("data/preferences.jsonl", _preference_rows(tiny_lm[1]))
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
