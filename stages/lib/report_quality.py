"""The ``report`` stage's quality–diversity part (issue #28): which measures the runs hold,
their estimates, the rank agreement between feature spaces, and ``reports/quality.{md,csv}``
and ``metrics/quality.json``.

Pure compute and formatting on the runs :mod:`stages.report` reads (their metrics files'
``quality`` dicts and the per-prompt fields of :mod:`stages.lib.runs`); the stage writes::

    layout = read_layout(runs)                    # None: no run has quality measures
    rows, ests = quality_rows(info, runs, "dpo", layout, draws)
    agree = agreement(ests, layout, list(info))
    text = quality_markdown(rows, layout, agree, seeds=[0, 1, 2], baseline="dpo", n=2000)

Precision, recall, density and coverage (the k-NN measures) get the two-level bootstrap over
seeds and prompts of every other report metric, on the same resamples, so paired differences
and the agreement between spaces are paired. MAUVE, Vendi and self-BLEU are shown as the mean
and the min–max over seeds (see :data:`SPREAD_NOTE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from stages.lib import paths
from stages.lib.bootstrap import Resamples, interval
from stages.lib.quality import FEATURE_SPACES, PRDC, REFERENCE_SETS, metric_name
from stages.lib.runs import estimate, paired, stack, stack_sets
from stages.lib.tables import markdown_table, number, plural

#: What the spaces and reference sets are (the header of quality.md).
SPACES = {
    "tfidf": "TF-IDF + SVD fitted on the train reviews, independent of every model",
    "hidden": "the SFT policy's mean last hidden state",
    "encoder": "a local encoder's mean last hidden state (quality.encoder)",
}
SETS = {"all": "held-out reviews, all of them", "positive": "held-out reviews of label 1"}
#: Why MAUVE, Vendi and self-BLEU get no prompt bootstrap.
SPREAD_NOTE = (
    "MAUVE, Vendi and self-BLEU get no prompt bootstrap: MAUVE refits PCA and k-means on every "
    "call, too costly per replicate, and Vendi and self-BLEU of a resample with repeated "
    "prompts count the copies as duplicates and are biased downward; so each cell is the mean "
    "over seeds with the min–max over seeds in parentheses, not an interval."
)
NO_QUALITY = "No quality measures found in the evaluate runs (quality.measures empty or absent)."
#: ``reports/quality.csv``: one row per (policy, metric). ``interval`` says what lo/hi are:
#: ``bootstrap_95`` (seeds × prompts) or ``seed_min_max``.
COLUMNS = (
    "policy",
    "measure",
    "space",
    "reference",
    "metric",
    "value",
    "lo",
    "hi",
    "interval",
    "d",
    "d_lo",
    "d_hi",
    "d_excludes_0",
    "n_seeds",
)
AGREEMENT = "agreement"
LABELS = {"mauve": "MAUVE", "vendi": "Vendi", "self_bleu": "self-BLEU"}
#: metric name -> (measure, space, reference set) of every name a metrics file may hold.
NAMES = {
    **{
        metric_name(m, s, r): (m, s, r)
        for m in (*PRDC, "mauve")
        for s in FEATURE_SPACES
        for r in REFERENCE_SETS
    },
    **{metric_name("vendi", s): ("vendi", s, None) for s in FEATURE_SPACES},
    "self_bleu": ("self_bleu", None, None),
}


@dataclass(frozen=True)
class Layout:
    """The quality metrics every run holds: ``knn`` (precision, recall, density, coverage per
    space and set: bootstrapped) and ``spread`` (MAUVE, Vendi, self-BLEU: seed min–max), in
    report order; ``spaces`` and ``sets`` in the order of ``FEATURE_SPACES``/``REFERENCE_SETS``
    (metrics files sort their keys)."""

    knn: tuple[str, ...]
    spread: tuple[str, ...]
    spaces: tuple[str, ...]
    sets: tuple[str, ...]


def layout_of(quality: dict) -> Layout:
    """The :class:`Layout` of one metrics file's ``quality`` dict (unknown keys ignored)."""
    known = [NAMES[k] for k in quality if k in NAMES]
    spaces = tuple(s for s in FEATURE_SPACES if any(s == k[1] for k in known))
    sets = tuple(r for r in REFERENCE_SETS if any(r == k[2] for k in known))
    knn = tuple(
        metric_name(m, s, r)
        for s in spaces
        for r in sets
        for m in PRDC
        if metric_name(m, s, r) in quality
    )
    spread = [metric_name("mauve", s, r) for s in spaces for r in sets]
    spread += [metric_name("vendi", s) for s in spaces] + ["self_bleu"]
    return Layout(knn, tuple(k for k in spread if k in quality), spaces, sets)


def _run_value(run, name: str) -> float:
    """A k-NN metric of one run from its per-prompt fields."""
    if name in run.sets:
        return float(run.sets[name].any(axis=1).mean())
    return float(run.num[name].sum() / run.den[name].sum())


def _check_run(run, quality, where) -> Layout | None:
    if quality is None or quality == {}:
        if run.sets:
            raise ValueError(
                f"{run.path}: per-prompt quality fields but {where} has no 'quality' "
                f"(files of different runs?)"
            )
        return None
    if not isinstance(quality, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in quality.values()
    ):
        raise ValueError(f"{where}: field 'quality' must map measure names to finite numbers")
    layout = layout_of(quality)
    for name in layout.knn:
        if name not in run.num and name not in run.sets:
            raise ValueError(
                f"{run.path}: no per-prompt quality fields for {name} of {where} (re-run evaluate)"
            )
        value = _run_value(run, name)
        if abs(value - quality[name]) > 1e-4 * max(1.0, abs(value)):
            raise ValueError(
                f"{run.path}: {name} {value:.6f} differs from {where}'s {quality[name]:.6f} "
                f"(files of different runs?)"
            )
    return layout


def read_layout(runs: dict[str, list]) -> Layout | None:
    """The quality metrics of the runs (policy -> its runs: ``metrics`` dicts and the fields of
    :class:`stages.lib.runs.Run`), checked: every run has the first run's quality metrics, or
    none has any (None); a run's per-prompt values agree with its metrics file. One-line errors
    name the file."""
    first = None
    for per in runs.values():
        for run in per:
            where = paths.eval_metrics(run.policy, run.seed)
            layout = _check_run(run, run.metrics.get("quality"), where)
            if first is None:
                first = (layout, where)
            elif layout != first[0]:
                what = (
                    "no quality measures, but"
                    if layout is None
                    else "quality measures, but none in"
                    if first[0] is None
                    else "quality measures other than those of"
                )
                raise ValueError(f"{where}: {what} {first[1]} (re-run evaluate)")
    return first[0] if first else None


# --------------------------------------------------------------------------- estimates


def knn_estimates(runs: list, names: tuple[str, ...], draws: Resamples) -> dict:
    """Per k-NN metric of ``names``: value, replicates, per-seed values and 95% interval of
    :func:`stages.lib.runs.estimate` (ratios and sets on the same ``draws``)."""
    num, den = stack(runs, names)
    sets = {m: h for m, h in stack_sets(runs).items() if m in names}
    return estimate(num, den, draws, sets=sets)


def _round(v):
    return round(v, 6) + 0.0 if isinstance(v, float) else v


def quality_rows(
    info: dict[str, dict], runs: dict[str, list], baseline: str, layout: Layout, draws: Resamples
) -> tuple[list[dict], dict[str, dict]]:
    """One row per policy (``info`` order): per k-NN metric ``m`` its value, ``m_lo``/``m_hi``
    and the paired difference against ``baseline`` ``d_m`` (``_lo``, ``_hi``,
    ``_excludes_0``); per spread metric the mean over seeds and ``m_min``/``m_max``. Also
    returns policy -> :func:`knn_estimates` (for :func:`agreement`)."""
    ests = {p: knn_estimates(runs[p], layout.knn, draws) for p in info}
    rows = []
    for policy, labels in info.items():
        row = {"policy": policy, **labels, "n_seeds": len(runs[policy])}
        for m in layout.knn:
            row.update(paired(m, ests[policy][m], ests[baseline][m]))
        for m in layout.spread:
            values = [float(r.metrics["quality"][m]) for r in runs[policy]]
            row.update(
                {m: float(np.mean(values)), f"{m}_min": min(values), f"{m}_max": max(values)}
            )
        rows.append({k: _round(v) for k, v in row.items()})
    return rows, ests


def spearman(x: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Spearman's rho of ``x`` and ``y`` along axis 0 (ties get their average rank): the
    Pearson correlation of the ranks; nan where either has every value tied. ``x``, ``y``: [V]
    -> a float, or [V, B] -> [B] (one rho per column)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=0), rankdata(y, axis=0)
    rx, ry = rx - rx.mean(axis=0), ry - ry.mean(axis=0)
    num, den = (rx * ry).sum(axis=0), np.sqrt((rx**2).sum(axis=0) * (ry**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip(np.where(den > 0, num / den, np.nan), -1.0, 1.0)
    return float(rho) if rho.ndim == 0 else rho


def agreement(ests: dict[str, dict], layout: Layout, policies: list[str]) -> dict:
    """``<measure>_<set>`` -> ``<space>_vs_<space>`` -> Spearman's ``rho`` between the
    policies' values in the two spaces, its 95% percentile interval ``rho_lo``/``rho_hi`` over
    the bootstrap replicates (paired: both spaces share the draws), ``n_policies`` and
    ``n_undefined`` (replicates where a space ties every policy; left out of the interval)."""
    out: dict[str, dict] = {}
    for measure in PRDC:
        for ref in layout.sets:
            spaces = [s for s in layout.spaces if metric_name(measure, s, ref) in layout.knn]
            for a, b in combinations(spaces, 2):
                ka, kb = metric_name(measure, a, ref), metric_name(measure, b, ref)
                rho = spearman(
                    *(np.array([ests[p][k]["value"] for p in policies]) for k in (ka, kb))
                )
                reps = spearman(
                    *(np.stack([ests[p][k]["reps"] for p in policies]) for k in (ka, kb))
                )
                ok = np.isfinite(reps)
                lo, hi = interval(reps[ok]) if ok.any() else (None, None)
                out.setdefault(f"{measure}_{ref}", {})[f"{a}_vs_{b}"] = {
                    "rho": None if math.isnan(rho) else _round(rho),
                    "rho_lo": _round(lo),
                    "rho_hi": _round(hi),
                    "n_policies": len(policies),
                    "n_undefined": int((~ok).sum()),
                }
    return out


# --------------------------------------------------------------------------- outputs


def csv_rows(rows: list[dict], layout: Layout | None) -> list[dict]:
    """``reports/quality.csv``: one row per (policy, metric) (:data:`COLUMNS`)."""
    out = []
    for r in rows if layout else []:
        base = {"policy": r["policy"], "n_seeds": r["n_seeds"]}
        for m in layout.knn + layout.spread:
            measure, space, ref = NAMES[m]
            row = {**base, "measure": measure, "space": space, "reference": ref, "metric": m}
            row["value"] = r[m]
            if m in layout.knn:
                row.update(lo=r[f"{m}_lo"], hi=r[f"{m}_hi"], interval="bootstrap_95")
                row.update({k: r[f"d_{m}{k[1:]}"] for k in ("d", "d_lo", "d_hi", "d_excludes_0")})
            else:
                row.update(lo=r[f"{m}_min"], hi=r[f"{m}_max"], interval="seed_min_max")
            out.append(row)
    return out


def quality_metrics(rows: list[dict], layout: Layout | None, agree: dict) -> dict:
    """``metrics/quality.json``: per policy the numbers of its row (no labels, no flags), and
    the agreement between spaces; {} without quality measures."""
    if layout is None:
        return {}
    keys = [f"{p}{m}{s}" for m in layout.knn for p in ("", "d_") for s in ("", "_lo", "_hi")]
    keys += [f"{m}{s}" for m in layout.spread for s in ("", "_min", "_max")]
    out = {}
    for r in rows:
        if r["policy"] == AGREEMENT:
            raise ValueError(
                f"params: a policy named {AGREEMENT!r} clashes with {AGREEMENT!r} "
                "of metrics/quality.json (rename the variant)"
            )
        out[r["policy"]] = {k: r[k] for k in keys}
    return {**out, AGREEMENT: agree}


def _ci(r: dict, m: str) -> str:
    return f"{number(r[m])} [{number(r[f'{m}_lo'])}, {number(r[f'{m}_hi'])}]"


def _delta(r: dict, m: str, baseline: str) -> str:
    if r["policy"] == baseline:
        return "(baseline)"
    star = " *" if r[f"d_{m}_excludes_0"] else ""
    return f"{r[f'd_{m}']:+.3f} [{r[f'd_{m}_lo']:+.3f}, {r[f'd_{m}_hi']:+.3f}]{star}"


def _knn_tables(rows: list[dict], layout: Layout, baseline: str) -> list[str]:
    lines = []
    for space in layout.spaces:
        for ref in layout.sets:
            names = [(m, metric_name(m, space, ref)) for m in PRDC]
            names = [(m, k) for m, k in names if k in layout.knn]
            if not names:
                continue
            head = ["policy", *(f"{m} [95% CI]" for m, _ in names)]
            head += [f"Δ {m} vs {baseline}" for m, _ in names]
            body = [
                [r["policy"], *(_ci(r, k) for _, k in names)]
                + [_delta(r, k, baseline) for _, k in names]
                for r in rows
            ]
            lines += [
                f"### Space {space}, reference set {ref}",
                "",
                *markdown_table(head, body),
                "",
            ]
    return lines


def _spread_label(m: str) -> str:
    measure, space, ref = NAMES[m]
    return " ".join(x for x in (LABELS[measure], space, ref and f"/ {ref}") if x)


def _spread_table(rows: list[dict], layout: Layout) -> list[str]:
    head = ["policy", *(f"{_spread_label(m)} (min–max)" for m in layout.spread)]
    body = [
        [
            r["policy"],
            *(
                f"{number(r[m])} ({number(r[f'{m}_min'])}–{number(r[f'{m}_max'])})"
                for m in layout.spread
            ),
        ]
        for r in rows
    ]
    return markdown_table(head, body)


def _rho(cell: dict) -> str:
    if cell["rho"] is None:
        return "undefined (a space ties every policy)"
    if cell["rho_lo"] is None:
        return f"{cell['rho']:+.3f}"
    return f"{cell['rho']:+.3f} [{cell['rho_lo']:+.3f}, {cell['rho_hi']:+.3f}]"


def _agreement_table(agree: dict, layout: Layout) -> list[str]:
    if len(layout.spaces) < 2 or not agree:
        return [f"One feature space ({', '.join(layout.spaces)}): no agreement to report.", ""]
    pairs = list(dict.fromkeys(p for cells in agree.values() for p in cells))
    head = ["measure", "reference set", *(p.replace("_vs_", " vs ") for p in pairs)]
    body = []
    for key, cells in agree.items():
        measure, ref = key.rsplit("_", 1)
        body.append([measure, ref, *(_rho(cells[p]) if p in cells else "–" for p in pairs)])
    cells = [c for row in agree.values() for c in row.values()]
    n = cells[0]["n_policies"]
    note = (
        f"Spearman's ρ between the {n} policies' values (sft included) in two spaces; brackets: "
        "95% percentile interval of ρ recomputed on every bootstrap replicate (both spaces on "
        "the same resamples, so the replicates are paired)."
    )
    undefined = sum(c["n_undefined"] for c in cells)
    if undefined:
        note += (
            f" {undefined} replicate(s) where a space ties every policy (ρ undefined) are left "
            "out (n_undefined in metrics/quality.json)."
        )
    return [note, "", *markdown_table(head, body), ""]


def quality_markdown(
    rows: list[dict],
    layout: Layout | None,
    agree: dict,
    *,
    seeds: list[int],
    baseline: str,
    n: int,
    n_prompts: int,
    n_samples: int,
) -> str:
    """``reports/quality.md``: the k-NN measures per space and reference set (intervals and
    paired differences), MAUVE/Vendi/self-BLEU (seed min–max), the agreement between spaces."""
    if layout is None:
        return f"# Quality and diversity\n\n{NO_QUALITY}\n"
    spaces = "; ".join(f"`{s}`: {SPACES.get(s, s)}" for s in layout.spaces)
    sets = "; ".join(f"`{r}`: {SETS.get(r, r)}" for r in layout.sets)
    lines = [
        "# Quality and diversity",
        "",
        f"Each policy's samples ({plural(n_prompts, 'held-out prompt')} × "
        f"{plural(n_samples, 'sample')} per seed; {'seed' if len(seeds) == 1 else 'seeds'} "
        f"{', '.join(map(str, seeds))}) against reference sets of held-out human reviews "
        f"in feature spaces. Spaces: {spaces}. Reference sets: {sets}.",
        "",
    ]
    if layout.knn:
        lines += [
            "## Precision, recall, density, coverage",
            "",
            "Mean over seeds; brackets: 95% interval of the two-level bootstrap over seeds and "
            f"prompts ({plural(n, 'resample')}, the resamples of summary.md). Recall and "
            "coverage are shares of the reference points hit by any prompt's samples: they "
            "resample the seeds and the reference points instead (the prompts fixed: a union "
            "over a prompt resample's ~63% distinct prompts is biased low), with the samples' "
            "k-NN radii held at the full sample set (stages/lib/bootstrap.py). Δ: policy minus "
            f"{baseline} on the same seeds and prompts; `*`: its 95% interval excludes 0.",
            "",
            *_knn_tables(rows, layout, baseline),
        ]
    if layout.spread:
        lines += [
            "## MAUVE, Vendi, self-BLEU",
            "",
            SPREAD_NOTE,
            "",
            *_spread_table(rows, layout),
            "",
        ]
    if layout.knn:
        lines += ["## Rank agreement between feature spaces", "", *_agreement_table(agree, layout)]
    return "\n".join(lines).rstrip("\n") + "\n"
