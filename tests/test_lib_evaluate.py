"""The ``evaluate`` compute (:mod:`stages.lib.evaluate`): the chunked log-prob/entropy pass
against a full log-softmax, packing, the metric helpers and the summary; its samples come from
their own random stream and from the policy itself (temperature 1), which a chi-square test
sharp enough to catch temperature 0.7 checks. The entropies that measure the policy: the
first-k entropy is the full pass's at those positions (the one pass gives what a second pass
over the cut completions gave), contexts are the eval prompts' own reviews."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generation import CHI2_LIMIT, chi_square_by_rank, next_token_probs, spread_lm

import stages.lib.evaluate as evaluation
from stages.lib.config import EvaluateConfig, SampleConfig, TinyGPT2Config
from stages.lib.evaluate import (
    METRIC_KEYS,
    bootstrap_interval,
    context_ids,
    distinct_n,
    entropy_fields,
    fixed_contexts,
    generated_stats,
    load_policy,
    pack,
    ratio,
    review_index,
    reward_scores,
    sample_and_score,
    sequence_stats,
    summarize,
)
from stages.lib.modeling import save_pretrained, tiny_gpt2, train_bpe_tokenizer
from stages.lib.sampling import sample_rows
from stages.lib.synthetic import generate_splits, gold_score

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    """A tiny GPT-2 policy and byte-level BPE tokenizer built offline."""
    train, _ = generate_splits(60, 4, 0)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    cfg = TinyGPT2Config(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    return tiny_gpt2(tok, cfg).eval(), tok


def _random_sequences(vocab: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts, gens = [], []
    for _ in range(n):
        lp, lg = (
            int(torch.randint(1, 6, (1,), generator=g)),
            int(torch.randint(1, 12, (1,), generator=g)),
        )
        prompts.append(torch.randint(0, vocab, (lp,), generator=g).tolist())
        gens.append(torch.randint(0, vocab, (lg,), generator=g).tolist())
    return prompts, gens


def _reference(model, prompt: list[int], gen: list[int]) -> tuple[float, float]:
    """Straightforward: one unpadded sequence, full log_softmax over every position."""
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    pos = range(len(prompt) - 1, len(prompt) + len(gen) - 1)  # predicts each generated token
    lp = sum(float(logp[t, ids[0, t + 1]]) for t in pos)
    ent = sum(float(-(logp[t].exp() * logp[t]).sum()) for t in pos)
    return lp, ent


@pytest.mark.parametrize("chunk", [3, 1000])
def test_chunked_pass_matches_full_log_softmax(tiny, chunk):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 7)
    stats = generated_stats(model, pack(prompts, gens, pad_id=5), chunk=chunk)
    logp, ent, n = stats["logp"], stats["entropy"], stats["n"]
    assert chunk < max(len(p) + len(g) for p, g in zip(prompts, gens)) or chunk == 1000
    for i, (p, g) in enumerate(zip(prompts, gens)):
        ref_lp, ref_ent = _reference(model, p, g)
        assert int(n[i]) == len(g)  # prompt and padding positions excluded
        assert float(logp[i]) == pytest.approx(ref_lp, abs=1e-4)
        assert float(ent[i]) == pytest.approx(ref_ent, abs=1e-4)


def test_sequence_stats_batches_in_input_order(tiny):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 9, seed=1)
    stats = sequence_stats(model, prompts, gens, batch_size=4, chunk=5)
    for i, (p, g) in enumerate(zip(prompts, gens)):
        ref_lp, ref_ent = _reference(model, p, g)
        assert stats["logp"][i] == pytest.approx(ref_lp, abs=1e-4)
        assert stats["entropy"][i] == pytest.approx(ref_ent, abs=1e-4)
        assert stats["n"][i] == len(g)


def test_kl_of_policy_with_itself_is_zero(tiny):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 6, seed=2)
    own = sequence_stats(model, prompts, gens, batch_size=6, chunk=8)
    again = sequence_stats(model, prompts, gens, batch_size=4, chunk=3, entropy=False)
    m = summarize(np.zeros((3, 2)), None, own, again["logp"], gens, n_resamples=50, seed=0)
    assert m["kl"] == pytest.approx(0.0, abs=1e-5)
    assert m["nll"] == pytest.approx(-own["logp"].mean(), abs=1e-5)
    assert m["entropy"] == pytest.approx(own["entropy"].sum() / own["n"].sum(), abs=1e-5)


def test_bootstrap_contains_mean_narrows_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 2.0, 20), rng.normal(1.0, 2.0, 2000)
    lo_s, hi_s = bootstrap_interval(small, n_resamples=1000, seed=0)
    lo_l, hi_l = bootstrap_interval(large, n_resamples=1000, seed=0)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert bootstrap_interval(small, n_resamples=1000, seed=0) == (lo_s, hi_s)


def test_distinct_n_on_hand_made_tokens():
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)  # (1,2) twice
    assert distinct_n([[1], [1]], 2) == 0.0  # bigrams never cross sequences
    assert distinct_n([[7, 7, 7, 7]], 2) == pytest.approx(1 / 3)


def test_pack_masks_generated_positions():
    batch = pack([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 9, 2], [7, 3, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert pack([[5]], [[]])["completion_mask"].tolist() == [[0]]
    long = [list(range(1, 200))]  # evaluation never cuts a completion (no max_length)
    assert pack([[5]], long)["completion_mask"].sum() == 199
    with pytest.raises(ValueError, match="sequence 1 has an empty prompt"):
        pack([[5], []], [[1], [2]])


def test_sequence_stats_skips_empty_generations(tiny):
    model, tok = tiny
    stats = sequence_stats(model, [[1, 2], [3]], [[], [4, 5]], batch_size=2, chunk=4)
    assert stats["n"].tolist() == [0.0, 2.0] and stats["logp"][0] == 0.0
    assert stats["entropy"][0] == 0.0 and stats["logp"][1] < 0


def test_summarize_keys_rounding_and_no_timings():
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 0.25]])
    stats = {
        "logp": np.array([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]),
        "entropy": np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
        "n": np.full(6, 4.0),
    }
    tokens = [[1, 2], [1, 2], [3], [4, 5, 6], [], [7]]
    m = summarize(scores, None, stats, None, tokens, n_resamples=100, seed=0)
    assert set(m) == set(METRIC_KEYS)  # no seconds, no throughput
    assert m["n_prompts"] == 3 and m["n_samples"] == 2
    assert m["reward"] == round(scores.mean(), 6) and m["gold"] is None and m["kl"] == 0.0
    assert m["nll"] == 3.5 and m["entropy"] == 0.5 and m["length"] == round(9 / 6, 6)
    assert m["distinct_1"] == round(7 / 9, 6)
    lo, hi = bootstrap_interval(scores.mean(1), n_resamples=100, seed=0)
    assert (m["reward_lo"], m["reward_hi"]) == (round(lo, 6), round(hi, 6))
    m = summarize(scores, scores * 2, stats, stats["logp"] - 0.5, tokens, n_resamples=100, seed=0)
    assert m["kl"] == 0.5 and m["gold"] == round(2 * scores.mean(), 6)
    assert m["gold_lo"] <= m["gold"] <= m["gold_hi"]


def test_load_policy_missing_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"nope: policy folder not found \(run its "
        r"align/sft stage first\)",
    ):
        load_policy(tmp_path / "nope")


@pytest.mark.parametrize("source", ["synthetic", "imdb"])
def test_reward_scores_with_gold_only_for_synthetic(monkeypatch, source):
    calls = []
    monkeypatch.setattr(
        evaluation, "load_reward_model", lambda path: calls.append(path) or ("rm", "tok")
    )
    monkeypatch.setattr(
        evaluation,
        "score_texts",
        lambda m, t, texts, *, score, batch_size: (
            calls.append((score, batch_size)) or [float(len(x)) for x in texts]
        ),
    )
    texts = ["The film was great.", "Dull."]
    scores, gold = reward_scores(texts, score="margin", source=source, batch_size=7)
    assert calls == ["models/reward", ("margin", 7)]
    assert scores.tolist() == [19.0, 5.0] and scores.dtype == np.float64
    if source == "synthetic":
        assert gold.tolist() == [gold_score(t) for t in texts]
    else:
        assert gold is None


# ------------------------------------------------------------------------ what is sampled


def _policy_dir(tmp_path, monkeypatch, model, tokenizer):
    """``models/sft`` under a tmp working directory holding ``model``."""
    save_pretrained(model, tokenizer, tmp_path / "models" / "sft")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "models" / "sft"


def _cfg(**kw) -> EvaluateConfig:
    base = {"n_prompts": 1, "n_samples": 4, "max_new_tokens": 6, "batch_size": 6}
    base.update(bootstrap=10, logit_chunk=64)
    return EvaluateConfig(**{**base, **kw})


def test_evaluation_does_not_redraw_the_sample_stages_numbers(
    tmp_path, monkeypatch, tiny_lm_dir, tiny_lm
):
    """Same policy, prompts, seed, batching and temperature: the ``sample`` stage and
    ``evaluate`` still draw different completions (their own random streams; with the one
    shared stream they were identical)."""
    model, tokenizer = tiny_lm
    path = _policy_dir(tmp_path, monkeypatch, model, tokenizer)
    prompts = ["the film was", "bad", "I loved this movie and"]
    cfg = _cfg(n_prompts=3, n_samples=4, max_new_tokens=6, batch_size=6)
    gen = sample_and_score(path, prompts, cfg, seed=5).gen
    sampled = SampleConfig(n_per_prompt=4, temperature=1.0, max_new_tokens=6, batch_size=6)
    rows, _ = sample_rows(
        model,
        tokenizer,
        [{"prompt_id": str(i), "prompt": p} for i, p in enumerate(prompts)],
        sampled,
        seed=5,
        progress=False,
    )
    same = sum(
        a == b for r, per in zip(rows, gen.token_ids) for a, b in zip(r["completion_ids"], per)
    )
    assert same == 0, same  # 12 of 12 with one stream for both


def test_evaluation_samples_the_policy_at_temperature_1(tmp_path, monkeypatch, tiny_lm):
    """First tokens of many evaluation samples fit softmax(logits) (chi-square over rank bins of
    a long-tailed distribution): a lower temperature (0.7) or top-k would fail; the scoring pass
    gives each sample the log-prob of its token under the same distribution."""
    model, tokenizer = tiny_lm
    model = spread_lm(model)
    path = _policy_dir(tmp_path, monkeypatch, model, tokenizer)
    n, prompt = 4000, "the plot is not very good but the acting"
    cfg = _cfg(n_samples=n, max_new_tokens=1, batch_size=n, logit_chunk=1000)
    scored = sample_and_score(path, [prompt], cfg, seed=0)
    gen, stats, sft_logp = scored.gen, scored.stats, scored.sft_logp
    assert sft_logp is None  # the SFT policy itself: no second pass
    first = [g[0] for g in gen.token_ids[0]]
    probs = next_token_probs(model, tokenizer, prompt)
    assert chi_square_by_rank(first, probs) < CHI2_LIMIT
    assert stats["logp"] == pytest.approx(probs[first].log().numpy(), abs=1e-4)
    tempered = next_token_probs(model, tokenizer, prompt, temperature=0.7)
    g = torch.Generator().manual_seed(0)
    drawn = torch.multinomial(tempered, n, replacement=True, generator=g).tolist()
    assert chi_square_by_rank(drawn, probs) > 5 * CHI2_LIMIT  # what temperature 0.7 would give


# ------------------------------------------------ entropy that measures the policy (first k, contexts)


def _per_position_entropy(model, prompt: list[int], gen: list[int]) -> np.ndarray:
    """The predictive entropy at every generated position, from the model's own logits."""
    ids = torch.tensor([prompt + gen])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent[len(prompt) - 1 : len(prompt) + len(gen) - 1].double().numpy()


def test_first_k_is_the_entropy_at_the_first_k_positions(tiny_lm):
    model, tok = tiny_lm
    prompts = [tok("the film was", add_special_tokens=False)["input_ids"]] * 3
    gen = [
        tok(" good and fun but not very", add_special_tokens=False)["input_ids"],
        tok(" bad", add_special_tokens=False)["input_ids"],
        tok(" dull plot and a boring ending", add_special_tokens=False)["input_ids"],
    ]
    k = 3
    stats = sequence_stats(model, prompts, gen, first_k=k, batch_size=2, chunk=4)
    for i, (p, g) in enumerate(zip(prompts, gen)):
        expected = _per_position_entropy(model, p, g)[:k]
        assert stats["n_first_k"][i] == min(k, len(g))
        assert stats["entropy_first_k"][i] == pytest.approx(expected.sum(), rel=1e-5)
    full = sequence_stats(model, prompts, gen, batch_size=2, chunk=4)
    short = int(np.argmin([len(g) for g in gen]))
    assert stats["entropy_first_k"][short] == pytest.approx(full["entropy"][short], rel=1e-6)
    assert ratio(stats["entropy_first_k"], stats["n_first_k"]) == pytest.approx(
        round(stats["entropy_first_k"].sum() / stats["n_first_k"].sum(), 6)
    )
    assert ratio(np.zeros(2), np.zeros(2)) is None
    assert not full["n_first_k"].any() and not full["entropy_first_k"].any()  # first_k 0


@pytest.mark.parametrize("k, batch_size", [(1, 3), (4, 5), (50, 16)])
def test_one_pass_first_k_equals_the_two_pass_definition(tiny, k, batch_size):
    """The first-k entropy of the one scoring pass is the old definition's: a second pass over
    the completions cut to k tokens (to float32 rounding: the batches are padded otherwise)."""
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 16, seed=3)
    gens[2] = []  # an empty completion has no first position
    one = sequence_stats(model, prompts, gens, first_k=k, batch_size=batch_size, chunk=5)
    cut = [g[:k] for g in gens]
    two = sequence_stats(model, prompts, cut, batch_size=batch_size, chunk=5)
    assert one["n_first_k"].tolist() == two["n"].tolist()
    np.testing.assert_allclose(one["entropy_first_k"], two["entropy"], rtol=1e-6, atol=1e-6)
    full = sequence_stats(model, prompts, gens, batch_size=batch_size, chunk=5)
    for key in ("logp", "entropy", "n"):  # asking for first k changes nothing else
        assert one[key].tolist() == full[key].tolist()


def test_sample_and_score_loads_once_and_scores_contexts_with_it(tmp_path, monkeypatch, tiny_lm):
    """The SFT policy: one load for sampling, the scoring pass (first k included) and the fixed
    contexts; the first-k entropy and the contexts' entropy are the old two passes'."""
    model, tokenizer = tiny_lm
    path = _policy_dir(tmp_path, monkeypatch, model, tokenizer)
    loads = []
    real = evaluation.load_causal_lm
    monkeypatch.setattr(evaluation, "load_causal_lm", lambda p: loads.append(p) or real(p))
    prompts = ["the film was", "bad", "I loved this movie and"]
    contexts = [" good and fun but not very good", " plot"]
    cfg = _cfg(n_prompts=3, n_samples=3, max_new_tokens=10, batch_size=4)
    cfg = _cfg(**{**cfg.__dict__, "logit_chunk": 7, "entropy_first_k": 4})
    scored = sample_and_score(path, prompts, cfg, seed=3, contexts=contexts)
    assert loads == [path] and scored.sft_logp is None
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert scored.gen.prompt_ids == ids  # tokenised once, for sampling
    flat = [g for per in scored.gen.token_ids for g in per]
    assert any(len(g) > 4 for g in flat)  # the first k are a part of the completions
    flat_prompts = [p for p in ids for _ in range(3)]
    cut = sequence_stats(model, flat_prompts, [g[:4] for g in flat], batch_size=4, chunk=7)
    assert scored.stats["n_first_k"].tolist() == cut["n"].tolist()
    np.testing.assert_allclose(scored.stats["entropy_first_k"], cut["entropy"], rtol=1e-6)
    rest = [tokenizer(c, add_special_tokens=False)["input_ids"][:10] for c in contexts]
    ctx = sequence_stats(model, ids[:2], rest, batch_size=4, chunk=7)
    assert scored.context["n"].tolist() == ctx["n"].tolist() and len(ctx["n"]) == 2
    assert scored.context["entropy"].tolist() == ctx["entropy"].tolist()
    fields, metrics = entropy_fields(scored.stats, scored.context, 3, 3)
    assert [f["n_first_k"] for f in fields] == cut["n"].reshape(3, 3).astype(int).tolist()
    assert "context_entropy" in fields[1] and "context_entropy" not in fields[2]
    assert metrics["context_tokens"] == int(ctx["n"].sum())
    assert metrics["entropy_first_k"] == ratio(cut["entropy"], cut["n"])


def test_contexts_are_the_prompts_own_reviews(tiny_lm):
    _, tok = tiny_lm
    test_rows = [
        {"text": "the film was good and the acting was great", "label": 1},
        {"text": "it was a dull plot and a boring ending", "label": 0},
    ]
    rows = [
        {"prompt_id": "test-1", "prompt": "it was a dull"},
        {"prompt_id": "test-0", "prompt": "the film was good"},
    ]
    ids = tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    p_ids, c_ids = context_ids(tok, ids, fixed_contexts(rows, test_rows, n=5), 3)
    assert len(p_ids) == 2  # n is capped by the prompts given
    assert p_ids[0] == tok("it was a dull", add_special_tokens=False)["input_ids"]
    rest = tok(" plot and a boring ending", add_special_tokens=False)["input_ids"]
    assert c_ids[0] == rest[:3]
    assert len(context_ids(tok, ids, fixed_contexts(rows, test_rows, n=1), 3)[0]) == 1


def test_bad_prompt_ids_and_prefixes_name_the_prompt():
    assert review_index("test-12", 13, "f") == 12
    for bad in ("train-1", "test-13", "test-x", "12"):
        with pytest.raises(ValueError, match=rf"^f: prompt_id '{bad}' is not 'test-<row>'"):
            review_index(bad, 13, "f")
    rows = [{"prompt_id": "test-0", "prompt": "a different start"}]
    with pytest.raises(ValueError, match="prompt 'test-0' is not the start of its review"):
        fixed_contexts(rows, [{"text": "the film was good", "label": 1}], n=1)
