"""The ``frontier`` stage's compute: β families, Pareto envelopes and the matched-KL comparison.

Pure functions (numpy, and the variants' loss settings read through
:mod:`stages.lib.variants`); :mod:`stages.frontier` reads the runs (:mod:`stages.lib.runs`) and
writes the tables and plots::

    fams = group_families({"dpo": {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.3,
                                   "alpha": None, "curriculum": "shuffle"}, ...})
    front = pareto_front(kl, reward)                  # indices of the non-dominated points
    at = interpolate(kl_reps, reward_reps, 4.0)       # [B] values at KL 4 (NaN: out of range)
    levels, how = kl_levels({"a": (1.0, 5.0), "b": (2.0, 6.0)})   # 2.75, 3.5, 4.25
    c = curve("sigmoid-reverse_kl", 3, [est["dpo"], ...], ["reward", ...])  # est: runs.estimate
    groups = quality_groups(["precision_tfidf_all", "recall_tfidf_all", ...])  # per space+set

**Families.** A family is every variant whose settings agree in everything but β: the loss
settings of :class:`stages.lib.variants.LossConfig` (loss, divergence, alpha, sft_weight,
label_smoothing, margin, sft_reduction) and the prompt order ``curriculum`` (a curriculum run is
another method, not another point of DPO's curve). Other training overrides (learning rate,
epochs) are tuning of a point and do not split a family. Its points, ordered by KL, form the family's β curve.

**Matched KL.** At a KL level L, a family's value is read off its curve of seed-mean points
(one per variant), piecewise linear in KL between the two points whose KL brackets L, the points
ordered by KL (which is β order where KL falls monotonically with β; where it does not, KL order
keeps the curve a function of KL). The same interpolation runs inside every bootstrap replicate
on that replicate's points (KL and value both resampled), which gives the 95% interval; a
replicate whose KL range misses L gives no value (no extrapolation) and the share of replicates
with a value is reported as ``coverage``. Paired differences against the baseline family use
the same replicates (same resampled seeds and prompts). A family with fewer than 2 distinct β
or whose point-estimate KL range misses L gets no value.

**Quality–diversity.** The k-NN measures of :data:`QUALITY_MEASURES` (``<measure>_<space>_<set>``
of :mod:`stages.lib.runs`: precision and density per-prompt ratios, recall and coverage
fractions of a reference set bootstrapped as sets) ride the same curves: interpolated per
replicate like reward, paired against the baseline the same way. Which spaces and sets exist is
read off the metric names (:func:`quality_metrics`); best-of-n has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stages.lib.bootstrap import interval
from stages.lib.runs import Run, excludes_0
from stages.lib.variants import LOSS_KEYS, default_sft_reduction, read_variants

#: Settings that define a family besides the loss (all of them, minus β, define it).
FAMILY_EXTRA = ("curriculum",)
#: Quantiles of the common KL range at which families are compared.
QUANTILES = (0.25, 0.5, 0.75)
#: The k-NN quality–diversity measures compared along the curves, in table order (their metric
#: names are ``<measure>_<space>_<set>``: :func:`stages.lib.quality.metric_name`).
QUALITY_MEASURES = ("precision", "recall", "density", "coverage")


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """Variants that differ only in β: ``name`` (a slug of the settings), the ``settings`` they
    share, their ``variants`` (params order) and each one's ``betas`` (None: a loss without β)."""

    name: str
    settings: tuple
    variants: tuple[str, ...]
    betas: tuple[float | None, ...]

    @property
    def n_betas(self) -> int:
        """Distinct β values (a loss without β counts as none)."""
        return len({b for b in self.betas if b is not None})


def _num(v) -> str:
    return f"{v:g}".replace(".", "_").replace("-", "m")


def family_name(settings: dict) -> str:
    """A slug of a family's settings: ``sigmoid-reverse_kl``, ``sigmoid-alpha-0_3``,
    ``sigmoid-reverse_kl-sft1-easy_to_hard``, ``slic_hf-margin1-sft1``, ``rrhf-sft1-mean`` (an
    SFT reduction other than the loss's default); no dots, so it is a dvc metrics key."""
    parts = [settings["loss"]]
    if settings.get("divergence"):
        parts.append(settings["divergence"])
    if settings.get("alpha") is not None:
        parts.append(_num(settings["alpha"]))
    if settings.get("margin") is not None:
        parts.append(f"margin{_num(settings['margin'])}")
    if settings.get("sft_weight"):
        parts.append(f"sft{_num(settings['sft_weight'])}")
        reduction = settings.get("sft_reduction")
        if reduction and reduction != default_sft_reduction(settings["loss"]):
            parts.append(str(reduction))
    if settings.get("label_smoothing"):
        parts.append(f"ls{_num(settings['label_smoothing'])}")
    known = {
        "loss",
        "divergence",
        "alpha",
        "margin",
        "sft_weight",
        "sft_reduction",
        "label_smoothing",
        "curriculum",
        "beta",
    }
    for key in sorted(settings):
        if key not in known and settings[key] not in (None, 0, 0.0, False):
            parts.append(f"{key}{_num(settings[key])}")
    if settings.get("curriculum", "shuffle") != "shuffle":
        parts.append(str(settings["curriculum"]))
    return "-".join(parts)


def variant_settings(params: dict) -> dict[str, dict]:
    """variant -> its loss settings (``LossConfig``, read as the align stage reads them:
    :func:`stages.lib.variants.read_variants`) and curriculum (default ``shuffle``): what
    :func:`group_families` groups by (and β)."""
    out = {}
    for name, variant in read_variants(params).items():
        loss = variant.loss()
        out[name] = {k: getattr(loss, k) for k in LOSS_KEYS}
        out[name]["curriculum"] = variant.settings.get("curriculum", "shuffle")
    return out


def group_families(settings: dict[str, dict]) -> list[Family]:
    """Variants (name -> loss settings with ``beta`` and :data:`FAMILY_EXTRA`) grouped into
    families, in the order of their first variant."""
    groups: dict[tuple, list[str]] = {}
    for name, s in settings.items():
        key = tuple(sorted((k, v) for k, v in s.items() if k != "beta"))
        groups.setdefault(key, []).append(name)
    out = []
    for key, names in groups.items():
        betas = tuple(settings[n].get("beta") for n in names)
        out.append(Family(family_name(dict(key)), key, tuple(names), betas))
    seen: dict[str, int] = {}
    for i, fam in enumerate(out):  # a clash only if FAMILY_EXTRA-like keys print alike
        if fam.name in seen:
            out[i] = Family(f"{fam.name}-{i}", fam.settings, fam.variants, fam.betas)
        seen[fam.name] = i
    return out


# --------------------------------------------------------------------------- pareto


def pareto_front(x, y, *, x_higher_better: bool = False) -> list[int]:
    """Indices of the non-dominated points (max ``y``; min ``x``, or max with
    ``x_higher_better``), ordered by x ascending. A point is dominated when another is at least
    as good in both and better in one; of identical points the first is kept."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx = -x if x_higher_better else x
    keep = []
    for i in range(len(x)):
        dominated = False
        for j in range(len(x)):
            if j == i:
                continue
            weak = sx[j] <= sx[i] and y[j] >= y[i]
            strict = sx[j] < sx[i] or y[j] > y[i]
            if weak and (strict or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (x[i], -y[i]))


def point_rows(est: dict, families: list[Family], metrics: list[str]) -> list[dict]:
    """One row per policy (``est``: policy -> :func:`stages.lib.runs.estimate`): family, β,
    the estimates of KL and ``metrics`` with intervals, Pareto flags."""
    where = {v: (f.name, b) for f in families for v, b in zip(f.variants, f.betas)}
    rows = []
    for policy, e in est.items():
        fam, beta = where.get(policy, ("sft", None))
        row = {"policy": policy, "family": fam, "beta": beta}
        for m in ("kl", *metrics):
            if m in e:
                row.update({m: e[m]["value"], f"{m}_lo": e[m]["ci"][0], f"{m}_hi": e[m]["ci"][1]})
        rows.append(row)
    names = [r["policy"] for r in rows]
    for y, x, higher, flag in (
        ("reward", "kl", False, "front_reward_kl"),
        ("gold", "kl", False, "front_gold_kl"),
        ("reward", "entropy", True, "front_reward_entropy"),
    ):
        if all(y in r and x in r for r in rows):
            front = {
                names[i]
                for i in pareto_front(
                    [r[x] for r in rows], [r[y] for r in rows], x_higher_better=higher
                )
            }
            for r in rows:
                r[flag] = r["policy"] in front
    return rows


# --------------------------------------------------------------------------- quality


def _measure(name: str) -> tuple[str, str] | None:
    """(measure, ``<space>_<set>``) of a quality metric name, or None for another metric."""
    for m in QUALITY_MEASURES:
        if name.startswith(f"{m}_") and len(name) > len(m) + 1:
            return m, name[len(m) + 1 :]
    return None


def quality_metrics(runs: list[Run]) -> list[str]:
    """The quality metrics every run has (ratios in ``num``, set fractions in ``sets``),
    grouped per space and reference set (first-seen order) and :data:`QUALITY_MEASURES`
    order within a group; [] for runs without ``quality`` fields."""
    names = [m for m in (*runs[0].num, *runs[0].sets) if _measure(m)]
    shared = [m for m in names if all(m in r.num or m in r.sets for r in runs)]
    return [m for _, group in quality_groups(shared) for m in group]


def quality_groups(metrics) -> list[tuple[str, list[str]]]:
    """``<space>_<set>`` -> its quality metrics among ``metrics`` (in
    :data:`QUALITY_MEASURES` order), per group in first-seen order; other metrics ignored."""
    groups: dict[str, dict[str, str]] = {}
    for name in metrics:
        found = _measure(name)
        if found:
            groups.setdefault(found[1], {})[found[0]] = name
    return [(g, [by[m] for m in QUALITY_MEASURES if m in by]) for g, by in groups.items()]


# --------------------------------------------------------------------------- interpolation


def interpolate(x, y, level: float) -> np.ndarray:
    """``y`` at ``x = level``, piecewise linear between the points ordered by ``x``, per row of
    ``x``/``y`` ([B, m], or [m] for one curve: returns [B] or a 0-d array); NaN where ``level``
    is outside the row's ``x`` range. Points with equal ``x`` at ``level`` give their mean."""
    one = np.ndim(x) == 1
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    if x.shape != y.shape or x.shape[1] < 1:
        raise ValueError(f"x {x.shape} and y {y.shape} must be equal, non-empty shapes")
    order = np.argsort(x, axis=1, kind="stable")
    xs, ys = np.take_along_axis(x, order, 1), np.take_along_axis(y, order, 1)
    out = np.full(x.shape[0], np.nan)
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
class Curve:
    """One family's points (or the best-of-n baseline's): KL and each metric, as point
    estimates [m] and bootstrap replicates [B, m] on common resamples."""

    name: str
    n_betas: int
    kl: np.ndarray
    kl_reps: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    reps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kl_range(self) -> tuple[float, float]:
        return float(self.kl.min()), float(self.kl.max())


def curve(name: str, n_betas: int, points: list[dict], metrics: list[str]) -> Curve:
    """A :class:`Curve` through the estimates of ``points`` (one per variant or n, each
    :func:`stages.lib.runs.estimate`'s dict with ``kl``); a metric some point lacks is left
    out (best-of-n has no entropy or quality)."""
    c = Curve(
        name,
        n_betas,
        np.array([p["kl"]["value"] for p in points]),
        np.stack([p["kl"]["reps"] for p in points], axis=1),
    )
    for m in metrics:
        if all(m in p for p in points):
            c.values[m] = np.array([p[m]["value"] for p in points])
            c.reps[m] = np.stack([p[m]["reps"] for p in points], axis=1)
    return c


def _at(curve: Curve, metric: str, level: float) -> tuple[float, np.ndarray]:
    value = float(interpolate(curve.kl, curve.values[metric], level))
    return value, interpolate(curve.kl_reps, curve.reps[metric], level)


#: The share of bootstrap replicates in which both curves must reach a KL level for their
#: paired difference to count as a comparison (issue 29: cells below 0.9 are not reported as
#: comparisons; below 1.0 they carry †).
MIN_COMPARISON_COVERAGE = 0.9


def matched_row(curve: Curve, base: Curve | None, level: float, metrics: list[str]) -> dict:
    """One family at one KL level: ``status`` ("ok" or why there is no value) and per metric
    the value, its 95% interval, ``coverage`` and the paired difference against ``base``."""
    row = {"family": curve.name, "n_betas": curve.n_betas, "kl": level}
    row.update(kl_min=curve.kl_range[0], kl_max=curve.kl_range[1])
    if curve.n_betas < 2:
        return {**row, "status": "fewer than 2 β values"}
    if not curve.kl_range[0] <= level <= curve.kl_range[1]:
        return {**row, "status": "KL level outside the family's range"}
    row["status"] = "ok"
    for m in metrics:
        if m not in curve.values:
            continue
        value, reps = _at(curve, m, level)
        ok = ~np.isnan(reps)
        row[m], row[f"{m}_coverage"] = value, float(ok.mean())
        row[f"{m}_lo"], row[f"{m}_hi"] = interval(reps[ok]) if ok.any() else (math.nan,) * 2
        if base is None or m not in base.values or not _inside(base, level):
            continue
        b_value, b_reps = _at(base, m, level)
        d, both = reps - b_reps, ok & ~np.isnan(b_reps)
        if not both.any():
            continue
        lo, hi = interval(d[both])
        row.update({f"d_{m}": value - b_value, f"d_{m}_lo": lo, f"d_{m}_hi": hi})
        row[f"d_{m}_coverage"] = coverage = float(both.mean())
        # a difference whose level leaves either range in >= 10% of the replicates is no
        # comparison: its interval rests on the replicates where both curves reach the level
        row[f"d_{m}_excludes_0"] = coverage >= MIN_COMPARISON_COVERAGE and excludes_0(lo, hi)
    return row


def _inside(curve: Curve, level: float) -> bool:
    return curve.n_betas >= 2 and curve.kl_range[0] <= level <= curve.kl_range[1]


def matched_kl(
    curves: list[Curve], base: str, levels: list[float], metrics: list[str]
) -> list[dict]:
    """:func:`matched_row` for every level and curve (levels outer), differences against the
    curve named ``base``."""
    by = {c.name: c for c in curves}
    if base not in by:
        raise ValueError(f"baseline curve {base!r} is not among {', '.join(by)}")
    return [matched_row(c, by[base], level, metrics) for level in levels for c in curves]
