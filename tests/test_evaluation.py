"""The ``evaluate`` compute (:mod:`stages.lib.evaluation`): the chunked log-prob/entropy pass
against a full log-softmax, packing, the metric helpers and the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stages.lib.evaluation as evaluation
from stages.lib.config import TinyGPT2Config
from stages.lib.evaluation import (
    METRIC_KEYS,
    bootstrap_interval,
    check_logits,
    distinct_n,
    generated_stats,
    load_policy,
    pack,
    reward_scores,
    sequence_stats,
    summarize,
)
from stages.lib.modeling import tiny_gpt2, train_bpe_tokenizer
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
    logp, ent, n = generated_stats(model, pack(prompts, gens, pad_id=5), chunk=chunk)
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
    assert batch["gen_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert pack([[5]], [[]])["gen_mask"].tolist() == [[0]]
    with pytest.raises(ValueError, match="sequence 1 has an empty prompt"):
        pack([[5], []], [[1], [2]])


def test_sequence_stats_skips_empty_generations(tiny):
    model, tok = tiny
    stats = sequence_stats(model, [[1, 2], [3]], [[], [4, 5]], batch_size=2, chunk=4)
    assert stats["n"].tolist() == [0.0, 2.0] and stats["logp"][0] == 0.0
    assert stats["entropy"][0] == 0.0 and stats["logp"][1] < 0


def test_check_logits_accepts_gpt2_and_rejects_another_head(tiny):
    model, tok = tiny
    batch = pack([[1, 2, 3]], [[4, 5]])
    check_logits(model, batch)  # lm_head(last hidden state)

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            out = self.inner(*args, **kwargs)
            out.logits = out.logits + 1.0  # not what the head alone gives
            return out

        def get_decoder(self):
            return self.inner.get_decoder()

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

    with pytest.raises(ValueError, match="logits are not lm_head"):
        check_logits(Shifted(model), batch)


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
