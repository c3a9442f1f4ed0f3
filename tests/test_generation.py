"""Batched sampling (:mod:`stages.lib.generation`): seeding, batching, EOS handling, padding."""

from __future__ import annotations

import copy

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


def _gen(model, tokenizer, prompts=PROMPTS, **kw):
    args = {
        "n_per_prompt": 3,
        "temperature": 0.7,
        "max_new_tokens": 12,
        "batch_size": 5,
        "seed": 0,
        "progress": False,
        **kw,
    }
    return generate_completions(model, tokenizer, prompts, **args)


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
    assert batch_seed(0, 1) != batch_seed(0, 2) and batch_seed(0, 1) == batch_seed(0, 1)


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


def test_padded_batch_samples_the_model_distribution(tiny_lm):
    """First sampled token of a short (left-padded) and a long prompt in one batch: empirical
    frequencies match softmax(logits / T) of an unpadded forward pass."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(15.0)  # perplexity ~3 and ~12 instead of ~200
    temperature, n = 0.7, 1000
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
    for prompt, ids in zip(prompts, out.token_ids):
        enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0, -1] / temperature, -1)
        counts = torch.bincount(torch.tensor([g[0] for g in ids]), minlength=probs.numel())
        tv = 0.5 * (counts / n - probs).abs().sum().item()
        assert tv < 0.1, (prompt, tv)


def test_prompt_too_long_for_model(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        _gen(model, tokenizer, ["the film was"], max_new_tokens=127)
