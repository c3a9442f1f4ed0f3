"""Curves in KL and the matched-KL comparison (the ``frontier`` stage's statistics): a family's
points (runs' bootstrap estimates) as a :class:`Curve`, read at KL levels by one of two fits,
with coverage, intervals and paired differences against a baseline curve::

    at = interpolate(kl_reps, reward_reps, 4.0)       # [B] values at KL 4 (NaN: out of range)
    levels, how = kl_levels({"a": (1.0, 5.0), "b": (2.0, 6.0)})   # 2.75, 3.5, 4.25
    c = curve("sigmoid-reverse_kl", 3, [est["dpo"], ...], ["reward", ...])  # est: runs.estimate
    rows = matched_kl(curves, "sigmoid-reverse_kl", levels, ["reward"], fit="isotonic")

**Matched KL**, two fits (:data:`FITS`). ``linear``: at a KL level L, a family's value is read
off its curve of seed-mean points (one per variant), piecewise linear in KL between the two
points whose KL brackets L, the points ordered by KL (which is β order where KL falls
monotonically with β; where it does not, KL order keeps the curve a function of KL). The same
interpolation runs inside every bootstrap replicate on that replicate's points (KL and value
both resampled), which gives the 95% interval. ``isotonic``: per seed, the least-squares
monotone fit of the measure in KL through that seed's points (:mod:`stages.lib.monotone`), read
at L by linear interpolation between fitted values, then the mean over seeds; in each replicate
every original seed's points on the resampled prompts (:func:`add_seed_replicates`) are fitted
so, read at L and averaged over the replicate's resampled seeds. The direction per family and
measure is the sign of Spearman's ρ over the pooled per-seed points (0: non-decreasing), fixed
for every seed and replicate. Either way a replicate whose KL range misses L (isotonic: that of
any of its resampled seeds) gives no value (no extrapolation), the share of replicates with a
value is ``coverage``, and a cell below :data:`MIN_COMPARISON_COVERAGE` is no comparison.
Paired differences against the baseline family use the same replicates (same resampled seeds
and prompts), with a two-sided bootstrap p-value (:func:`bootstrap_p`). A family with fewer
than 2 distinct β gets no value, nor one whose point-estimate KL range misses L (isotonic: the
range every seed's points cover). A trajectory curve (``kind="trajectory"``: SFT, checkpoints
and endpoints) needs 2 points instead of 2 β.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stages.lib.bootstrap import Resamples, interval
from stages.lib.confirm import MIN_COVERAGE, bootstrap_p
from stages.lib.monotone import isotonic, sorted_rows, value_at
from stages.lib.runs import excludes_0

#: The fits of a curve in KL (``frontier.fit``): per-seed isotonic (the primary) or piecewise
#: linear through the seed-mean points; the stage reports both, the other as sensitivity.
FITS = ("isotonic", "linear")
#: Quantiles of the common KL range at which families are compared.
QUANTILES = (0.25, 0.5, 0.75)


# --------------------------------------------------------------------------- interpolation


def interpolate(x, y, level: float) -> np.ndarray:
    """``y`` at ``x = level``, piecewise linear between the points ordered by ``x``, per row of
    ``x``/``y`` ([B, m], or [m] for one curve: returns [B] or a 0-d array); NaN where ``level``
    is outside the row's ``x`` range. Points with equal ``x`` at ``level`` give their mean."""
    one, xs, ys = sorted_rows(x, y)
    out = np.full(xs.shape[0], np.nan)
    inside = (xs[:, 0] <= level) & (level <= xs[:, -1])
    exact = np.isclose(xs, level, rtol=0, atol=1e-12)
    hit = exact.any(1)
    out[hit] = (np.where(exact, ys, 0).sum(1) / np.maximum(exact.sum(1), 1))[hit]
    rows = np.flatnonzero(inside & ~hit)
    if len(rows):
        j = (xs[rows] < level).sum(1)  # xs[j - 1] < level < xs[j]
        x0, x1 = xs[rows, j - 1], xs[rows, j]
        y0, y1 = ys[rows, j - 1], ys[rows, j]
        out[rows] = y0 + (level - x0) / (x1 - x0) * (y1 - y0)
    return out.reshape(()) if one else out


#: The narrowest window of KL levels, as a fraction of the baseline family's KL range, when
#: the families' ranges do not all overlap (three levels a hair apart compare nothing new).
MIN_WIDTH = 0.25


def kl_levels(
    ranges: dict[str, tuple[float, float]], fallback: tuple[float, float] | None = None
) -> tuple[list[float], str]:
    """The :data:`QUANTILES` of the intersection of the families' KL ranges (name -> (min,
    max) of its curve), with a sentence saying how they were chosen. When the ranges do not
    all overlap, or overlap over less than :data:`MIN_WIDTH` of the baseline's range: the
    baseline's range ``fallback`` narrowed by each other family in turn, the largest overlap
    first, skipping any that would leave less than :data:`MIN_WIDTH` of the baseline's range
    (so the levels lie where the baseline meets as many families as a greedy pass finds, and
    stay apart); else none."""
    qs = ", ".join(f"{q:g}" for q in QUANTILES)
    if ranges:
        lo, hi = max(r[0] for r in ranges.values()), min(r[1] for r in ranges.values())
        wide = fallback is None or hi - lo >= MIN_WIDTH * (fallback[1] - fallback[0])
        if hi > lo and wide:
            return [lo + q * (hi - lo) for q in QUANTILES], (
                f"the {qs} quantiles of [{lo:.3f}, {hi:.3f}], the KL range every family with "
                f"at least 2 β values covers ({len(ranges)} families)"
            )
    if fallback is not None and fallback[1] > fallback[0]:
        lo, hi = fallback
        min_width = MIN_WIDTH * (hi - lo)
        by_overlap = sorted(
            ranges.values(), key=lambda r: min(hi, r[1]) - max(lo, r[0]), reverse=True
        )  # overlap with the baseline's whole range, computed before the loop narrows it
        for r in by_overlap:
            if min(hi, r[1]) - max(lo, r[0]) >= min_width:
                lo, hi = max(lo, r[0]), min(hi, r[1])
        shared = [n for n, r in ranges.items() if r[0] <= lo and r[1] >= hi]
        return [lo + q * (hi - lo) for q in QUANTILES], (
            f"the families' KL ranges do not all overlap (over {MIN_WIDTH:g} of the baseline's "
            f"range at least): the {qs} quantiles of "
            f"[{lo:.3f}, {hi:.3f}], the part of the baseline family's range "
            f"[{fallback[0]:.3f}, {fallback[1]:.3f}] that {len(shared)} of the {len(ranges)} "
            f"families with at least 2 β values cover ({', '.join(shared) or 'none'}; a family "
            f"is left out where it would narrow the window below {MIN_WIDTH:g} of that range)"
        )
    return [], "no family has 2 or more β values: no KL level to compare at"


# --------------------------------------------------------------------------- matched KL


@dataclass
class SeedPoints:
    """A curve's points per seed, for the per-seed fits: ``kl`` [S, m] and its bootstrap
    replicates ``kl_reps`` [B, S, m] (each ORIGINAL seed on the replicate's resampled prompts,
    before the seeds are resampled); per metric ``values`` [S, m] and ``reps`` [B, S, m];
    ``draws`` [B, S] the seeds each replicate resampled (:attr:`Resamples.seeds`)."""

    kl: np.ndarray
    kl_reps: np.ndarray
    values: dict[str, np.ndarray]
    reps: dict[str, np.ndarray]
    draws: np.ndarray


@dataclass
class Curve:
    """One family's points (or the best-of-n baseline's): KL and each metric, as point
    estimates [m] and bootstrap replicates [B, m] on common resamples; ``seeds`` the same per
    seed (needed by the isotonic fit); ``kind`` ``beta`` (a β curve: a curve from 2 distinct β)
    or ``trajectory`` (SFT, checkpoints and endpoints: a curve from 2 points)."""

    name: str
    n_betas: int
    kl: np.ndarray
    kl_reps: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    reps: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: SeedPoints | None = None
    kind: str = "beta"
    _fits: dict = field(default_factory=dict, repr=False)

    @property
    def kl_range(self) -> tuple[float, float]:
        return float(self.kl.min()), float(self.kl.max())

    @property
    def is_curve(self) -> bool:
        """Enough points for a curve (else no matched value)."""
        return self.n_betas >= 2 if self.kind == "beta" else len(self.kl) >= 2

    @property
    def short(self) -> str:
        """Why a non-curve has no matched value."""
        return "fewer than 2 β values" if self.kind == "beta" else "fewer than 2 points"

    def range(self, fit: str) -> tuple[float, float]:
        """Where the point estimate is defined: the seed-mean points' KL range (``linear``) or
        the range every seed's points cover (``isotonic``)."""
        if fit == "linear":
            return self.kl_range
        kl = self._seeds().kl
        return float(kl.min(1).max()), float(kl.max(1).min())

    def first_point(self, fit: str) -> float:
        """A trajectory curve's KL below which a value is read on the straight line from the
        SFT policy (its first point, KL 0) to its next point, in some seed (``isotonic``) or on
        the seed-mean points (``linear``): an interpolation, not a measurement. 0 for a β curve
        and for any curve that does not start at the SFT policy."""
        if self.kind == "beta" or len(self.kl) < 2 or self.kl.min() != 0.0:
            return 0.0
        if fit == "linear":
            return float(np.sort(self.kl)[1])
        return float(np.sort(self._seeds().kl, axis=1)[:, 1].max())

    def covers(self, level: float, fit: str) -> bool:
        lo, hi = self.range(fit)
        return self.is_curve and lo <= level <= hi

    def _seeds(self) -> SeedPoints:
        if self.seeds is None:
            raise ValueError(f"curve {self.name!r}: the isotonic fit needs its per-seed points")
        return self.seeds

    def direction(self, metric: str) -> int:
        """+1 (non-decreasing) or -1: the sign of Spearman's rank correlation between KL and
        ``metric`` over the pooled per-seed points (0 -> +1), fixed for every seed and
        replicate."""
        sp = self._seeds()
        return -1 if spearman(sp.kl.ravel(), sp.values[metric].ravel()) < 0 else 1

    def seed_fit(self, metric: str) -> tuple:
        """The per-seed isotonic fits of ``metric`` in KL: ``(full, reps)``, each ``(xs,
        fit)`` of :func:`stages.lib.monotone.isotonic`: [S, m] on the full data, [B * S, m]
        per (replicate, seed); computed once per metric (the level only reads them)."""
        if metric not in self._fits:
            sp, up = self._seeds(), self.direction(metric) > 0
            b, s, m = sp.reps[metric].shape
            full = isotonic(sp.kl, sp.values[metric], up)
            reps = isotonic(sp.kl_reps.reshape(b * s, m), sp.reps[metric].reshape(b * s, m), up)
            self._fits[metric] = (full, reps)
        return self._fits[metric]


def curve(
    name: str, n_betas: int, points: list[dict], metrics: list[str], kind: str = "beta"
) -> Curve:
    """A :class:`Curve` through the estimates of ``points`` (one per variant or n, each
    :func:`stages.lib.runs.estimate`'s dict with ``kl``); a metric some point lacks is left
    out (best-of-n has no entropy or quality). Where every point also has per-seed
    replicates (:func:`add_seed_replicates`), the curve gets its :class:`SeedPoints`."""
    c = Curve(
        name,
        n_betas,
        np.array([p["kl"]["value"] for p in points]),
        np.stack([p["kl"]["reps"] for p in points], axis=1),
        kind=kind,
    )
    for m in metrics:
        if all(m in p for p in points):
            c.values[m] = np.array([p[m]["value"] for p in points])
            c.reps[m] = np.stack([p[m]["reps"] for p in points], axis=1)
    if all("seed_reps" in p[m] for p in points for m in ("kl", *c.values)):
        draws = points[0]["kl"]["draws"]

        def per_seed(m):
            return np.stack([p[m]["seeds"] for p in points], axis=1)

        def per_rep(m):
            return np.stack([p[m]["seed_reps"] for p in points], axis=2)

        c.seeds = SeedPoints(
            per_seed("kl"),
            per_rep("kl"),
            {m: per_seed(m) for m in c.values},
            {m: per_rep(m) for m in c.values},
            draws,
        )
    return c


def add_seed_replicates(est: dict, num: dict, den: dict, draws: Resamples, sets=None) -> dict:
    """Add to each metric of ``est`` (:func:`stages.lib.runs.estimate` of ``num``/``den``
    [S, P] and ``sets`` [S, N, P]) ``seed_reps`` [B, S]: every original seed's value on each
    replicate's resampled prompts (set metrics: reference points), computed as
    :func:`stages.lib.bootstrap.replicates` and ``set_replicates`` do before they average over
    the replicate's resampled seeds; and ``draws`` (those seeds, [B, S]). Returns ``est``."""
    s = len(draws.seeds[0])
    names = list(num)
    if names:  # one product for every metric: [B, P] @ [P, M * S]
        w = draws.prompt_weights
        ratio = (w @ np.concatenate([num[m] for m in names]).T) / (
            w @ np.concatenate([den[m] for m in names]).T
        )
        for i, m in enumerate(names):
            est[m].update(seed_reps=ratio[:, i * s : (i + 1) * s], draws=draws.seeds)
    by_size: dict[int, list[str]] = {}
    for m, hits in (sets or {}).items():
        by_size.setdefault(hits.shape[1], []).append(m)
    for n, names in by_size.items():  # reference points drawn once per set size, as the estimate
        pw = draws.point_weights(n)  # [B, N]
        union = np.concatenate([sets[m].any(axis=2) for m in names]).astype(np.float64)
        share = (pw @ union.T) / pw.sum(1, keepdims=True)  # [B, M * S]
        for i, m in enumerate(names):
            est[m].update(seed_reps=share[:, i * s : (i + 1) * s], draws=draws.seeds)
    return est


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 where either is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else 0.0


def _ranks(v: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based mean rank of each value
    return mean_rank[inverse]


def _at(curve: Curve, metric: str, level: float, fit: str) -> tuple[float, np.ndarray]:
    """``metric`` at KL ``level``: the point estimate and the [B] replicates (NaN: no value)."""
    if fit == "linear":
        value = float(interpolate(curve.kl, curve.values[metric], level))
        return value, interpolate(curve.kl_reps, curve.reps[metric], level)
    (xs, fit_), (rxs, rfit) = curve.seed_fit(metric)
    draws = curve.seeds.draws
    value = float(value_at(xs, fit_, level).mean())  # NaN unless every seed covers the level
    per_seed = value_at(rxs, rfit, level).reshape(draws.shape)  # [B, S] original seeds
    return value, np.take_along_axis(per_seed, draws, axis=1).mean(1)


def fitted(curve: Curve, metric: str, grid, fit: str) -> np.ndarray:
    """The point estimate of ``metric`` at each KL of ``grid`` under ``fit`` (NaN outside the
    range where it is defined): the curve a plot draws."""
    if fit == "linear":
        return np.array([float(interpolate(curve.kl, curve.values[metric], g)) for g in grid])
    (xs, fit_), _ = curve.seed_fit(metric)
    return np.array([value_at(xs, fit_, g).mean() for g in grid])


#: The status of a row whose KL level lies outside the curve's range.
OUTSIDE = "KL level outside the family's range"
#: The share of bootstrap replicates in which a cell has a value (a Δ cell: both curves reach
#: the KL level) for it to count as a comparison (issue 29: cells below it are "not compared";
#: below 1.0 they carry †): the confirmatory analysis's own threshold, one number.
MIN_COMPARISON_COVERAGE = MIN_COVERAGE


def matched_row(
    curve: Curve, base: Curve | None, level: float, metrics: list[str], fit: str = "linear"
) -> dict:
    """One family at one KL level under ``fit`` (:data:`FITS`): ``status`` ("ok" or why
    there is no value) and per metric the value, its 95% interval, ``coverage`` (the isotonic
    fit's ``direction`` too) and the paired difference against ``base`` with its coverage and
    bootstrap p-value (:func:`bootstrap_p`)."""
    if fit not in FITS:
        raise ValueError(f"fit: must be one of {', '.join(FITS)}, got {fit!r}")
    row = {"family": curve.name, "n_betas": curve.n_betas, "kl": level, "fit": fit}
    if not curve.is_curve:
        lo, hi = curve.kl_range
        return {**row, "kl_min": lo, "kl_max": hi, "status": curve.short}
    lo, hi = curve.range(fit)
    row.update(kl_min=lo, kl_max=hi)
    if not lo <= level <= hi:
        return {**row, "status": OUTSIDE}
    row["status"] = "ok"
    row["sft_chord"] = level < curve.first_point(fit)
    for m in metrics:
        if m not in curve.values:
            continue
        value, reps = _at(curve, m, level, fit)
        ok = ~np.isnan(reps)
        row[m], row[f"{m}_coverage"] = value, float(ok.mean())
        row[f"{m}_lo"], row[f"{m}_hi"] = interval(reps[ok]) if ok.any() else (math.nan,) * 2
        if fit == "isotonic":
            row[f"{m}_direction"] = curve.direction(m)
        if base is None or m not in base.values or not base.covers(level, fit):
            continue
        b_value, b_reps = _at(base, m, level, fit)
        d, both = reps - b_reps, ok & ~np.isnan(b_reps)
        if not both.any():
            continue
        lo, hi = interval(d[both])
        row.update({f"d_{m}": value - b_value, f"d_{m}_lo": lo, f"d_{m}_hi": hi})
        row[f"d_{m}_coverage"] = coverage = float(both.mean())
        row[f"d_{m}_p"] = bootstrap_p(d[both])
        # a difference whose level leaves either range in >= 10% of the replicates is no
        # comparison: its interval rests on the replicates where both curves reach the level
        row[f"d_{m}_excludes_0"] = coverage >= MIN_COMPARISON_COVERAGE and excludes_0(lo, hi)
    return row


def matched_kl(
    curves: list[Curve], base: str, levels: list[float], metrics: list[str], fit: str = "linear"
) -> list[dict]:
    """:func:`matched_row` for every level and curve (levels outer), differences against the
    curve named ``base``."""
    by = {c.name: c for c in curves}
    if base not in by:
        raise ValueError(f"baseline curve {base!r} is not among {', '.join(by)}")
    return [matched_row(c, by[base], level, metrics, fit) for level in levels for c in curves]
