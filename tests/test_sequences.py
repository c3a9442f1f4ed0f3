"""Sequences of prompt + completion ids and their log-probs (:mod:`stages.lib.sequences`), checked
against one unpadded sequence at a time; the float32 LM head under bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from stages.lib.contracts import REFERENCE, check_row
from stages.lib.sequences import (
    check_completion_ids,
    check_logits,
    completion_index,
    completion_logprobs,
    encode_batch,
    encode_ids,
    final_hidden,
    head_logits,
    logsumexp_keep_softmax,
    reference_autocast,
    reference_logprobs,
    reference_rows,
    right_pad,
    token_logprobs,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the film was", "I loved this movie and", "bad", "the plot is not very good but"]
TEXTS = [" great fun.", " the acting was never boring, really.", "", " dull."]


def _ids(tokenizer, texts: list[str], finished: list[bool] | None = None) -> list[list[int]]:
    """Completion ids as sampling writes them: tokens, then EOS where ``finished``."""
    finished = finished or [True] * len(texts)
    eos = tokenizer.eos_token_id
    toks = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t + [eos] * done for t, done in zip(toks, finished)]


def _naive_logprob(
    model, tokenizer, prompt: str, ids: list[int], max_length: int | None
) -> tuple[float, int]:
    """One sequence at a time: full float64 log-softmax of the model's logits, summed over the
    completion positions (the completion cut to ``max_length``)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = ids if max_length is None else ids[: max_length - len(p)]
    x = torch.tensor([p + c])
    with torch.no_grad():
        logprobs = model(input_ids=x).logits[0].double().log_softmax(-1)
    total = sum(logprobs[len(p) + t - 1, tok].item() for t, tok in enumerate(c))
    return total, len(c)


def test_right_pad():
    ids, mask = right_pad([[5, 6, 7], [8], []], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1], [1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = right_pad([[]], pad_id=0)  # at least one column
    assert ids.shape == (1, 1) and mask.tolist() == [[0]]


def test_encode_ids_masks_and_truncation():
    batch = encode_ids([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 9, 2], [7, 3, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    cut = encode_ids([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=1, max_length=3)
    assert cut["input_ids"].tolist() == [[5, 6, 8], [7, 3, 1]]  # the completion is cut, EOS too
    assert cut["completion_mask"].tolist() == [[0, 0, 1], [0, 1, 0]]
    assert encode_ids([[5]], [[]], 0)["completion_mask"].tolist() == [[0]]  # empty: no token
    with pytest.raises(ValueError, match="sequence 1 has an empty prompt"):
        encode_ids([[5], []], [[1], [2]], 0)
    with pytest.raises(ValueError, match="a prompt of 2 tokens leaves no room"):
        encode_ids([[5, 6]], [[1]], 0, max_length=2)
    with pytest.raises(TypeError, match="completions must be token-id lists"):
        encode_ids([[5]], [" text"], 0)


def test_encode_batch_uses_the_ids_not_the_text(tiny_lm):
    _, tokenizer = tiny_lm
    p = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in PROMPTS[:2]]
    ids = _ids(tokenizer, TEXTS[:2], [True, False])
    max_length = len(p[1]) + 3
    batch = encode_batch(tokenizer, PROMPTS[:2], ids, max_length=max_length)
    for i in range(2):
        kept = ids[i][: max_length - len(p[i])]  # the completion is cut, not the prompt
        n = len(p[i]) + len(kept)
        assert batch["input_ids"][i, :n].tolist() == p[i] + kept
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert batch["completion_mask"][i, :n].tolist() == [0] * len(p[i]) + [1] * len(kept)
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    whole = encode_batch(tokenizer, PROMPTS[:1], ids[:1], max_length=64)
    assert whole["input_ids"][0, -1] == tokenizer.eos_token_id  # the EOS is the last token
    odd = [[7, 7, 7]]  # ids the text would never tokenise to are kept as they are
    assert encode_batch(tokenizer, PROMPTS[:1], odd, 64)["input_ids"][0, -3:].tolist() == odd[0]


def test_encode_batch_errors(tiny_lm):
    _, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="differ in length"):
        encode_batch(tokenizer, PROMPTS, [[1], [2]], max_length=64)
    n = len(tokenizer(PROMPTS[3], add_special_tokens=False)["input_ids"])
    with pytest.raises(
        ValueError,
        match=f"a prompt of {n} tokens leaves no room for a completion within max_length={n}",
    ):
        encode_batch(tokenizer, PROMPTS[3:], [[1]], max_length=n)


def test_token_logprobs_is_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    want = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, ids), want, atol=1e-6)


def test_completion_logprobs_matches_one_at_a_time(tiny_lm):
    model, tokenizer = tiny_lm
    ids = _ids(tokenizer, TEXTS, [True, False, True, False])
    batch = encode_batch(tokenizer, PROMPTS, ids, max_length=64)
    with torch.no_grad():
        logps, counts = completion_logprobs(model, batch)
    assert logps.dtype == torch.float32
    for i, p in enumerate(PROMPTS):
        want, want_n = _naive_logprob(model, tokenizer, p, ids[i], 64)
        assert int(counts[i]) == want_n == len(ids[i])  # the EOS counts
        assert float(logps[i]) == pytest.approx(want, abs=1e-4)


def test_completion_index_points_at_the_positions_predicting_completion_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    # next-token grid [3, 4]: row 0 predicts completion tokens at t = 1, 2 (tokens 2, 3)
    assert completion_index(mask).tolist() == [1, 2, 4, 5, 6, 7]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_path_matches_the_plain_path_values_and_gradients(tiny_lm):
    """The fast path (head on completion positions only, target logit as a dot product) and the
    plain path (head on every position, gather) compute the same log-probs and gradients."""
    base, tokenizer = tiny_lm
    ids = _ids(tokenizer, TEXTS, [True, False, True, False])
    batch = encode_batch(tokenizer, PROMPTS, ids, max_length=12)  # cuts one completion
    weights = torch.tensor([0.7, -1.3, 2.0, 0.4])
    results = {}
    for packed in (False, True):
        model = copy.deepcopy(base)  # eval mode: no dropout, gradients all the same
        logps, counts = completion_logprobs(model, batch, packed=packed)
        (weights * logps).sum().backward()
        results[packed] = logps.detach(), counts, _grads(model)
    (plain, n_plain, g_plain), (fast, n_fast, g_fast) = results[False], results[True]
    assert torch.equal(n_plain, n_fast) and int(n_fast[2]) == 1  # an empty text still has EOS
    assert torch.allclose(fast, plain, rtol=1e-6, atol=1e-5)
    assert g_plain.keys() == g_fast.keys() and len(g_fast) > 0
    for name, g in g_plain.items():
        assert torch.allclose(g_fast[name], g, rtol=1e-4, atol=1e-6), name
    # a precomputed index (the collator's) gives the very same numbers
    with torch.no_grad():
        given = completion_logprobs(
            base, {**batch, "completion_index": completion_index(batch["completion_mask"])}
        )[0]
        assert torch.equal(given, completion_logprobs(base, batch)[0])


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (30.0, 0.0), (5.0, 1e4), (5.0, -1e4)])
def test_logsumexp_keep_softmax_matches_torch(scale, shift):
    """Values and gradients as accurate as torch.logsumexp's (float32 rounding against a float64
    reference), for peaked logits, logits far from 0 (where exp overflows without the max shift)
    and -inf entries (a masked vocabulary entry gets probability and gradient 0)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 2048, generator=g) * scale + shift
    logits[3, :100] = -torch.inf
    weights = torch.randn(64, generator=g)
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    (weights * logsumexp_keep_softmax(mine)).sum().backward()
    (weights * torch.logsumexp(theirs, dim=-1)).sum().backward()
    exact = torch.logsumexp(logits.double(), dim=-1)
    exact_grad = weights.double()[:, None] * torch.softmax(logits.double(), dim=-1)
    ulp = 1.2e-7 * max(1.0, exact.abs().max().item())  # float32 rounding at the lse's scale
    for value, grad in ((logsumexp_keep_softmax(logits), mine.grad), (None, theirs.grad)):
        if value is not None:
            assert (value.double() - exact).abs().max() <= 4 * ulp
        assert torch.allclose(grad.double(), exact_grad, rtol=4 * ulp, atol=1e-10)
    assert torch.all(mine.grad[3, :100] == 0)


def test_logsumexp_keep_softmax_gradient_is_the_softmax():
    """Its backward is the closed form d lse / d x = softmax(x), checked numerically in float64."""
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(logsumexp_keep_softmax, (x,))
    (grad,) = torch.autograd.grad(logsumexp_keep_softmax(x).sum(), x)
    assert torch.allclose(grad, torch.softmax(x, dim=-1), rtol=0, atol=1e-15)


def test_packed_gradients_are_bitwise_reproducible_on_two_threads():
    """Two backward passes of the same batch give the same gradients bit for bit with two
    threads, at the demo's scale (2,048-token vocabulary, 64 sequences): indexing the head's
    weight rows (``weight[targets]``) accumulated its gradient in a thread-dependent order."""
    from transformers import GPT2Config, GPT2LMHeadModel

    g = torch.Generator().manual_seed(0)
    config = GPT2Config(vocab_size=2048, n_layer=1, n_embd=64, n_head=2, n_positions=64)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config).eval()
    prompts = [torch.randint(0, 2048, (4,), generator=g).tolist() for _ in range(64)]
    completions = [torch.randint(0, 40, (48,), generator=g).tolist() for _ in range(64)]
    batch = encode_ids(prompts, completions, pad_id=0)  # few distinct targets: many repeats
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            model = copy.deepcopy(base)
            completion_logprobs(model, batch)[0].sum().backward()
            grads.append(model.get_output_embeddings().weight.grad.clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(grad, grads[0]) for grad in grads[1:])


def test_head_runs_in_float32_under_bf16_autocast(tiny_lm):
    """Under bf16 autocast the decoder may run in bf16, the head's logits stay float32 and equal
    the head applied in float32 to the same hidden state (autocast's bf16 head does not)."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(15.0)  # logits of O(10): bf16 rounds them by ~0.03
    batch = encode_batch(tokenizer, PROMPTS, _ids(tokenizer, TEXTS), max_length=64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])
        ours = head_logits(model, hidden)
        autocast_head = model.get_output_embeddings()(hidden)
    exact = torch.nn.functional.linear(hidden.float(), model.get_output_embeddings().weight)
    assert ours.dtype == torch.float32 and autocast_head.dtype == torch.bfloat16
    assert torch.equal(ours, exact)
    assert (autocast_head.float() - exact).abs().max() > 1e-2  # what the old path did


def test_check_logits_accepts_gpt2_and_rejects_another_head(tiny_lm):
    model, _ = tiny_lm
    batch = encode_ids([[1, 2, 3]], [[4, 5]], 0)
    check_logits(model, batch)  # lm_head(last hidden state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_logits(model, batch)  # compared without autocast

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            out = self.inner(*args, **kwargs)
            out.logits = out.logits + 1.0  # not what the head alone gives
            return out

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

    with pytest.raises(ValueError, match="logits are not lm_head"):
        check_logits(Shifted(model), batch)


@pytest.mark.parametrize("batch_size, max_length", [(3, 128), (2, 9)])
def test_reference_logprobs_matches_one_sequence_at_a_time(tiny_lm, batch_size, max_length):
    model, tokenizer = tiny_lm
    prompts = PROMPTS * 2
    texts = TEXTS + [" a", " the ending and the score were brilliant", " not bad", " I hated it."]
    ids = _ids(tokenizer, texts, [True, False] * 4)
    logps, counts = reference_logprobs(
        model,
        tokenizer,
        prompts,
        ids,
        batch_size=batch_size,
        max_length=max_length,
        progress=False,
    )
    for p, c, lp, n in zip(prompts, ids, logps, counts):
        want, want_n = _naive_logprob(model, tokenizer, p, c, max_length)
        assert n == want_n and lp == pytest.approx(want, abs=1e-4)
    assert counts[2] == 1  # an empty text that ended with EOS: the EOS is its one token
    assert max_length == 128 or max(counts) < 9  # truncated to the max_length budget
    assert reference_logprobs(model, tokenizer, [], [], batch_size=2, max_length=9) == ([], [])


def test_reference_autocast_follows_the_trainer():
    with torch.autocast("cpu", dtype=torch.bfloat16), reference_autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")  # an outer autocast stays on (the tests' CPU bf16)
    with reference_autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")  # CPU: no bf16 (use_bf16() is CUDA only)


def _rows(tokenizer) -> list[dict]:
    rows = []
    for i, p in enumerate(PROMPTS):
        texts = TEXTS[i:] or [" x"]
        finished = [k % 2 == 0 for k in range(len(texts))]
        rows.append(
            {
                "prompt_id": f"train-{i}",
                "prompt": p,
                "completions": texts,
                "completion_ids": _ids(tokenizer, texts, finished),
                "finished": finished,
            }
        )
    return rows


def test_reference_rows_follow_the_preference_rows(tiny_lm):
    model, tokenizer = tiny_lm
    rows = _rows(tokenizer)
    out = reference_rows(model, tokenizer, rows, batch_size=3, max_length=64, progress=False)
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]
    assert [len(r["logps"]) for r in out] == [4, 3, 2, 1]
    assert all(check_row(r, REFERENCE, "row") is r for r in out)
    assert list(out[0]) == ["prompt_id", "logps", "n_tokens"]
    c = rows[1]["completion_ids"][1]
    want, want_n = _naive_logprob(model, tokenizer, PROMPTS[1], c, 64)
    assert out[1]["n_tokens"][1] == want_n and out[1]["logps"][1] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"finished": [False, False, True, True]}, "completion 2: finished but its last id"),
        ({"completion_ids": [[1, 0], [2], [3], [4]]}, "completion 0: EOS (0) before the end"),
        ({"completion_ids": [[1], [2], [3], [10**6]]}, "completion 3: token id 1000000 is outside"),
    ],
)
def test_check_completion_ids_needs_the_tokenizer(tiny_lm, change, message):
    _, tokenizer = tiny_lm
    assert tokenizer.eos_token_id == 0
    row = {**_rows(tokenizer)[0], "finished": [False] * 4, "completion_ids": [[1], [2], [3], [4]]}
    check_completion_ids(tokenizer, [row])
    with pytest.raises(ValueError) as err:
        check_completion_ids(tokenizer, [{**row, **change}])
    assert str(err.value).startswith(f"row 'train-0', {message}"), str(err.value)
