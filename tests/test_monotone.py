"""Vectorised isotonic regression (stages/lib/monotone.py) against scikit-learn and a
hand-written pool-adjacent-violators, on known answers; each test names the wrong code it
catches."""

from __future__ import annotations

import numpy as np
import pytest

from stages.lib.monotone import isotonic, isotonic_at, value_at


def pava(x, y, increasing=True) -> tuple[np.ndarray, np.ndarray]:
    """A plain pool-adjacent-violators on one problem: ties in x pooled first (their mean,
    weighted by count), then adjacent violating blocks merged; fitted values per sorted point."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    sign = 1 if increasing else -1
    blocks = []  # [sum, count, n_points]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        blocks.append([sign * ys[i : j + 1].sum(), j - i + 1, j - i + 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c, n = blocks.pop()
            blocks[-1] = [blocks[-1][0] + s, blocks[-1][1] + c, blocks[-1][2] + n]
        i = j + 1
    fit = np.concatenate([np.full(n, sign * s / c) for s, c, n in blocks])
    return xs, fit


def _random(rows, n, seed, ties=True):
    rng = np.random.default_rng(seed)
    x = (
        rng.integers(0, n // 2, size=(rows, n)).astype(float)
        if ties
        else rng.normal(size=(rows, n))
    )
    return x, rng.normal(size=(rows, n)) + 0.3 * x


@pytest.mark.parametrize("increasing", [True, False])
def test_equals_a_hand_written_pava_on_many_random_rows(increasing):
    """Catches a wrong max-min formula (min and max swapped, j or k ranges off by one), tie
    groups split (their fits differ) and rows mixed up by the vectorisation."""
    x, y = _random(400, 11, seed=1)
    xs, fit = isotonic(x, y, increasing)
    for r in range(len(x)):
        want_x, want = pava(x[r], y[r], increasing)
        np.testing.assert_array_equal(xs[r], want_x)
        np.testing.assert_allclose(fit[r], want, atol=1e-12)


@pytest.mark.parametrize("increasing", [True, False])
def test_reading_equals_sklearn_predict(increasing):
    """Catches interpolation other than sklearn's (nearest point, step function), ties not
    pooled as sklearn pools them, and extrapolation outside [min x, max x] (sklearn with
    out_of_bounds="nan" gives NaN there)."""
    sk = pytest.importorskip("sklearn.isotonic")
    x, y = _random(60, 9, seed=2)
    x[: len(x) // 2] += np.random.default_rng(3).normal(scale=0.1, size=(len(x) // 2, 9))
    levels = np.linspace(-0.5, 4.5, 21)
    got = np.stack([isotonic_at(x, y, level, increasing) for level in levels], axis=1)
    for r in range(len(x)):
        model = sk.IsotonicRegression(increasing=increasing, out_of_bounds="nan").fit(x[r], y[r])
        np.testing.assert_allclose(got[r], model.predict(levels), atol=1e-12, equal_nan=True)


def test_known_answer():
    """y 1, 3, 2, 4 at x 0..3: the violators 3, 2 pool to 2.5; read at 1.5 (inside the pooled
    block) 2.5, at 2.5 halfway from 2.5 to 4. Catches no pooling (3 -> 2 kept) and pooling
    the whole row (mean 2.5 everywhere)."""
    xs, fit = isotonic([3.0, 0.0, 2.0, 1.0], [4.0, 1.0, 2.0, 3.0])  # unsorted input
    np.testing.assert_array_equal(xs, [0, 1, 2, 3])
    np.testing.assert_allclose(fit, [1.0, 2.5, 2.5, 4.0])
    assert float(value_at(xs, fit, 1.5)) == pytest.approx(2.5)
    assert float(value_at(xs, fit, 2.5)) == pytest.approx(3.25)
    assert float(value_at(xs, fit, 3.0)) == pytest.approx(4.0)  # the last point itself


def test_ties_in_x_share_one_fitted_value():
    """Two points at x 1 with y 0 and 4 (an increasing pair in input order) are pooled to 2
    before the fit. Catches ties ordered by input order and fitted as distinct points (0 then
    4, which is already monotone)."""
    xs, fit = isotonic([0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 4.0, 5.0])
    np.testing.assert_allclose(fit, [1.0, 2.0, 2.0, 5.0])
    assert float(value_at(xs, fit, 1.0)) == pytest.approx(2.0)


def test_output_is_monotone_and_monotone_data_is_unchanged():
    """Catches a fit that only smooths (violations left) and one that moves data already in
    order (e.g. a global mean or a regression line)."""
    x, y = _random(300, 15, seed=4, ties=False)
    xs, fit = isotonic(x, y)
    assert (np.diff(fit, axis=1) >= -1e-12).all()
    _, down = isotonic(x, y, increasing=False)
    assert (np.diff(down, axis=1) <= 1e-12).all()
    ys = np.sort(y, axis=1)
    xs2, fit2 = isotonic(np.sort(x, axis=1), ys)
    np.testing.assert_allclose(fit2, ys, atol=1e-12)
    _, fit3 = isotonic(np.sort(x, axis=1), ys[:, ::-1], increasing=False)
    np.testing.assert_allclose(fit3, ys[:, ::-1], atol=1e-12)


def test_decreasing_direction_is_the_mirror():
    """The non-increasing fit of y is minus the non-decreasing fit of -y. Catches a
    ``increasing`` flag ignored (then 1, 2 stays 1, 2 instead of pooling to 1.5)."""
    x, y = _random(50, 8, seed=5)
    np.testing.assert_allclose(isotonic(x, y, False)[1], -isotonic(x, -y)[1], atol=1e-12)
    assert isotonic([0.0, 1.0], [1.0, 2.0], increasing=False)[1] == pytest.approx([1.5, 1.5])


def test_nan_outside_the_range_and_for_rows_with_nan():
    """Catches extrapolation (a constant or linear continuation beyond the points), one row's
    range used for all, and a NaN in one row leaking into the others."""
    x = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, 10.0], [1.0, 2.0, np.nan]])
    y = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    xs, fit = isotonic(x, y)
    np.testing.assert_allclose(value_at(xs, fit, 4.0), [np.nan, 0.8, np.nan], equal_nan=True)
    np.testing.assert_allclose(value_at(xs, fit, 0.5), [np.nan, 0.1, np.nan], equal_nan=True)
    np.testing.assert_allclose(value_at(xs, fit, 1.0), [1.0, 0.2, np.nan], equal_nan=True)
    assert np.isnan(fit[2]).all() and not np.isnan(fit[:2]).any()
    assert np.isnan(float(isotonic_at([2.0], [1.0], 3.0)))
    assert float(isotonic_at([2.0], [1.0], 2.0)) == 1.0  # one point: defined at it only


def test_blocks_of_rows_give_the_same_answer(monkeypatch):
    """Catches a block loop that drops or shifts rows at block edges."""
    import stages.lib.monotone as monotone

    x, y = _random(37, 6, seed=6)
    whole = isotonic(x, y)[1]
    monkeypatch.setattr(monotone, "BLOCK", 5 * 36)  # 5 rows per block, the last one short
    np.testing.assert_array_equal(isotonic(x, y)[1], whole)
