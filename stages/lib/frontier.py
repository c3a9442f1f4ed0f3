"""The ``frontier`` stage's compute: β families, their config and Pareto envelopes (the
matched-KL statistics are :mod:`stages.lib.matched_kl`'s).

Pure functions (numpy, and the variants' loss settings read through
:mod:`stages.lib.variants`); :mod:`stages.frontier` reads the runs (:mod:`stages.lib.runs`) and
writes the tables and plots::

    fams = group_families({"dpo": {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.3,
                                   "alpha": None, "curriculum": "shuffle"}, ...})
    front = pareto_front(kl, reward)                  # indices of the non-dominated points
    groups = quality_groups(["precision_tfidf_all", "recall_tfidf_all", ...])  # per space+set

**Families.** A family is every variant whose settings agree in everything but β: the loss
settings of :class:`stages.lib.variants.LossConfig` (loss, divergence, alpha, sft_weight,
label_smoothing, margin, sft_reduction) and the prompt order ``curriculum`` (a curriculum run is
another method, not another point of DPO's curve), and the pairing strategy ``pairs`` (another
pairing is another method). Other training overrides (learning rate, epochs) are tuning of a
point and do not split a family, nor do the ``checkpoints`` a run is saved at. Its points,
ordered by KL, form the family's β curve.

**Matched KL**: the curves, fits and matched-KL rows are :mod:`stages.lib.matched_kl`'s.

**Quality–diversity.** The k-NN measures of :data:`QUALITY_MEASURES` (``<measure>_<space>_<set>``
of :mod:`stages.lib.runs`: precision and density per-prompt ratios, recall and coverage
fractions of a reference set bootstrapped as sets) ride the same curves: interpolated per
replicate like reward, paired against the baseline the same way. Which spaces and sets exist is
read off the metric names (:func:`quality_metrics`); best-of-n has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.lib.config import ReportConfig, param, read_section
from stages.lib.matched_kl import FITS
from stages.lib.runs import Run
from stages.lib.variants import LOSS_KEYS, default_sft_reduction, read_variants

#: Settings that define a family besides the loss (all of them, minus β, define it): the prompt
#: order and the pairing strategy a variant trains on (``pairs``: another pairing is another
#: method). ``checkpoints`` (where a run is also saved) never splits a family.
FAMILY_EXTRA = ("curriculum", "pairs")
#: Settings that never define a family: β (the curve's knob) and the checkpoint steps.
NOT_FAMILY = ("beta", "checkpoints")
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
        "pairs",
        *NOT_FAMILY,
    }
    for key in sorted(settings):
        if key not in known and settings[key] not in (None, 0, 0.0, False):
            parts.append(f"{key}{_num(settings[key])}")
    if settings.get("curriculum", "shuffle") != "shuffle":
        parts.append(str(settings["curriculum"]))
    if settings.get("pairs"):
        parts.append(f"pairs_{settings['pairs']}")
    return "-".join(parts)


def variant_settings(params: dict) -> dict[str, dict]:
    """variant -> its loss settings (``LossConfig``, read as the align stage reads them:
    :func:`stages.lib.variants.read_variants`), curriculum (default ``shuffle``) and pairing
    strategy ``pairs`` (default None: the pairs of data/preferences.jsonl): what
    :func:`group_families` groups by (and β)."""
    out = {}
    for name, variant in read_variants(params).items():
        loss = variant.loss()
        out[name] = {k: getattr(loss, k) for k in LOSS_KEYS}
        out[name]["curriculum"] = variant.settings.get("curriculum", "shuffle")
        out[name]["pairs"] = variant.settings.get("pairs")
    return out


def variant_checkpoints(params: dict) -> dict[str, list[int]]:
    """variant -> its ``checkpoints`` (``align.common``, overridden by the variant's own;
    [] where none): the runs whose trajectory ``evaluate`` writes."""
    return {n: list(v.settings.get("checkpoints") or []) for n, v in read_variants(params).items()}


@dataclass(frozen=True)
class FrontierConfig(ReportConfig):
    """``frontier``: :class:`stages.lib.config.ReportConfig`'s keys and the curve ``fit``."""

    fit: str = param(
        "how a family's curve in KL is fitted: isotonic (per seed, monotone, averaged over "
        "seeds) or linear (through the seed-mean points); the other is reported too",
        FITS[0],
        check=lambda v: v in FITS,
        must=f"one of {', '.join(FITS)}",
    )
    confirmatory: list[str] = param(
        "variants naming the families of the pre-registered comparisons against the baseline's "
        "family (docs/protocol.md), Holm-corrected; they also set the trajectory's K*",
        (),
        check=lambda v: len(set(v)) == len(v),
        must="a list of distinct variant names",
    )
    k_star_from: list[str] = param(
        "variants naming the families whose curves set the trajectory's K*; [] = the "
        "confirmatory families and the baseline's where confirmatory is set, else every family",
        (),
        check=lambda v: len(set(v)) == len(v),
        must="a list of distinct variant names",
    )
    endpoints: list[str] = param(
        "the primary endpoints of the confirmatory comparisons",
        ("reward", "gold", "entropy_first_k"),
        check=lambda v: bool(v) and len(set(v)) == len(v),
        must="a non-empty list of distinct metric names",
    )


def read_config(params: dict) -> FrontierConfig:
    """The ``frontier`` section (one-line errors naming ``frontier.<key>``)."""
    return read_section(params, "frontier", FrontierConfig)


def group_families(settings: dict[str, dict]) -> list[Family]:
    """Variants (name -> loss settings with ``beta`` and :data:`FAMILY_EXTRA`) grouped into
    families, in the order of their first variant."""
    groups: dict[tuple, list[str]] = {}
    for name, s in settings.items():
        key = tuple(sorted((k, v) for k, v in s.items() if k not in NOT_FAMILY))
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


def named_families(key: str, names: list[str], families: list[Family]) -> list[str]:
    """The family of each variant in ``names`` (params key ``frontier.<key>``), in order; a name
    that is not a variant is a one-line error naming the key."""
    of = {v: f.name for f in families for v in f.variants}
    for v in names:
        if v not in of:
            raise ValueError(f"params: frontier.{key}: {v!r} is not a variant of align.variants")
    return [of[v] for v in names]


def confirmatory_families(
    cfg, families: list[Family], base: Family, compared: list[str]
) -> list[str]:
    """The families named by ``frontier.confirmatory`` (variants), in that order; a name that is
    not a variant, a family equal to the baseline's or an endpoint that is not measured is a
    one-line error naming the key."""
    names = named_families("confirmatory", cfg.confirmatory, families)
    for v, name in zip(cfg.confirmatory, names):
        if name == base.name:
            raise ValueError(
                f"params: frontier.confirmatory: {v!r} is in the baseline's family {base.name}"
            )
    missing = [m for m in cfg.endpoints if m not in compared] if cfg.confirmatory else []
    if missing:
        raise ValueError(
            f"params: frontier.endpoints: {missing[0]!r} is not a measure of every run "
            f"(measured: {', '.join(compared)})"
        )
    return names


def k_star_families(
    cfg, families: list[Family], base: Family, confirmatory: list[str]
) -> list[str]:
    """The families whose curves set the trajectory's K*: ``frontier.k_star_from``'s (a name
    that is not a variant is a one-line error naming the key), else the baseline's and the
    confirmatory ones where those are set, else [] (every family)."""
    if cfg.k_star_from:
        return list(dict.fromkeys(named_families("k_star_from", cfg.k_star_from, families)))
    return [base.name, *confirmatory] if confirmatory else []


def k_star(curves: list) -> tuple[float, str, int]:
    """(K*, family, seed index): the smallest over curves and seeds of that seed's largest
    point-estimate KL."""
    found = [
        (float(c.seeds.kl[i].max()), c.name, i) for c in curves for i in range(len(c.seeds.kl))
    ]
    return min(found)
