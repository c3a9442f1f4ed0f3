"""Holm's correction and the bootstrap p-value of the pre-registered comparisons
(stages/lib/confirm.py). Each test names the wrong code it catches."""

from __future__ import annotations

import numpy as np
import pytest

from stages.lib.confirm import MIN_COVERAGE, bootstrap_p, confirm, holm


def test_holm_known_answer():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06.
    # Bonferroni (x4 for all) would reject only the first; no step-down monotonicity (the running
    # max) would give 0.04 for the last and reject it.
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]


def test_holm_matches_a_direct_step_down_on_random_p_values():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        adjusted, reject = holm(p)
        # the procedure as written: walk up the sorted p-values, stop at the first failure
        order, m = np.argsort(p, kind="stable"), len(p)
        expected = np.zeros(m, dtype=bool)
        for i, k in enumerate(order):
            if p[k] > 0.05 / (m - i):
                break
            expected[k] = True
        assert reject.tolist() == expected.tolist()
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)


def test_holm_rejects_bad_p_values():
    with pytest.raises(ValueError, match="p-values must be"):
        holm([0.1, 1.5])
    with pytest.raises(ValueError, match="p-values must be"):
        holm([np.nan])


def test_bootstrap_p_is_two_sided_and_ignores_missing_replicates():
    assert bootstrap_p(np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert bootstrap_p(np.array([1.0, -1.0, 2.0, 3.0])) == 0.5  # 2 x 1/4 (one-sided would be 0.25)
    assert bootstrap_p(np.array([-1.0, np.nan, -2.0, 1.0])) == pytest.approx(2 / 3)
    assert np.isnan(bootstrap_p(np.array([np.nan])))  # no replicate: no p (confirm: p = 1)
    assert bootstrap_p(np.zeros(5)) == 1.0  # Δ = 0 counts on both sides


def test_uncovered_cells_count_in_m_with_p_one():
    cells = [
        {"p": 0.001, "coverage": 1.0, "delta": 0.4},
        {"p": 0.0, "coverage": MIN_COVERAGE - 0.01, "delta": -0.3},
        {"p": 0.03, "coverage": 0.95, "delta": -0.2},
    ]
    out = confirm(cells)
    assert [c["verdict"] for c in out] == ["higher", "not compared", "no difference shown"]
    # m = 3, not 2: 0.001 x 3, then 0.03 x 2 = 0.06 -> with the uncovered cell dropped from m the
    # third would be 0.03 x 1 and shown as "lower"
    np.testing.assert_allclose([c["p_holm"] for c in out], [0.003, 1.0, 0.06])
    assert confirm([]) == []
