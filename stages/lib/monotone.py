"""Isotonic regression of many small problems at once, and reading a fit at a level.

Each row of ``x``/``y`` ([R, N], N up to a few dozen points) is one problem: the least-squares
non-decreasing (or non-increasing) fit of ``y`` in ``x`` order, tied ``x`` pooled (their fitted
values are equal), computed for every row together from cumulative sums with the max-min
formula fit_i = max_{j <= i} min_{k >= i} mean(y[j..k]) (j a tie group's first point, k a
group's last): O(N²) memory per row, no loop over rows::

    xs, fit = isotonic(kl, reward)                 # [R, N] each, sorted by x
    at = value_at(xs, fit, 4.0)                    # [R]: NaN where 4 is outside a row's x range
    at = isotonic_at(kl, entropy, 4.0, increasing=False)

:func:`value_at` interpolates linearly between the fitted values at the sorted ``x`` (as
scikit-learn's ``IsotonicRegression.predict`` does) and never extrapolates.
"""

from __future__ import annotations

import numpy as np

#: Rows per block times N² stays below this (bounds the [rows, N, N] temporaries to ~32 MB).
BLOCK = 1 << 22


def _fit(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The non-decreasing fit of rows of ``ys`` whose ``xs`` are sorted (ties pooled)."""
    rows, n = ys.shape
    csum = np.concatenate([np.zeros((rows, 1)), np.cumsum(ys, axis=1)], axis=1)
    j, k = np.arange(n)[:, None], np.arange(n)[None, :]
    # mean[r, j, k] = mean of ys[r, j..k] (j <= k)
    mean = (csum[:, None, 1:] - csum[:, :-1, None]) / np.maximum(k - j + 1, 1)
    new = xs[:, 1:] != xs[:, :-1]
    start = np.concatenate([np.ones((rows, 1), bool), new], axis=1)  # first point of a tie group
    end = np.concatenate([new, np.ones((rows, 1), bool)], axis=1)  # last point of a tie group
    mean = np.where((k >= j) & end[:, None, :], mean, np.inf)
    # upper[r, j, i] = min over group ends k >= i of mean[r, j, k]
    upper = np.minimum.accumulate(mean[:, :, ::-1], axis=2)[:, :, ::-1]
    upper = np.where((j <= k) & start[:, :, None], upper, -np.inf)  # here k plays i
    return upper.max(axis=1)


def sorted_rows(x, y) -> tuple[bool, np.ndarray, np.ndarray]:
    """``(one, xs, ys)``: ``x``, ``y`` ([R, N], or [N] for one problem: ``one``) as float rows
    sorted by ``x`` (stable), or a ``ValueError`` for unequal or empty shapes."""
    one = np.ndim(x) == 1
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    if x.shape != y.shape or x.shape[1] < 1:
        raise ValueError(f"x {x.shape} and y {y.shape} must be equal, non-empty shapes")
    order = np.argsort(x, axis=1, kind="stable")
    return one, np.take_along_axis(x, order, 1), np.take_along_axis(y, order, 1)


def isotonic(x, y, increasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, fit)``: per row of ``x``, ``y`` ([R, N], or [N] for one problem), the ``x``
    sorted (stable) and the least-squares non-decreasing fit of ``y`` in that order
    (non-increasing with ``increasing=False``); tied ``x`` share one fitted value. A row
    holding a NaN gets a NaN fit."""
    one, xs, ys = sorted_rows(x, y)
    sign = 1.0 if increasing else -1.0
    fit = np.empty_like(ys)
    step = max(1, BLOCK // xs.shape[1] ** 2)
    for lo in range(0, len(xs), step):
        fit[lo : lo + step] = sign * _fit(xs[lo : lo + step], sign * ys[lo : lo + step])
    bad = np.isnan(xs).any(1) | np.isnan(ys).any(1)
    fit[bad] = np.nan
    return (xs[0], fit[0]) if one else (xs, fit)


def value_at(xs, fit, level: float) -> np.ndarray:
    """Per row, the fit at ``x = level``: linear between the fitted values at the sorted
    ``xs`` bracketing it ([R, N] -> [R]; [N] -> a 0-d array); NaN where ``level`` lies outside
    the row's [min x, max x] (no extrapolation) or the row is NaN."""
    one = np.ndim(xs) == 1
    xs, fit = np.atleast_2d(np.asarray(xs, dtype=float)), np.atleast_2d(np.asarray(fit, float))
    out = np.full(len(xs), np.nan)
    inside = (xs[:, 0] <= level) & (level <= xs[:, -1]) & ~np.isnan(fit).any(1)
    rows = np.flatnonzero(inside)
    if xs.shape[1] == 1:
        out[rows] = fit[rows, 0]
    elif len(rows):
        j = np.clip((xs[rows] < level).sum(1), 1, xs.shape[1] - 1)  # xs[j - 1] < level <= xs[j]
        x0, x1 = xs[rows, j - 1], xs[rows, j]
        y0, y1 = fit[rows, j - 1], fit[rows, j]
        t = np.divide(level - x0, x1 - x0, out=np.zeros(len(rows)), where=x1 > x0)
        out[rows] = y0 + t * (y1 - y0)
    return out.reshape(()) if one else out


def isotonic_at(x, y, level: float, increasing: bool = True) -> np.ndarray:
    """:func:`isotonic` of each row read at ``level`` by :func:`value_at`."""
    return value_at(*isotonic(x, y, increasing), level)
