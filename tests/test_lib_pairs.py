"""Pair strategies (:mod:`stages.lib.pairs`): hand-made reward lists, invariants over random
ones, RSO rejection sampling against the tilted distribution, and ``make_pairs`` dispatch."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.lib.config import PAIR_STRATEGIES, PairsConfig, RsoConfig
from stages.lib.pairs import (
    STRATEGIES,
    all_pairs,
    best_worst_pairs,
    first_round_pairs,
    make_pairs,
    ordered_pair,
    rso_pairs,
    rso_select,
    tournament_pairs,
)

STRATEGY_FNS = {
    "first_round": first_round_pairs,
    "tournament": tournament_pairs,
    "best_worst": best_worst_pairs,
    "all": all_pairs,
}


def _check_pairs(pairs, rewards):
    for w, l in pairs:
        assert 0 <= w < len(rewards) and 0 <= l < len(rewards) and w != l
        assert rewards[w] > rewards[l]
    assert len(set(pairs)) == len(pairs)


# --- strategies on hand-made reward lists -------------------------------------------------


def test_first_round_disjoint_pairs_preferred_first():
    rewards = [0.1, 3.0, -2.0, 1.5]
    pairs = first_round_pairs(rewards, random.Random(0))
    _check_pairs(pairs, rewards)
    assert len(pairs) == 2
    assert sorted(i for p in pairs for i in p) == [0, 1, 2, 3]


def test_first_round_odd_k_drops_one_and_skips_ties():
    rewards = [5.0, 4.0, 3.0, 2.0, 1.0]
    for seed in range(20):
        pairs = first_round_pairs(rewards, random.Random(seed))
        _check_pairs(pairs, rewards)
        assert len(pairs) == 2 and len({i for p in pairs for i in p}) == 4
    assert first_round_pairs([1.0, 1.0, 1.0, 1.0], random.Random(0)) == []
    # one tie among two shuffled pairs: over seeds, 1 or 2 pairs, never the tied one
    for seed in range(20):
        pairs = first_round_pairs([2.0, 2.0, 1.0, 0.0], random.Random(seed))
        assert (0, 1) not in pairs and (1, 0) not in pairs and 1 <= len(pairs) <= 2


def test_first_round_is_seeded():
    rewards = list(range(8))
    assert first_round_pairs(rewards, random.Random(3)) == first_round_pairs(
        rewards, random.Random(3)
    )


def test_tournament_k_minus_one_matches_winner_is_best():
    rewards = [0.3, 2.0, -1.0, 0.9, 5.0, 1.1, -0.5]
    for seed in range(10):
        pairs = tournament_pairs(rewards, random.Random(seed))
        _check_pairs(pairs, rewards)
        assert len(pairs) == len(rewards) - 1
        losers = [l for _, l in pairs]
        assert len(set(losers)) == len(losers) and 4 not in losers  # each loses once; best never
    assert tournament_pairs([1.0], random.Random(0)) == []
    assert tournament_pairs([2.0, 2.0, 2.0, 2.0], random.Random(0)) == []
    # ties give no pair: [2, 2, 1, 1] has at most 2 untied matches among its 3
    assert all(
        len(tournament_pairs([2.0, 2.0, 1.0, 1.0], random.Random(s))) <= 2 for s in range(20)
    )


def test_best_worst_one_pair():
    assert best_worst_pairs([0.5, -1.0, 3.0, 0.0], random.Random(0)) == [(2, 1)]
    assert best_worst_pairs([1.0, 1.0], random.Random(0)) == []
    seen = {best_worst_pairs([3.0, 0.0, 3.0, 0.0], random.Random(s))[0] for s in range(30)}
    assert seen <= {(0, 1), (0, 3), (2, 1), (2, 3)} and len(seen) > 1  # random among equals


def test_all_pairs_skips_ties():
    rewards = [1.0, 2.0, 3.0, 4.0]
    pairs = all_pairs(rewards, random.Random(0))
    _check_pairs(pairs, rewards)
    assert len(pairs) == 6
    assert len(all_pairs([1.0, 2.0, 2.0, 4.0], random.Random(0))) == 5


@settings(max_examples=150, deadline=None)
@given(
    rewards=st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=9),
    seed=st.integers(0, 10**6),
)
def test_strategy_invariants(rewards, seed):
    k = len(rewards)
    distinct_pairs = sum(rewards[i] != rewards[j] for i in range(k) for j in range(i + 1, k))
    for name, fn in STRATEGY_FNS.items():
        pairs = fn(rewards, random.Random(seed))
        _check_pairs(pairs, rewards)
        if name == "first_round":
            assert len(pairs) <= k // 2 and len({i for p in pairs for i in p}) == 2 * len(pairs)
        elif name == "tournament":
            assert len(pairs) <= k - 1
            if len(set(rewards)) == k:
                assert len(pairs) == k - 1
        elif name == "best_worst":
            assert len(pairs) == (1 if len(set(rewards)) > 1 else 0)
        else:
            assert len(pairs) == distinct_pairs


# --- RSO statistical rejection sampling ---------------------------------------------------


def test_rso_accepts_from_tilted_distribution_discrete():
    """Pool of four reward levels, 2500 copies each: r_max stays 3 while the first n_select are
    drawn, so accepted levels have frequencies proportional to exp(r / beta)."""
    rewards = [float(r) for r in (0, 1, 2, 3) for _ in range(2500)]
    beta, n_select = 1.0, 1000
    picked = rso_select(rewards, n_select, beta, random.Random(0))
    assert len(picked) == n_select == len(set(picked))
    weights = [math.exp(r / beta) for r in (0, 1, 2, 3)]
    for level, w in zip((0, 1, 2, 3), weights):
        share = sum(rewards[i] == level for i in picked) / n_select
        expected = w / sum(weights)
        assert abs(share - expected) < 3 * math.sqrt(expected * (1 - expected) / n_select) + 0.01


def test_rso_accepted_mean_matches_tilted_mean():
    rng = random.Random(1)
    rewards = [rng.gauss(0.0, 1.0) for _ in range(50_000)]
    for beta in (1.0, 2.0):
        picked = rso_select(rewards, 500, beta, random.Random(2))
        mean_picked = sum(rewards[i] for i in picked) / len(picked)
        weights = [math.exp(r / beta) for r in rewards]
        tilted = sum(w * r for w, r in zip(weights, rewards)) / sum(weights)  # ≈ 1 / beta
        assert abs(mean_picked - tilted) < 0.15, (beta, mean_picked, tilted)
        assert abs(tilted - 1.0 / beta) < 0.1


def test_rso_small_beta_picks_top_large_beta_uniform():
    rng = random.Random(3)
    rewards = [rng.uniform(-2, 2) for _ in range(16)]
    top4 = sorted(range(16), key=lambda i: -rewards[i])[:4]
    assert rso_select(rewards, 4, 1e-6, random.Random(0)) == top4
    counts = [0] * 16
    trials = 2000
    for seed in range(trials):
        for i in rso_select(rewards, 4, 1e6, random.Random(seed)):
            counts[i] += 1
    expected = trials * 4 / 16
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts)
    # and the mean reward of uniform picks is the pool mean
    assert (
        abs(sum(c * r for c, r in zip(counts, rewards)) / (4 * trials) - sum(rewards) / 16) < 0.05
    )


def test_rso_pairs_among_picked_and_bad_arguments():
    rewards = [float(i) for i in range(16)]
    pairs, picked = rso_pairs(rewards, random.Random(0), 4, 0.5)
    _check_pairs(pairs, rewards)
    assert len(picked) == 4 and {i for p in pairs for i in p} <= set(picked) and len(pairs) == 2
    with pytest.raises(ValueError):
        rso_select(rewards, 17, 1.0, random.Random(0))
    with pytest.raises(ValueError):
        rso_select(rewards, 4, 0.0, random.Random(0))


@pytest.mark.parametrize("n_select", (4, 5))
def test_rso_with_n_select_not_below_k_is_an_error_naming_the_param(n_select):
    """n_select = K accepted all K candidates (a shuffled first_round) and said nothing."""
    rewards = [0.3, -1.0, 2.5, 0.7]
    cfg = PairsConfig(strategy="rso", rso=RsoConfig(n_select=n_select, beta=0.5))
    message = (
        rf"^params: pairs\.rso\.n_select: must be < the K = 4 completions per prompt "
        rf"\(sample\.n_per_prompt\), got {n_select}: rso would accept every candidate"
    )
    with pytest.raises(ValueError, match=message):
        make_pairs(rewards, cfg, random.Random(0))
    with pytest.raises(ValueError, match=message):
        rso_pairs(rewards, random.Random(0), n_select, 0.5)
    pairs, picked = rso_pairs(rewards, random.Random(0), 3, 0.5)  # K - 1 still selects
    assert len(picked) == 3 and len(pairs) == 1


# --- make_pairs ------------------------------------------------------------------------------


def test_ordered_pair():
    assert ordered_pair([1.0, 2.0], 0, 1) == (1, 0)
    assert ordered_pair([3.0, 2.0], 0, 1) == (0, 1)
    assert ordered_pair([2.0, 2.0], 0, 1) is None


def test_every_configured_strategy_has_a_function():
    assert set(STRATEGIES) | {"rso"} == set(PAIR_STRATEGIES)


@pytest.mark.parametrize("strategy", sorted(STRATEGY_FNS))
def test_make_pairs_dispatches_with_the_same_rng_draws(strategy):
    rewards = [0.3, -1.0, 2.5, 0.7, 1.9, -0.2]
    pairs, picked = make_pairs(rewards, PairsConfig(strategy=strategy), random.Random("0-x"))
    assert pairs == STRATEGY_FNS[strategy](rewards, random.Random("0-x"))
    assert picked == list(range(len(rewards)))


def test_make_pairs_rso_uses_its_settings():
    rewards = [float(i) for i in range(16)]
    cfg = PairsConfig(strategy="rso", rso=RsoConfig(n_select=6, beta=0.25))
    pairs, picked = make_pairs(rewards, cfg, random.Random(5))
    assert (pairs, picked) == rso_pairs(rewards, random.Random(5), 6, 0.25)
    assert len(picked) == 6 and len(pairs) == 3


def test_unknown_strategy_in_make_pairs():
    with pytest.raises(ValueError, match=r"params: pairs\.strategy: must be one of .*'bogus'"):
        make_pairs([1.0, 2.0], PairsConfig(strategy="bogus"), random.Random(0))


def test_hold_out_by_text_names_its_parameter_and_keeps_texts_whole():
    from stages.lib.pairs import hold_out_by_text

    prompts = [(f"p{i}", f"text {i % 4}") for i in range(12)]
    out = hold_out_by_text(prompts, 0.25, "0-ingest-eval", "ingest.eval_fraction")
    assert len(out) == 3 and len({f"text {int(p[1:]) % 4}" for p in out}) == 1  # one whole text
    assert out == hold_out_by_text(prompts, 0.25, "0-ingest-eval", "ingest.eval_fraction")
    assert hold_out_by_text(prompts, 0.0, "k", "x") == set()
    with pytest.raises(ValueError, match=r"^params: ingest\.eval_fraction: must leave a kept "):
        hold_out_by_text(prompts[:1], 0.5, "k", "ingest.eval_fraction", kept="a kept prompt")
