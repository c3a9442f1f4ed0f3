"""The ``reference`` stage: SFT log-probs of every preference completion, and a small
sample -> score -> pairs -> reference run on a tiny model."""
from __future__ import annotations

import shutil
import sys
import types

import pytest
import torch

from stages.common import StageError, write_jsonl
from stages.contracts import PREFERENCES, check_row, read_rows
from stages.reference import (REFERENCE, read_reference, reference, reference_logprobs,
                              reference_settings)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the film was", "I loved this movie and", "bad", "the plot is not very good but"]
COMPLETIONS = [" great fun.", " the acting was never boring, really.", "", " dull."]


def _naive_logprob(model, tokenizer, prompt: str, completion: str,
                   max_length: int) -> tuple[float, int]:
    """One sequence at a time: full log-softmax, sum over the completion positions."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"][: max_length - len(p)]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
    total = sum(logprobs[len(p) + t - 1, tok].item() for t, tok in enumerate(c))
    return total, len(c)


@pytest.mark.parametrize("batch_size, max_length", [(3, 128), (2, 9)])
def test_matches_one_sequence_at_a_time(tiny_lm, batch_size, max_length):
    model, tokenizer = tiny_lm
    prompts = PROMPTS * 2
    completions = COMPLETIONS + [" a", " the ending and the score were brilliant", " not bad",
                                 " I hated it."]
    logps, counts = reference_logprobs(model, tokenizer, prompts, completions,
                                       batch_size=batch_size, max_length=max_length,
                                       progress=False)
    for p, c, lp, n in zip(prompts, completions, logps, counts):
        want, want_n = _naive_logprob(model, tokenizer, p, c, max_length)
        assert n == want_n and lp == pytest.approx(want, abs=1e-4)
    assert counts[2] == 0 and logps[2] == 0.0  # an empty completion has no tokens
    assert max_length == 128 or max(counts) < 9  # truncated to the max_length budget


def _preference_rows() -> list[dict]:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        comps = COMPLETIONS[i:] + COMPLETIONS[:i]
        rows.append({"prompt_id": f"train-{i}", "prompt": prompt, "completions": comps,
                     "rewards": [0.0, 1.0, 2.0, 3.0], "pairs": [[1, 0], [3, 2]],
                     "split": "val" if i == 2 else "train"})
    return rows


def test_reference_stage_rows_in_preference_order(tmp_path, monkeypatch, tiny_lm_dir, tiny_lm):
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    monkeypatch.chdir(tmp_path)
    prefs = _preference_rows()
    write_jsonl("data/preferences.jsonl", prefs)
    summary = reference({"reference": {"batch_size": 5, "max_length": 64}}, progress=False)
    rows = read_reference("data/reference.jsonl", read_rows("data/preferences.jsonl",
                                                            PREFERENCES))
    assert summary["completions"] == 16 and [r["prompt_id"] for r in rows] == [
        p["prompt_id"] for p in prefs]
    model, tokenizer = tiny_lm
    for pref, ref in zip(prefs, rows):
        for c, lp, n in zip(pref["completions"], ref["logps"], ref["n_tokens"]):
            want, want_n = _naive_logprob(model, tokenizer, pref["prompt"], c, 64)
            assert n == want_n and lp == pytest.approx(want, abs=1e-4)
    with pytest.raises(StageError, match="does not match preferences row"):
        read_reference("data/reference.jsonl", prefs[1:] + prefs[:1])
    with pytest.raises(StageError, match="3 rows for 4 preferences rows"):
        write_jsonl("short.jsonl", rows[:3])
        read_reference("short.jsonl", prefs)


@pytest.mark.parametrize("row, needle", [
    ({"prompt_id": "a", "logps": [0.0, -1.0], "n_tokens": [1]}, "logps has 2 values"),
    ({"prompt_id": "a", "logps": [float("nan")], "n_tokens": [1]}, "finite"),
    ({"prompt_id": "a", "logps": [-1.0], "n_tokens": [-1]}, "n_tokens"),
    ({"prompt_id": "a", "logps": [-1.0]}, "missing field 'n_tokens'"),
])
def test_reference_contract(row, needle):
    with pytest.raises(StageError, match=needle):
        check_row(row, REFERENCE, "data/reference.jsonl:1")


@pytest.mark.parametrize("section, needle", [
    ({"batch_size": 0, "max_length": 64}, "reference.batch_size"),
    ({"batch_size": 4, "max_length": 1}, "reference.max_length"),
    ({"batch_size": 4}, "reference.max_length is missing"),
])
def test_bad_reference_params(section, needle):
    with pytest.raises(StageError, match=needle):
        reference_settings({"reference": section})


def test_sample_score_pairs_reference_chain(tmp_path, monkeypatch, tiny_lm_dir):
    """The four stages in a row on a tiny model and a stand-in reward model."""
    from stages.pairs import make_preference_file
    from stages.sample import sample
    from stages.score import score

    fake = types.ModuleType("stages.reward")
    fake.load_reward_model = lambda path: (None, None)
    fake.score_texts = lambda m, t, texts, *, score="logit", batch_size=64: [
        float(len(x) % 7) for x in texts]
    monkeypatch.setitem(sys.modules, "stages.reward", fake)
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    (tmp_path / "models" / "reward").mkdir()
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/prompts/train.jsonl",
                [{"prompt_id": f"train-{i}", "prompt": p} for i, p in enumerate(PROMPTS * 3)])
    params = {"seed": 0, "data": {"source": "synthetic"}, "reward": {"score": "logit"},
              "sample": {"n_per_prompt": 4, "temperature": 0.7, "max_new_tokens": 8,
                         "batch_size": 16},
              "pairs": {"strategy": "first_round", "val_fraction": 0.2,
                        "rso": {"n_select": 4, "beta": 0.5}},
              "reference": {"batch_size": 16, "max_length": 64}}
    sample(params, progress=False)
    score(params)
    metrics = make_preference_file(params)
    reference(params, progress=False)
    prefs = read_rows("data/preferences.jsonl", PREFERENCES)
    refs = read_reference("data/reference.jsonl", prefs)
    assert len(refs) == metrics["prompts_with_pairs"] and "gold_agreement" in metrics
    assert all(len(r["logps"]) == 4 for r in refs)
    assert all(lp <= 0 for r in refs for lp in r["logps"])
