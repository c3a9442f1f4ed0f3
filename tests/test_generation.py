"""Batched sampling (:mod:`stages.lib.generation`): seeding and streams, batching, EOS handling,
padding, recorded log-probs, and the sampling distribution itself (sharp enough to catch top-k or
a wrong temperature)."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch
from conftest import build_tiny_lm

from stages.lib.generation import (
    batch_seed,
    cut_at_eos,
    generate_completions,
    generation_config,
    left_pad,
    plan_batches,
)
from stages.lib.modeling import load_causal_lm

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the film was", "I loved this movie and the acting was", "bad", "the plot is not"]
#: ln_f gain giving the tiny LM a long-tailed next-token distribution: about 2/3 of the mass lies
#: outside the 50 most probable of its 400 tokens (top-k 50 would cut it), and softmax(l / 0.7)
#: differs from softmax(l) by a total variation of ~0.15.
SPREAD = 6.0
#: Rank bins of :func:`chi_square_by_rank` and the Pearson statistic's limit: chi-square with
#: 19 degrees of freedom exceeds it with probability ~1e-6 (Wilson-Hilferty).
N_BINS = 20
CHI2_LIMIT = 19 * (1 - 2 / (9 * 19) + 4.753 * math.sqrt(2 / (9 * 19))) ** 3  # ~64


def _gen(model, tokenizer, prompts=PROMPTS, **kw):
    args = {
        "n_per_prompt": 3,
        "temperature": 0.7,
        "max_new_tokens": 12,
        "batch_size": 5,
        "seed": 0,
        "stream": "sample",
        "progress": False,
        **kw,
    }
    return generate_completions(model, tokenizer, prompts, **args)


def spread_lm(model, gain: float = SPREAD):
    """A copy of ``model`` whose final layer norm is scaled by ``gain`` (sharper logits)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(gain)
    return model


def next_token_probs(model, tokenizer, prompt: str, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) of the token after ``prompt``, from an unpadded forward pass."""
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits[0, -1].double() / temperature, -1)


def chi_square_by_rank(tokens: list[int], probs: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Pearson chi-square of sampled ``tokens`` against ``probs``, the vocabulary grouped by
    rank (most probable first) into ``n_bins`` bins of about equal mass, so the tail of the
    distribution (what top-k removes) and its head (what a lower temperature inflates) are
    both tested."""
    order = probs.argsort(descending=True)
    sorted_p = probs[order]
    mid = sorted_p.cumsum(0) - sorted_p / 2  # mass before each token's midpoint
    rank_bin = (mid * n_bins).long().clamp(max=n_bins - 1)
    bin_of = torch.empty_like(order)
    bin_of[order] = rank_bin
    n = len(tokens)
    expected = torch.zeros(n_bins, dtype=torch.float64).index_add(0, rank_bin, sorted_p) * n
    observed = torch.bincount(bin_of[torch.tensor(tokens)], minlength=n_bins).double()
    assert (expected > 5).all()  # the chi-square approximation holds
    return float(((observed - expected) ** 2 / expected).sum())


def top_k_probs(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``probs`` restricted to its ``k`` most probable tokens, renormalised."""
    keep = torch.zeros_like(probs)
    top = probs.topk(k).indices
    keep[top] = probs[top]
    return keep / keep.sum()


def test_plan_batches_sorted_and_complete():
    batches = plan_batches([3, 7, 1, 7], n_per_prompt=3, batch_size=4)
    flat = [s for b in batches for s in b]
    assert sorted(flat) == [(i, k) for i in range(4) for k in range(3)]
    assert all(len(b) <= 4 for b in batches)
    assert [i for i, _ in flat] == [1, 1, 1, 3, 3, 3, 0, 0, 0, 2, 2, 2]  # longest first, stable


def test_left_pad_and_cut_at_eos():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_eos([4, 2, 9, 2], 2) == ([4, 2], True)
    assert cut_at_eos([4, 9], 2) == ([4, 9], False)
    assert cut_at_eos([4, 9], None) == ([4, 9], False)


def test_generation_config_is_clean(tiny_lm):
    _, tokenizer = tiny_lm
    config = generation_config(tokenizer, do_sample=True, temperature=0.7, max_new_tokens=9)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 0.7, 0, 1.0)
    assert config.max_new_tokens == 9 and config.num_beams == 1
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    assert (
        generation_config(tokenizer, do_sample=False, temperature=1.0, max_new_tokens=9).do_sample
        is False
    )


def test_deterministic_for_a_seed_and_independent_of_global_rng(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(123)
    a = _gen(model, tokenizer)
    torch.manual_seed(456)
    state = torch.get_rng_state()
    b = _gen(model, tokenizer)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG neither used nor advanced
    assert a.token_ids == b.token_ids and a.texts == b.texts
    c = _gen(model, tokenizer, seed=1)
    assert c.token_ids != a.token_ids
    assert batch_seed(0, 1, "sample") != batch_seed(0, 2, "sample")
    assert batch_seed(0, 1, "sample") == batch_seed(0, 1, "sample")


def _old_batch_seed(seed: int, b: int) -> int:
    """The one stream every caller shared before streams existed."""
    digest = hashlib.sha256(f"generation:{seed}:{b}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def test_streams_draw_different_numbers_and_sample_keeps_its_own(tiny_lm):
    """Each caller has its own stream: ``evaluate`` never repeats ``sample``'s draws under the
    same seed (they did: one key for both), and ``sample`` keeps the key it always had."""
    for seed in (0, 1, 7):
        for b in range(3):
            assert batch_seed(seed, b, "sample") == _old_batch_seed(seed, b)
            assert batch_seed(seed, b, "evaluate") != batch_seed(seed, b, "sample")
    model, tokenizer = tiny_lm
    a, b = _gen(model, tokenizer), _gen(model, tokenizer, stream="evaluate")
    assert a.token_ids != b.token_ids
    for bad in ("", "a:b"):
        with pytest.raises(ValueError, match="stream must be a non-empty name"):
            batch_seed(0, 0, bad)


def test_completions_exclude_prompt_and_respect_max_new_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    out = _gen(model, tokenizer, max_new_tokens=7)
    assert len(out.texts) == len(PROMPTS) and all(len(t) == 3 for t in out.texts)
    eos = tokenizer.eos_token_id
    total = 0
    for prompt, texts, ids, done in zip(PROMPTS, out.texts, out.token_ids, out.finished):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for text, gen, fin in zip(texts, ids, done):
            assert 1 <= len(gen) <= 7
            assert fin == (gen[-1] == eos) and eos not in gen[:-1]
            assert not fin or len(gen) <= 7
            assert text == tokenizer.decode(
                gen, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            full = tokenizer.decode(
                prompt_ids + gen, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            assert full.startswith(prompt)  # the prompt precedes, and is not in, the completion
            if "\ufffd" not in full:  # random byte tokens can split a UTF-8 character
                assert full == prompt + text
            total += len(gen)
    assert out.n_tokens == total and out.tokens_per_second > 0


def test_stops_at_eos(tiny_lm):
    """A model whose logits always favour EOS ends every completion at its first token, and
    the completion text is empty: no prompt text leaks into it."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    model.register_forward_hook(lambda m, i, o: _boost(o, eos))
    out = _gen(model, tokenizer, max_new_tokens=10)
    assert all(ids == [eos] for per in out.token_ids for ids in per)
    assert all(all(per) for per in out.finished) and all(t == "" for per in out.texts for t in per)


def _boost(output, token):
    output.logits[..., token] += 1e4
    return output


def test_recorded_logprobs_are_the_untempered_logprobs_of_the_ids(tiny_lm):
    """``record_logprobs`` sums log π (temperature 1) of each generated id, EOS included, as an
    unpadded forward pass of prompt + ids gives it; recording leaves the draws unchanged."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: o.index_add_(-1, torch.tensor([eos]), torch.full((*o.shape[:-1], 1), 2.5))
    )  # EOS ~35x likelier at T 0.7: some finish
    plain = _gen(model, tokenizer, max_new_tokens=10)
    out = _gen(model, tokenizer, max_new_tokens=10, record_logprobs=True)
    assert out.token_ids == plain.token_ids and plain.logprobs is None
    assert any(map(any, out.finished)) and not all(map(all, out.finished))
    for prompt, ids, logps in zip(PROMPTS, out.token_ids, out.logprobs):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for gen, logp in zip(ids, logps):
            x = torch.tensor([p + gen])
            with torch.no_grad():
                lp = model(input_ids=x).logits[0].double().log_softmax(-1)
            want = sum(float(lp[len(p) + t - 1, tok]) for t, tok in enumerate(gen))
            assert logp == pytest.approx(want, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_greedy_batched_equals_one_at_a_time(tmp_path, pad_is_eos):
    model, tokenizer = load_causal_lm(
        build_tiny_lm(tmp_path / "lm", pad_is_eos=pad_is_eos, seed=1), torch.device("cpu")
    )
    prompts = PROMPTS + ["a", "the acting and the score and the ending were never really fun"]
    kw = {"n_per_prompt": 1, "do_sample": False, "max_new_tokens": 15}
    batched = _gen(model, tokenizer, prompts, batch_size=len(prompts), **kw)
    single = [_gen(model, tokenizer, [p], batch_size=1, **kw).token_ids[0] for p in prompts]
    assert batched.token_ids == single


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_padded_batch_samples_the_model_distribution(tiny_lm, temperature):
    """First sampled token of a short (left-padded) and a long prompt in one batch: the counts fit
    softmax(logits / T) of an unpadded forward pass (chi-square over rank bins); as many draws
    from top-k 50 or from another temperature would fail the same check."""
    model, tokenizer = tiny_lm
    model = spread_lm(model)
    n = 4000
    prompts = ["bad", "the plot is not very good but the acting"]
    out = _gen(
        model,
        tokenizer,
        prompts,
        n_per_prompt=n,
        batch_size=2 * n,
        max_new_tokens=1,
        temperature=temperature,
    )
    other = 0.7 if temperature == 1.0 else 1.0
    for prompt, ids in zip(prompts, out.token_ids):
        first = [g[0] for g in ids]
        probs = next_token_probs(model, tokenizer, prompt, temperature)
        assert 1 - probs.topk(50).values.sum() > 0.5  # most mass beyond the top 50
        assert chi_square_by_rank(first, probs) < CHI2_LIMIT, prompt
        g = torch.Generator().manual_seed(0)
        for wrong in (top_k_probs(probs, 50), next_token_probs(model, tokenizer, prompt, other)):
            drawn = torch.multinomial(wrong, n, replacement=True, generator=g).tolist()
            assert chi_square_by_rank(drawn, probs) > 5 * CHI2_LIMIT, prompt  # would fail


def test_prompt_too_long_for_model(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        _gen(model, tokenizer, ["the film was"], max_new_tokens=127)
