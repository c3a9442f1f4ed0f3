"""The frontier's compute (stages/lib/frontier.py) and tables (stages/lib/frontier_tables.py) on
hand-made examples with known answers: families, Pareto envelopes, interpolation, KL levels,
the matched-KL comparison with bootstrap replicates (the stage: tests/test_frontier_stage.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.lib.bootstrap import draw_resamples, replicates, set_replicates
from stages.lib.confirm import bootstrap_p
from stages.lib.frontier import (
    FAMILY_EXTRA,
    family_name,
    group_families,
    pareto_front,
    read_config,
)
from stages.lib.frontier_tables import frontier_metrics
from stages.lib.matched_kl import (
    Curve,
    SeedPoints,
    add_seed_replicates,
    curve,
    interpolate,
    kl_levels,
    matched_kl,
    spearman,
)
from stages.lib.runs import estimate, per_prompt

# --------------------------------------------------------------------------- families


def _s(loss="sigmoid", divergence="reverse_kl", beta=0.3, alpha=None, **extra) -> dict:
    base = {"loss": loss, "divergence": divergence, "beta": beta, "alpha": alpha}
    return {**base, "sft_weight": 0.0, "label_smoothing": 0.0, "curriculum": "shuffle", **extra}


def test_families_group_everything_but_beta():
    settings = {
        "dpo": _s(beta=0.3),
        "alpha-0_5": _s(divergence="alpha", alpha=0.5, beta=0.1),
        "rkl-b1": _s(beta=1.0),
        "a05-b1": _s(divergence="alpha", alpha=0.5, beta=1.0),
        "a03": _s(divergence="alpha", alpha=0.3, beta=1.0),
        "rpo": _s(sft_weight=1.0),
        "cdpo": _s(label_smoothing=0.1),
        "dpo-easy": _s(curriculum="easy_to_hard"),
        "hinge": _s(loss="hinge"),
        "rrhf": _s(loss="rrhf", divergence=None, beta=None, sft_weight=1.0),
    }
    fams = group_families(settings)
    by = {f.name: f for f in fams}
    assert [f.name for f in fams] == [
        "sigmoid-reverse_kl",
        "sigmoid-alpha-0_5",
        "sigmoid-alpha-0_3",
        "sigmoid-reverse_kl-sft1",
        "sigmoid-reverse_kl-ls0_1",
        "sigmoid-reverse_kl-easy_to_hard",
        "hinge-reverse_kl",
        "rrhf-sft1",
    ]
    assert by["sigmoid-reverse_kl"].variants == ("dpo", "rkl-b1")
    assert by["sigmoid-reverse_kl"].betas == (0.3, 1.0) and by["sigmoid-reverse_kl"].n_betas == 2
    assert by["sigmoid-alpha-0_5"].variants == ("alpha-0_5", "a05-b1")
    assert by["rrhf-sft1"].n_betas == 0 and by["hinge-reverse_kl"].n_betas == 1
    assert all("." not in f.name for f in fams)


def test_family_names_are_slugs():
    assert family_name(_s(divergence="alpha", alpha=0.25)) == "sigmoid-alpha-0_25"
    assert family_name(_s(loss="plackett_luce")) == "plackett_luce-reverse_kl"
    assert family_name(_s(curriculum="hard_to_easy", sft_weight=0.5)) == (
        "sigmoid-reverse_kl-sft0_5-hard_to_easy"
    )


def test_family_names_of_slic_hf_and_the_sft_reductions():
    """δ names a SLiC-HF family; the SFT reduction only where it is not the loss's default
    (sum for slic_hf and rrhf, mean otherwise), so the existing families keep their names."""
    slic = _s(loss="slic_hf", divergence=None, beta=None, margin=1.0, sft_weight=1.0)
    assert family_name({**slic, "sft_reduction": "sum"}) == "slic_hf-margin1-sft1"
    assert family_name({**slic, "sft_reduction": "mean"}) == "slic_hf-margin1-sft1-mean"
    rrhf = _s(loss="rrhf", divergence=None, beta=None, sft_weight=1.0)
    assert family_name({**rrhf, "sft_reduction": "sum"}) == "rrhf-sft1"
    assert family_name({**rrhf, "sft_reduction": "mean"}) == "rrhf-sft1-mean"
    assert family_name(_s(sft_weight=1.0, sft_reduction="mean")) == "sigmoid-reverse_kl-sft1"
    assert family_name(_s(sft_weight=1.0, sft_reduction="sum")) == "sigmoid-reverse_kl-sft1-sum"
    assert family_name(_s(sft_reduction="mean")) == "sigmoid-reverse_kl"  # no SFT term
    fams = group_families(
        {"rrhf": {**rrhf, "sft_reduction": "sum"}, "rrhf-mean": {**rrhf, "sft_reduction": "mean"}}
    )
    assert [f.name for f in fams] == ["rrhf-sft1", "rrhf-sft1-mean"]


def test_pairs_split_a_family_and_checkpoints_never_do():
    """Issue 29: a variant trained on another pairing strategy is another method (its own
    family, ``pairs_<strategy>`` in the name); the checkpoint steps of a run are no setting of
    the method (same family, nothing in the name, a list that must not break grouping);
    learning rate and epochs stay tuning. Catches ``pairs`` ignored, ``checkpoints`` grouped
    by (or hashed: a list is unhashable) and either printed as ``<key><value>``."""
    settings = {
        "dpo": _s(beta=0.3, pairs=None, checkpoints=[10, 20]),
        "dpo-b1": _s(beta=1.0, pairs=None, checkpoints=None),
        "dpo-all": _s(beta=0.3, pairs="all_pairs", checkpoints=[5]),
        "dpo-all-b1": _s(beta=1.0, pairs="all_pairs"),
    }
    fams = group_families(settings)
    assert [(f.name, f.variants) for f in fams] == [
        ("sigmoid-reverse_kl", ("dpo", "dpo-b1")),
        ("sigmoid-reverse_kl-pairs_all_pairs", ("dpo-all", "dpo-all-b1")),
    ]
    assert family_name(_s(checkpoints=[1, 2], pairs=None)) == "sigmoid-reverse_kl"
    assert family_name(_s(curriculum="easy_to_hard", pairs="best_worst")) == (
        "sigmoid-reverse_kl-easy_to_hard-pairs_best_worst"
    )
    assert "pairs" in FAMILY_EXTRA and "checkpoints" not in FAMILY_EXTRA


# --------------------------------------------------------------------------- pareto


def test_pareto_front_on_a_hand_made_set():
    #        0    1    2    3    4    5    6
    kl = [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0]
    reward = [0.0, 2.0, 1.5, 3.0, 2.5, 3.0, 4.0]
    # 2 is dominated by 1 (less KL, more reward); 4 by 3; 5 by 3 (same reward, more KL)
    assert pareto_front(kl, reward) == [0, 1, 3, 6]
    # max both (reward against entropy): only points no other beats in both
    assert pareto_front(kl, reward, x_higher_better=True) == [6]
    # identical points: the first is kept
    assert pareto_front([1.0, 1.0, 0.5], [2.0, 2.0, 1.0]) == [2, 0]


# --------------------------------------------------------------------------- interpolation


def test_interpolation_at_known_points():
    x, y = [6.0, 2.0, 4.0], [4.0, 2.0, 3.0]  # y = 1 + x / 2, given out of x order
    assert float(interpolate(x, y, 3.0)) == pytest.approx(2.5)
    assert float(interpolate(x, y, 4.0)) == pytest.approx(3.0)  # a point itself
    assert float(interpolate(x, y, 2.0)) == pytest.approx(2.0)  # the range's ends count
    assert math.isnan(float(interpolate(x, y, 1.9)))  # no extrapolation
    assert math.isnan(float(interpolate(x, y, 6.1)))
    # piecewise: a kink at x = 4
    assert float(interpolate([2, 4, 6], [0, 4, 0], 5.0)) == pytest.approx(2.0)
    # rows are replicates, each with its own points and range
    rows = interpolate([[0, 2], [1, 3], [3, 5]], [[0, 2], [10, 30], [0, 1]], 2.0)
    np.testing.assert_allclose(rows, [2.0, 20.0, np.nan])
    # equal x at the level: the mean of their y
    assert float(interpolate([1.0, 2.0, 2.0, 3.0], [0, 1, 3, 0], 2.0)) == pytest.approx(2.0)


def test_kl_levels_are_quartiles_of_the_common_range():
    levels, how = kl_levels({"a": (1.0, 5.0), "b": (2.0, 6.0)})
    assert levels == pytest.approx([2.75, 3.5, 4.25])
    assert "[2.000, 5.000]" in how and "2 families" in how
    levels, how = kl_levels({"a": (1.0, 2.0), "b": (5.0, 9.0)}, fallback=(3.0, 7.0))
    assert levels == pytest.approx([5.5, 6.0, 6.5]) and "do not all overlap" in how
    assert "1 of the 2 families" in how and "(b;" in how
    # no family meets the baseline: its own range
    levels, how = kl_levels({"a": (1.0, 2.0), "b": (8.0, 9.0)}, fallback=(3.0, 7.0))
    assert levels == pytest.approx([4.0, 5.0, 6.0]) and "0 of the 2" in how


def test_kl_levels_narrow_the_baseline_range_greedily_by_overlap():
    """As on real IMDB: reverse KL [3.3, 8.2] meets alpha [4.8, 8.2] and JS [7.2, 9.3] but not
    forward KL [8.7, 9.7]. JS would leave [7.2, 8.2], under a quarter of the baseline's range:
    the levels lie in [4.8, 8.2], shared by reverse KL and alpha."""
    ranges = {"rkl": (3.3, 8.2), "alpha": (4.8, 8.2), "jsd": (7.2, 9.3), "fkl": (8.7, 9.7)}
    levels, how = kl_levels(ranges, fallback=ranges["rkl"])
    assert levels == pytest.approx([4.8 + q * 3.4 for q in (0.25, 0.5, 0.75)])
    assert "2 of the 4 families" in how and "(rkl, alpha;" in how
    # where its overlap is a quarter of the baseline range or more, JS joins
    levels, how = kl_levels({**ranges, "rkl": (3.3, 8.2)}, fallback=(7.0, 8.2))
    assert "(rkl, alpha, jsd;" in how


def test_kl_levels_keep_a_quarter_of_the_baseline_range():
    """As in the demo study: reverse KL [5.09, 11.2], hinge [5.73, 11.7] and IPO [0.77, 5.74]
    all overlap, but only over 0.01 nats; IPO is skipped (its overlap is under a quarter of the
    baseline's range)."""
    ranges = {"rkl": (5.09, 11.23), "hinge": (5.73, 11.66), "ipo": (0.77, 5.74)}
    levels, how = kl_levels(ranges, fallback=ranges["rkl"])
    assert levels == pytest.approx([5.73 + q * (11.23 - 5.73) for q in (0.25, 0.5, 0.75)])
    assert "2 of the 3 families" in how and "(rkl, hinge;" in how
    assert kl_levels({}, None)[0] == [] and kl_levels({"a": (1, 2), "b": (3, 4)})[0] == []


# --------------------------------------------------------------------------- matched KL


def _curve(name, kls, fn, effects, n_betas=None) -> Curve:
    """A family whose runs have KL ``kls`` exactly and value fn(KL) + a per (seed, prompt)
    effect shared by every family: its replicates on common resamples."""
    draws = draw_resamples(*effects.shape, 400, seed=0)
    kl = np.array(kls, dtype=float)
    values = np.array([fn(k) for k in kl])
    ones = np.ones_like(effects)
    reps = np.stack([replicates(v + effects, ones, draws) for v in values], axis=1)
    point = np.array([np.mean(v + effects) for v in values])
    kl_reps = np.tile(kl, (400, 1))
    return Curve(name, n_betas or len(kls), kl, kl_reps, {"reward": point}, {"reward": reps})


def test_matched_kl_on_two_families_with_a_known_answer():
    effects = np.random.default_rng(0).normal(size=(3, 30))
    effects -= effects.mean()
    a = _curve("a", [6.0, 2.0, 4.0], lambda k: 1 + k / 2, effects)
    b = _curve("b", [5.0, 3.0], lambda k: 0.5 + k / 2, effects)
    c = _curve("c", [4.0], lambda k: 9.0, effects)  # a single β: no curve
    ranges = {x.name: x.kl_range for x in (a, b) if x.n_betas >= 2}
    levels, _ = kl_levels(ranges)
    assert levels == pytest.approx([3.5, 4.0, 4.5])
    rows = matched_kl([a, b, c], "a", levels, ["reward"])
    by = {(r["kl"], r["family"]): r for r in rows}
    for level in levels:
        ra, rb, rc = by[level, "a"], by[level, "b"], by[level, "c"]
        assert ra["reward"] == pytest.approx(1 + level / 2)
        assert rb["reward"] == pytest.approx(0.5 + level / 2)
        assert ra["reward_lo"] < ra["reward"] < ra["reward_hi"]  # seed and prompt effects
        assert rb["reward_coverage"] == 1.0
        # paired: the shared effects cancel in every replicate
        assert (rb["d_reward"], rb["d_reward_lo"], rb["d_reward_hi"]) == pytest.approx(
            (-0.5, -0.5, -0.5)
        )
        assert rb["d_reward_excludes_0"] is True and ra["d_reward_excludes_0"] is False
        assert rc["status"] == "fewer than 2 β values" and "reward" not in rc
    outside = matched_kl([a, b], "a", [5.5], ["reward"])
    assert outside[1]["status"] == "KL level outside the family's range"
    assert outside[0]["reward"] == pytest.approx(3.75)
    with pytest.raises(ValueError, match="baseline curve 'z'"):
        matched_kl([a, b], "z", levels, ["reward"])
    metrics = frontier_metrics({"levels": levels}, rows)
    assert metrics["kl_levels"] == {"kl1": 3.5, "kl2": 4.0, "kl3": 4.5}
    assert metrics["b"]["kl2"]["d_reward"] == pytest.approx(-0.5) and "c" not in metrics


def test_replicates_whose_range_misses_the_level_are_left_out():
    kl = np.array([2.0, 4.0])
    kl_reps = np.array([[2.0, 4.0], [2.5, 4.0], [1.0, 3.0]])  # the 3rd misses level 3.5
    reward = np.array([1.0, 2.0])
    reps = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    c = Curve("c", 2, kl, kl_reps, {"reward": reward}, {"reward": reps})
    (row,) = matched_kl([c], "c", [3.5], ["reward"])
    assert row["reward"] == pytest.approx(1.75)
    assert row["reward_coverage"] == pytest.approx(2 / 3)
    assert row["reward_lo"] == pytest.approx(1.7, abs=0.06)  # 1.75 and 1.6667 only


def test_per_prompt_numerators_follow_the_report():
    rows = [
        {
            "rewards": [1.0, 3.0],
            "gold": [0.0, 1.0],
            "entropy": [2.0, 4.0],
            "n_generated": [1, 3],
            "logp": [-5.0, -7.0],
            "logp_sft": [-6.0, -10.0],
        }
    ]
    num, den = per_prompt(rows, sft=False, where="f")
    assert num["reward"][0] == 2.0 and num["gold"][0] == 0.5 and num["kl"][0] == 2.0
    assert (num["entropy"][0], den["entropy"][0]) == (14.0, 4.0)
    assert "entropy_first_k" not in num and "context_entropy" not in num
    more = [
        {**rows[0], "entropy_first_k": [1.0, 2.0], "n_first_k": [1, 2], "context_entropy": 3.0},
        {**rows[0], "entropy_first_k": [1.0, 1.0], "n_first_k": [1, 1]},  # no context
    ]
    more[0]["context_tokens"] = 5
    num, den = per_prompt(more, sft=False, where="f")
    np.testing.assert_allclose(num["entropy_first_k"], [5.0, 2.0])
    np.testing.assert_allclose(den["entropy_first_k"], [3.0, 2.0])
    np.testing.assert_allclose(num["context_entropy"], [15.0, 0.0])
    np.testing.assert_allclose(den["context_entropy"], [5.0, 0.0])
    num, _ = per_prompt([{k: v for k, v in rows[0].items() if k != "gold"}], sft=True, where="f")
    assert "gold" not in num and num["kl"][0] == 0.0
    with pytest.raises(ValueError, match="^f: field 'logp_sft' missing"):
        per_prompt([{k: v for k, v in rows[0].items() if k != "logp_sft"}], sft=False, where="f")


def test_a_difference_reaching_the_level_in_under_90_percent_is_no_comparison():
    """Issue 29 item 4: every Δ cell stores its coverage (the share of replicates in which both
    curves reach the level); below 1.0 it carries †, below 0.9 it is not a comparison (no `*`,
    "not compared" in the Markdown) even when its interval excludes 0. Catches a Δ coverage
    taken from one curve only, or a `*` on a difference that rests on a minority of replicates."""
    from stages.lib.frontier_tables import delta_cell

    kl = np.array([2.0, 4.0])
    base_reps = np.array([[2.0, 4.0]] * 10)
    # the other family misses level 3.5 in 2 of 10 replicates (coverage 0.8), then in 0 of 10
    for misses, shown in ((2, "not compared (coverage 0.80)"), (0, "+1.000 [+1.000, +1.000] *")):
        other = np.array([[1.0, 3.0]] * misses + [[2.0, 4.0]] * (10 - misses))
        base = Curve("a", 2, kl, base_reps, {"reward": kl / 2}, {"reward": base_reps / 2})
        c = Curve("c", 2, kl, other, {"reward": kl / 2 + 1}, {"reward": base_reps / 2 + 1})
        rows = {r["family"]: r for r in matched_kl([base, c], "a", [3.5], ["reward"])}
        row = rows["c"]
        assert row["d_reward_coverage"] == pytest.approx(1 - misses / 10)
        assert row["d_reward_lo"] == row["d_reward_hi"] == pytest.approx(1.0)  # excludes 0
        assert row["d_reward_excludes_0"] is (misses == 0)
        assert delta_cell(row, "reward") == shown
    # between 0.9 and 1.0: a comparison, marked with the dagger
    row = {"d_reward": 0.5, "d_reward_lo": 0.1, "d_reward_hi": 0.9, "d_reward_excludes_0": True}
    assert delta_cell({**row, "d_reward_coverage": 0.95}, "reward") == "+0.500 [+0.100, +0.900] * †"


# --------------------------------------------------------------------------- per-seed isotonic


def _seed_curve(name, kl, y, draws, noise=None) -> Curve:
    """A family through points whose KL ``kl`` [S, m] and value ``y`` [S, m] are exact per
    seed (every prompt alike, plus a zero-mean prompt effect ``noise`` [S, P] on ``y``):
    estimates and per-seed replicates as the stage computes them."""
    s_, m = kl.shape
    p = draws.prompt_weights.shape[1]
    noise = np.zeros((s_, p)) if noise is None else noise
    points = []
    for j in range(m):
        num = {"kl": np.repeat(kl[:, j : j + 1], p, 1), "reward": y[:, j : j + 1] + noise}
        den = {k: np.ones((s_, p)) for k in num}
        points.append(add_seed_replicates(estimate(num, den, draws), num, den, draws))
    return curve(name, m, points, ["reward"])


def test_seed_replicates_are_those_the_bootstrap_averages():
    """The per-seed replicates, averaged over each replicate's resampled seeds, are exactly the
    bootstrap's replicates (ratios and set fractions). Catches per-seed values computed on
    other prompts or reference points than the estimate's (the isotonic intervals would not
    be those of the same resamples)."""
    rng = np.random.default_rng(1)
    draws = draw_resamples(3, 20, 200, seed=4)
    num, den = {"reward": rng.normal(size=(3, 20))}, {"reward": rng.uniform(1, 2, (3, 20))}
    hits = {"recall_x_all": rng.random((3, 15, 20)) < 0.05}
    est = add_seed_replicates(estimate(num, den, draws, sets=hits), num, den, draws, hits)
    for m, want in (
        ("reward", replicates(num["reward"], den["reward"], draws)),
        ("recall_x_all", set_replicates(hits["recall_x_all"], draws)),
    ):
        got = np.take_along_axis(est[m]["seed_reps"], draws.seeds, axis=1).mean(1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(est[m]["draws"], draws.seeds)


def test_per_seed_isotonic_recovers_a_known_monotone_truth():
    """Three seeds put the same variants at different KL (seed s shifted by 0.3 s); every
    seed's values lie on the truth 2 + KL/2 plus a seed effect (mean 0) and zero-mean prompt
    noise. Per seed the fit reads the truth at any level every seed covers, with coverage 1;
    at a level some seed's points miss (1.4: seed 2 starts at 1.6) the point estimate is
    undefined although the seed-mean points (from 1.3) reach it, where the linear fit has a
    value. Catches the seed-mean points fitted instead (right here only by luck of a line),
    a value extrapolated for a seed that misses the level, and coverage counted per seed."""
    draws = draw_resamples(3, 12, 300, seed=0)
    kl = np.array([[1.0, 2.0, 3.0, 4.0]]) + 0.3 * np.arange(3)[:, None]
    effect = np.array([[-0.2], [0.5], [-0.3]])
    noise = np.random.default_rng(2).normal(scale=0.3, size=(3, 12))
    noise -= noise.mean(1, keepdims=True)
    c = _seed_curve("c", kl, 2 + kl / 2 + effect, draws, noise)
    assert c.range("isotonic") == pytest.approx((1.6, 4.0))
    assert c.range("linear") == pytest.approx((1.3, 4.3))
    rows = {r["kl"]: r for r in matched_kl([c], "c", [1.4, 1.7, 2.5, 3.9], ["reward"], "isotonic")}
    for level in (1.7, 2.5, 3.9):
        r = rows[level]
        assert r["status"] == "ok" and r["reward"] == pytest.approx(2 + level / 2)
        assert r["reward_coverage"] == 1.0 and r["reward_direction"] == 1
        assert r["reward_lo"] < r["reward"] < r["reward_hi"]  # seed and prompt effects
    assert (
        rows[1.4]["status"] == "KL level outside the family's range" and "reward" not in rows[1.4]
    )
    (lin,) = matched_kl([c], "c", [1.4], ["reward"], "linear")
    assert lin["status"] == "ok"


def test_per_seed_fits_differ_from_fitting_the_seed_means():
    """Two seeds put variants a and b at swapped KL (a at 1 and 3, b at 3 and 1), c at 5;
    every seed's values lie on the truth KL - 1. The seed means of a and b coincide at KL 2, so
    a curve through the seed-mean points starts at 2 and cannot read KL 1.5, and reads
    KL 3 between (2, 1) and (5, 4) as 2; per seed, both seeds read the truth: 0.5 and 2.
    Catches the average-then-fit order (the linear fit's) used for the isotonic fit."""
    draws = draw_resamples(2, 4, 50, seed=1)
    kl = np.array([[1.0, 3.0, 5.0], [3.0, 1.0, 5.0]])
    c = _seed_curve("c", kl, kl - 1, draws)
    rows = matched_kl([c], "c", [1.5, 3.0], ["reward"], "isotonic")
    assert [r["reward"] for r in rows] == pytest.approx([0.5, 2.0])
    lin = matched_kl([c], "c", [1.5, 3.0], ["reward"], "linear")
    assert lin[0]["status"] == "KL level outside the family's range"
    assert lin[1]["reward"] == pytest.approx(2.0)  # (2, 1) to (5, 4): 2 at KL 3 (a line)
    kl2 = np.array([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])  # a convex truth: KL²
    c2 = _seed_curve("c2", kl2, kl2**2, draws)
    (iso,) = matched_kl([c2], "c2", [3.5], ["reward"], "isotonic")
    (lin,) = matched_kl([c2], "c2", [3.5], ["reward"], "linear")
    # per seed: 3.5 on (3, 9)-(5, 25) = 13 and on (2, 4)-(4, 16) = 13; seed means (1.5, 2.5),
    # (3.5, 12.5), (5.5, 30.5): 12.5
    assert iso["reward"] == pytest.approx(13.0) and lin["reward"] == pytest.approx(12.5)


def test_a_replicate_has_a_value_only_where_all_its_resampled_seeds_do():
    """Seed 1's points miss level 3.5 in replicates 0-3 (its range ends at 3 there). A
    replicate that resampled seed 1 has no value; one that drew seeds 0 and 2 only has one.
    Catches the average over the original seeds (every replicate of 0-3 would lose its value)
    and NaN seeds skipped in the mean (a value from the other seeds alone)."""
    b, s = 6, 3
    kl = np.tile([2.0, 4.0], (s, 1))
    kl_reps = np.tile(kl, (b, 1, 1))
    kl_reps[:4, 1] = [2.0, 3.0]
    y = kl / 2
    draws = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 1], [0, 0, 2], [0, 1, 2], [2, 2, 2]])
    sp = SeedPoints(kl, kl_reps, {"reward": y}, {"reward": kl_reps / 2}, draws)
    c = Curve(
        "c",
        2,
        kl.mean(0),
        kl_reps.mean(1),
        {"reward": y.mean(0)},
        {"reward": (kl_reps / 2).mean(1)},
        seeds=sp,
    )
    (row,) = matched_kl([c], "c", [3.5], ["reward"], "isotonic")
    assert row["reward"] == pytest.approx(1.75)
    assert row["reward_coverage"] == pytest.approx(4 / 6)  # replicates 1, 3, 4, 5
    assert row["reward_lo"] == pytest.approx(1.75) and row["reward_hi"] == pytest.approx(1.75)


def test_direction_follows_spearman_and_is_fixed():
    """A measure falling with KL (entropy) is fitted non-increasing: noisy points 3.0, 3.2,
    2.0 at KL 1, 2, 3 pool the first two to 3.1; a rising fit would pool the last two instead.
    Catches a fixed non-decreasing fit and the sign of Spearman's ρ flipped."""
    assert spearman([1, 2, 3], [3.0, 3.2, 2.0]) == pytest.approx(-0.5)
    assert spearman([1, 1, 1], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([1, 2, 2, 3], [1, 5, 5, 9]) == pytest.approx(1.0)  # ties: average ranks
    draws = draw_resamples(2, 3, 20, seed=0)
    kl = np.array([[1.0, 2.0, 3.0]] * 2)
    c = _seed_curve("c", kl, np.array([[3.0, 3.2, 2.0]] * 2), draws)
    (row,) = matched_kl([c], "c", [1.5], ["reward"], "isotonic")
    assert row["reward_direction"] == -1 and row["reward"] == pytest.approx(3.1)
    flat = _seed_curve("f", kl, np.ones((2, 3)), draws)
    assert flat.direction("reward") == 1  # ρ = 0: non-decreasing


def test_bootstrap_p_value():
    """Two-sided: 2 x the smaller share of replicates on either side of 0 (0 counted on both),
    at most 1, NaN replicates left out. Catches a one-sided share, a missing factor 2 and NaN
    counted as a side."""
    assert bootstrap_p([-1.0, 1.0, 2.0, 3.0]) == 0.5
    assert bootstrap_p([1.0, 2.0, np.nan]) == 0.0
    assert bootstrap_p([-1.0, 1.0]) == 1.0
    assert bootstrap_p([0.0, 0.0, 1.0]) == 1.0
    assert bootstrap_p([-3.0, -2.0, -1.0, 1.0, np.nan, np.nan]) == 0.5
    assert math.isnan(bootstrap_p([np.nan]))


def test_an_unknown_fit_is_a_one_line_error():
    assert read_config({"frontier": {}}).fit == "isotonic"
    assert read_config({"frontier": {"fit": "linear", "bootstrap": 10}}).fit == "linear"
    with pytest.raises(ValueError, match=r"^params: frontier\.fit: must be one of isotonic, "):
        read_config({"frontier": {"fit": "lowess"}})
    with pytest.raises(ValueError, match="needs its per-seed points"):
        matched_kl(
            [Curve("c", 2, np.array([1.0, 2.0]), np.ones((3, 2)))], "c", [1.5], [], "isotonic"
        )
