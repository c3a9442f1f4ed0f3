"""The ``score`` and ``pairs`` stages: pairing strategies, RSO rejection sampling, splits,
metrics and bad input."""
from __future__ import annotations

import json
import math
import random
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.common import StageError, write_jsonl
from stages.contracts import PREFERENCES, SCORED, read_rows
from stages.pairs import (all_pairs, best_worst_pairs, build_preferences, first_round_pairs,
                          make_pairs, make_preference_file, pair_settings, rso_pairs, rso_select,
                          tournament_pairs, validation_ids)
from stages.score import attach_scores, score, score_rows

STRATEGY_FNS = {"first_round": first_round_pairs, "tournament": tournament_pairs,
                "best_worst": best_worst_pairs, "all": all_pairs}


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
    assert first_round_pairs(rewards, random.Random(3)) == first_round_pairs(rewards,
                                                                            random.Random(3))


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
    assert all(len(tournament_pairs([2.0, 2.0, 1.0, 1.0], random.Random(s))) <= 2
               for s in range(20))


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
@given(rewards=st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=9),
       seed=st.integers(0, 10**6))
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
    assert abs(sum(c * r for c, r in zip(counts, rewards)) / (4 * trials)
               - sum(rewards) / 16) < 0.05


def test_rso_pairs_among_picked_and_bad_arguments():
    rewards = [float(i) for i in range(16)]
    pairs, picked = rso_pairs(rewards, random.Random(0), 4, 0.5)
    _check_pairs(pairs, rewards)
    assert len(picked) == 4 and {i for p in pairs for i in p} <= set(picked) and len(pairs) == 2
    with pytest.raises(ValueError):
        rso_select(rewards, 17, 1.0, random.Random(0))
    with pytest.raises(ValueError):
        rso_select(rewards, 4, 0.0, random.Random(0))


# --- building the preference file ---------------------------------------------------------

def _scored_rows(n: int, k: int = 4, seed: int = 0, gold: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rewards = [round(rng.gauss(0, 1), 4) for _ in range(k)]
        row = {"prompt_id": f"train-{i}", "prompt": f"prompt {i}",
               "completions": [f" completion {i}.{j}" for j in range(k)], "rewards": rewards}
        if gold:  # gold agrees with the reward except on completion 0
            row["gold"] = [(-r if j == 0 else r) for j, r in enumerate(rewards)]
        rows.append(row)
    return rows


def _params(strategy="first_round", val_fraction=0.1, **rso) -> dict:
    return {"seed": 0, "pairs": {"strategy": strategy, "val_fraction": val_fraction,
                                 "rso": {"n_select": 4, "beta": 0.5, **rso}}}


def test_build_preferences_counts_and_metrics():
    rows = _scored_rows(40)
    rows[3]["rewards"] = [1.0] * 4          # all tied: no pair, dropped and counted
    rows[3]["gold"] = [1.0] * 4
    out, metrics = build_preferences(rows, pair_settings(_params()))
    assert metrics["prompts"] == 40 and metrics["prompts_without_pairs"] == 1
    assert len(out) == metrics["prompts_with_pairs"] == 39
    assert "train-3" not in {r["prompt_id"] for r in out}
    assert metrics["pairs"] == sum(len(r["pairs"]) for r in out) == 78
    assert metrics["train"]["pairs"] + metrics["val"]["pairs"] == 78
    assert metrics["val"]["prompts"] in (3, 4)  # 4 of 40 drawn, one may be the dropped one
    margins = [r["rewards"][w] - r["rewards"][l] for r in out for w, l in r["pairs"]]
    assert metrics["mean_reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    agree = [r["gold"][w] > r["gold"][l] for r in out for w, l in r["pairs"]]
    assert metrics["gold_agreement"] == pytest.approx(sum(agree) / len(agree), abs=1e-5)
    assert 0 < metrics["gold_agreement"] < 1


def test_validation_split_by_prompt_seeded():
    ids = [f"p{i}" for i in range(100)]
    val = validation_ids(ids, 0.1, seed=0)
    assert len(val) == 10 and val == validation_ids(ids, 0.1, seed=0)
    assert val != validation_ids(ids, 0.1, seed=1)
    assert validation_ids(ids, 0.0, seed=0) == set()
    assert len(validation_ids(ids[:5], 0.1, seed=0)) == 1
    # same prompts held out whatever the strategy
    rows = _scored_rows(50)
    splits = {}
    for strategy in ("first_round", "all", "best_worst", "tournament"):
        out, _ = build_preferences(rows, pair_settings(_params(strategy)))
        splits[strategy] = {r["prompt_id"] for r in out if r["split"] == "val"}
    assert len(set(map(frozenset, splits.values()))) == 1


def test_rso_metrics_picked_beats_pool():
    rows = _scored_rows(200, k=16, gold=False)
    out, metrics = build_preferences(rows, pair_settings(_params("rso", beta=0.5)))
    assert metrics["mean_reward_picked"] > metrics["mean_reward_pool"] + 0.3
    assert all(len(r["pairs"]) <= 2 for r in out) and "gold_agreement" not in metrics


def test_make_preference_file_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/scored.jsonl", _scored_rows(30))
    metrics = make_preference_file(_params("tournament"))
    rows = read_rows("data/preferences.jsonl", PREFERENCES)
    assert [r["prompt_id"] for r in rows] == [f"train-{i}" for i in range(30)]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert json.loads(Path("metrics/pairs.json").read_text()) == metrics
    assert metrics["pairs_per_prompt"] == 3


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("params, needle", [
    (_params("nearest"), "pairs.strategy"),
    (_params("rso", n_select=1), "pairs.rso.n_select"),
    (_params("rso", beta=0.0), "pairs.rso.beta"),
    (_params("rso", beta=-1), "pairs.rso.beta"),
    (_params(val_fraction=1.0), "pairs.val_fraction"),
    ({"seed": 0}, "'pairs'"),
])
def test_bad_params(params, needle):
    with pytest.raises(StageError, match=needle.replace(".", r"\.")) as err:
        pair_settings(params)
    assert "\n" not in str(err.value)


def test_rso_n_select_above_k_names_row():
    with pytest.raises(StageError, match=r"pairs\.rso\.n_select=8 exceeds the 4 completions "
                                         r"of scored row 1 \(train-0\)"):
        build_preferences(_scored_rows(3), pair_settings(_params("rso", n_select=8)))


def test_unknown_strategy_in_make_pairs():
    with pytest.raises(StageError, match="pairs.strategy"):
        make_pairs([1.0, 2.0], {"strategy": "bogus"}, random.Random(0))


def test_scored_reward_count_mismatch_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _scored_rows(3)
    rows[1]["rewards"] = rows[1]["rewards"][:3]
    write_jsonl("data/scored.jsonl", rows)
    with pytest.raises(StageError, match=r"data/scored\.jsonl:2: rewards has 3 values for 4 "
                                         r"completions"):
        make_preference_file(_params())
    assert not Path("data/preferences.jsonl").exists()


def test_all_tied_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _scored_rows(3, gold=False)
    for row in rows:
        row["rewards"] = [0.0] * 4
    write_jsonl("data/scored.jsonl", rows)
    with pytest.raises(StageError, match="no prompt gives a preference pair"):
        make_preference_file(_params())


# --- score ----------------------------------------------------------------------------------

def _samples(n: int = 5, k: int = 3) -> list[dict]:
    return [{"prompt_id": f"train-{i}", "prompt": "The film was",
             "completions": [" great fun.", " not good.", " dull, but the acting was great."][:k]}
            for i in range(n)]


def test_score_rows_attaches_rewards_and_gold():
    seen = []

    def reward_fn(texts):
        seen.extend(texts)
        return [float(len(t)) for t in texts]

    out = score_rows(_samples(2), reward_fn, gold_fn=lambda t: 1.0 if "great" in t else -1.0)
    assert seen[:3] == ["The film was great fun.", "The film was not good.",
                        "The film was dull, but the acting was great."]
    assert out[0]["rewards"] == [float(len(t)) for t in seen[:3]]
    assert out[0]["gold"] == [1.0, -1.0, 1.0]
    assert "gold" not in score_rows(_samples(1), reward_fn)[0]
    with pytest.raises(StageError, match="2 rewards for 6 completions"):
        attach_scores(_samples(2), [0.0, 1.0])


def _fake_reward_module(calls: list) -> types.ModuleType:
    module = types.ModuleType("stages.reward")

    def load_reward_model(path):
        calls.append(("load", path))
        return "model", "tokenizer"

    def score_texts(model, tokenizer, texts, *, score="logit", batch_size=64):
        calls.append(("score", score, len(texts)))
        return [float(t.count("great")) for t in texts]

    module.load_reward_model, module.score_texts = load_reward_model, score_texts
    return module


@pytest.mark.parametrize("source", ["synthetic", "/some/folder"])
def test_score_stage(tmp_path, monkeypatch, source):
    calls = []
    monkeypatch.setitem(sys.modules, "stages.reward", _fake_reward_module(calls))
    monkeypatch.chdir(tmp_path)
    Path("models/reward").mkdir(parents=True)
    write_jsonl("data/samples.jsonl", _samples(4))
    summary = score({"reward": {"score": "prob"}, "data": {"source": source}})
    rows = read_rows("data/scored.jsonl", SCORED)
    assert calls == [("load", "models/reward"), ("score", "prob", 12)]
    assert rows[0]["rewards"] == [1.0, 0.0, 1.0] and summary["completions"] == 12
    assert ("gold" in rows[0]) == (source == "synthetic")
    if source == "synthetic":
        from stages.synthetic import gold_score

        assert rows[0]["gold"][1] == gold_score("The film was not good.")
