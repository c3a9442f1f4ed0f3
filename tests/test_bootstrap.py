"""The two-level bootstrap (stages/lib/bootstrap.py); its statistical behaviour on constructed
examples is tested through the report stage (tests/test_report.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stages import frontier, report
from stages.lib import bootstrap, runs
from stages.lib.bootstrap import draw_resamples, interval, point_estimate, replicates


def test_report_frontier_and_runs_use_the_library_bootstrap():
    """One bootstrap: the stages draw the resamples, the runs module estimates on them."""
    for module in (report, frontier):
        assert module.draw_resamples is bootstrap.draw_resamples
    for name in ("Resamples", "point_estimate", "replicates", "interval"):
        assert getattr(runs, name) is getattr(bootstrap, name)


def test_resamples_are_seeded_and_weights_sum_to_the_prompts():
    a, b = draw_resamples(3, 7, 50, seed=4), draw_resamples(3, 7, 50, seed=4)
    np.testing.assert_array_equal(a.seeds, b.seeds)
    np.testing.assert_array_equal(a.prompt_weights, b.prompt_weights)
    assert a.seeds.shape == (50, 3) and a.prompt_weights.shape == (50, 7)
    assert (a.prompt_weights.sum(1) == 7).all() and a.seeds.max() < 3


def test_common_resamples_make_a_constant_shift_exact():
    """Two policies that differ by a constant on every (seed, prompt): the difference of their
    replicates is that constant on every resample."""
    rng = np.random.default_rng(0)
    num = rng.normal(size=(3, 20))
    draws = draw_resamples(3, 20, 300, seed=1)
    diff = replicates(num + 0.25, np.ones_like(num), draws) - replicates(
        num, np.ones_like(num), draws
    )
    np.testing.assert_allclose(diff, 0.25, atol=1e-12)
    assert point_estimate(num + 0.25, np.ones_like(num)) == pytest.approx(num.mean() + 0.25)
    assert interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def test_set_replicates_resample_seeds_and_reference_points():
    """Coverage/recall on a resample: per resampled seed, the share of reference points hit by
    any prompt, the points drawn with replacement (same draw for every policy), averaged over
    the resampled seeds; checked against a brute-force loop. Catches resampling the prompts
    (a union over ~63% distinct prompts is biased low), counting a point hit by two prompts
    twice, or another point draw per call (unpaired policies)."""
    from stages.lib.bootstrap import set_replicates

    rng = np.random.default_rng(3)
    hits = rng.random((3, 7, 5)) < 0.2  # [S, N, P]
    draws = draw_resamples(n_seeds=3, n_prompts=5, n=40, seed=1)
    got = set_replicates(hits, draws)
    points = draws.point_weights(7)
    np.testing.assert_array_equal(points, draws.point_weights(7))  # paired across calls
    assert points.sum(axis=1).tolist() == [7] * 40
    for b in range(40):
        per_seed = [np.dot(points[b], hits[s].any(axis=1)) / 7 for s in draws.seeds[b]]
        assert got[b] == pytest.approx(np.mean(per_seed))
    # unbiased: the replicates centre on the estimate (a prompt resample would not)
    many = draw_resamples(n_seeds=3, n_prompts=5, n=4000, seed=2)
    assert set_replicates(hits, many).mean() == pytest.approx(hits.any(axis=2).mean(), abs=0.01)
