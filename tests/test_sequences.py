"""Tokenisation of (prompt, completion) pairs and their log-probs (:mod:`stages.lib.sequences`),
checked against one unpadded sequence at a time."""

from __future__ import annotations

import pytest
import torch

from stages.lib.contracts import REFERENCE, check_row
from stages.lib.sequences import (
    completion_logprobs,
    encode_batch,
    reference_logprobs,
    reference_rows,
    right_pad,
    token_logprobs,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the film was", "I loved this movie and", "bad", "the plot is not very good but"]
COMPLETIONS = [" great fun.", " the acting was never boring, really.", "", " dull."]


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


def test_right_pad():
    ids, mask = right_pad([[5, 6, 7], [8], []], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1], [1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = right_pad([[]], pad_id=0)  # at least one column
    assert ids.shape == (1, 1) and mask.tolist() == [[0]]


def test_encode_batch_masks_and_truncation(tiny_lm):
    _, tokenizer = tiny_lm
    p = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in PROMPTS[:2]]
    c = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in COMPLETIONS[:2]]
    max_length = len(p[1]) + 3
    batch = encode_batch(tokenizer, PROMPTS[:2], COMPLETIONS[:2], max_length=max_length)
    for i in range(2):
        kept = c[i][: max_length - len(p[i])]  # the completion is cut, not the prompt
        n = len(p[i]) + len(kept)
        assert batch["input_ids"][i, :n].tolist() == p[i] + kept
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert batch["completion_mask"][i, :n].tolist() == [0] * len(p[i]) + [1] * len(kept)
        assert batch["completion_mask"][i, n:].sum() == 0
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    assert batch["input_ids"].shape[1] <= max_length


def test_encode_batch_errors(tiny_lm):
    _, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="differ in length"):
        encode_batch(tokenizer, PROMPTS, COMPLETIONS[:2], max_length=64)
    n = len(tokenizer(PROMPTS[3], add_special_tokens=False)["input_ids"])
    with pytest.raises(
        ValueError,
        match=f"a prompt of {n} tokens leaves no room for a completion within max_length={n}",
    ):
        encode_batch(tokenizer, PROMPTS[3:], COMPLETIONS[:1], max_length=n)


def test_token_logprobs_is_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    want = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, ids), want, atol=1e-6)


def test_completion_logprobs_matches_one_at_a_time(tiny_lm):
    model, tokenizer = tiny_lm
    batch = encode_batch(tokenizer, PROMPTS, COMPLETIONS, max_length=64)
    with torch.no_grad():
        logps, counts = completion_logprobs(model, batch)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        want, want_n = _naive_logprob(model, tokenizer, p, c, 64)
        assert int(counts[i]) == want_n and float(logps[i]) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("batch_size, max_length", [(3, 128), (2, 9)])
def test_reference_logprobs_matches_one_sequence_at_a_time(tiny_lm, batch_size, max_length):
    model, tokenizer = tiny_lm
    prompts = PROMPTS * 2
    completions = COMPLETIONS + [
        " a",
        " the ending and the score were brilliant",
        " not bad",
        " I hated it.",
    ]
    logps, counts = reference_logprobs(
        model,
        tokenizer,
        prompts,
        completions,
        batch_size=batch_size,
        max_length=max_length,
        progress=False,
    )
    for p, c, lp, n in zip(prompts, completions, logps, counts):
        want, want_n = _naive_logprob(model, tokenizer, p, c, max_length)
        assert n == want_n and lp == pytest.approx(want, abs=1e-4)
    assert counts[2] == 0 and logps[2] == 0.0  # an empty completion has no tokens
    assert max_length == 128 or max(counts) < 9  # truncated to the max_length budget


def test_reference_rows_follow_the_preference_rows(tiny_lm):
    model, tokenizer = tiny_lm
    rows = [
        {"prompt_id": f"train-{i}", "prompt": p, "completions": COMPLETIONS[i:] or [" x"]}
        for i, p in enumerate(PROMPTS)
    ]
    out = reference_rows(model, tokenizer, rows, batch_size=3, max_length=64, progress=False)
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]
    assert [len(r["logps"]) for r in out] == [4, 3, 2, 1]
    assert all(check_row(r, REFERENCE, "row") is r for r in out)
    assert list(out[0]) == ["prompt_id", "logps", "n_tokens"]
    want, want_n = _naive_logprob(model, tokenizer, PROMPTS[1], COMPLETIONS[2], 64)
    assert out[1]["n_tokens"][1] == want_n and out[1]["logps"][1] == pytest.approx(want, abs=1e-4)
