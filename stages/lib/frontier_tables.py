"""The ``frontier`` stage's tables: the matched-KL Markdown, the CSV columns and the DVC metrics.

Pure formatting of the rows :mod:`stages.lib.frontier` computes (``matched_row``), the
per-policy points and the best-of-n rows; :mod:`stages.frontier` writes them.
"""

from __future__ import annotations

import math

from stages.lib.frontier import Family, quality_groups
from stages.lib.matched_kl import FITS, MIN_COMPARISON_COVERAGE, OUTSIDE
from stages.lib.tables import markdown_table, number, plural

#: Metrics a matched-KL row may carry (KL is the level itself).
MATCHED_METRICS = ("reward", "gold", "entropy", "entropy_first_k", "context_entropy")
#: The matched-KL tables per level: reward and gold; the three entropies.
GROUPS = (("reward", "gold"), ("entropy", "entropy_first_k", "context_entropy"))
#: (prefix, suffix) of a metric's columns in a matched-KL row (stages.lib.matched_kl.matched_row).
MATCHED_PARTS = (
    ("", ""),
    ("", "_lo"),
    ("", "_hi"),
    ("", "_coverage"),
    ("", "_direction"),
    ("d_", ""),
    ("d_", "_lo"),
    ("d_", "_hi"),
    ("d_", "_excludes_0"),
    ("d_", "_coverage"),
    ("d_", "_p"),
)
#: The columns of a matched-KL row that describe it rather than hold a metric's cell.
ROW_COLUMNS = ("kl", "family", "n_betas", "kl_min", "kl_max", "status", "fit", "sft_chord")
MATCHED_COLUMNS = (
    *ROW_COLUMNS,
    *(f"{p}{m}{s}" for m in MATCHED_METRICS for p, s in MATCHED_PARTS),
)
POINT_COLUMNS = (
    "policy",
    "family",
    "beta",
    *(f"{m}{s}" for m in ("kl", *MATCHED_METRICS) for s in ("", "_lo", "_hi")),
    "front_reward_kl",
    "front_gold_kl",
    "front_reward_entropy",
)


def matched_columns(quality=()) -> tuple[str, ...]:
    """The columns of ``matched_kl.csv``: :data:`MATCHED_COLUMNS`, then those of the quality
    metrics (:func:`stages.lib.frontier.quality_metrics`), in their order."""
    return (*MATCHED_COLUMNS, *(f"{p}{m}{s}" for m in quality for p, s in MATCHED_PARTS))


def point_columns(quality=()) -> tuple[str, ...]:
    """The columns of ``points.csv``: :data:`POINT_COLUMNS`, then each quality metric's value
    and 95% interval."""
    return (*POINT_COLUMNS, *(f"{m}{s}" for m in quality for s in ("", "_lo", "_hi")))


#: The Markdown's paragraph on the quality tables (only where the runs have quality fields).
QUALITY_NOTE = (
    "Quality–diversity: the k-NN measures of the samples against held-out human reviews "
    "(stages/lib/quality.py), per feature space and reference set, interpolated and paired "
    "like reward. precision: share of samples inside some reference point's k-NN ball; "
    "recall: share of reference points inside some sample's ball; density: reference balls "
    "holding a sample, over k, per sample (can exceed 1); coverage: share of reference points "
    "whose ball holds a sample. Recall and coverage are fractions of the reference set hit by "
    'any prompt\'s samples, bootstrapped as sets over prompts. Best-of-n has none ("–").'
)
FRONTS = (
    ("front_reward_kl", "reward against KL (max reward, min KL)", "reward", "kl"),
    ("front_gold_kl", "gold against KL (max gold, min KL)", "gold", "kl"),
    ("front_reward_entropy", "reward against entropy (max both)", "reward", "entropy"),
)


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _value(r: dict, m: str) -> str:
    if not _ok(r.get(m)):
        return "–"
    coverage = r.get(f"{m}_coverage", 1.0)
    if coverage < MIN_COMPARISON_COVERAGE:
        return f"not compared (coverage {number(coverage, 2)})"
    lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
    ci = f" [{number(lo)}, {number(hi)}]" if _ok(lo) and _ok(hi) else ""
    dagger = " †" if coverage < 1.0 else ""
    return f"{number(r[m])}{ci}{dagger}"


def delta_cell(r: dict, m: str) -> str:
    """A matched-KL row's Δ cell of ``m``: value [95% CI], `*` where the interval excludes 0,
    † where its coverage is below 1; "not compared" below :data:`MIN_COMPARISON_COVERAGE`."""
    if not _ok(r.get(f"d_{m}")):
        return "–"
    coverage = r.get(f"d_{m}_coverage", 1.0)
    if coverage < MIN_COMPARISON_COVERAGE:
        return f"not compared (coverage {number(coverage, 2)})"
    star = " *" if r.get(f"d_{m}_excludes_0") else ""
    dagger = " †" if coverage < 1.0 else ""
    return f"{r[f'd_{m}']:+.3f} [{r[f'd_{m}_lo']:+.3f}, {r[f'd_{m}_hi']:+.3f}]{star}{dagger}"


def _families(families: list[Family], ranges: dict, base: str) -> list[str]:
    lines = []
    for f in families:
        members = ", ".join(
            f"{v} ({'–' if b is None else f'{b:g}'})" for v, b in zip(f.variants, f.betas)
        )
        lo, hi = ranges.get(f.name, (math.nan, math.nan))
        span = f"{number(lo)} – {number(hi)}" if f.n_betas >= 2 else f"{number(lo)} (one β)"
        name = f"**{f.name}** (baseline)" if f.name == base else f.name
        lines.append([name, str(f.n_betas), members, span])
    return markdown_table(["family", "β values", "variants (β)", "KL of its β curve"], lines)


#: The note of a value read between the SFT policy and a trajectory curve's first point.
SFT_CHORD = "below its first point in some seed: read on the line from the SFT policy"


def _note(r: dict) -> str:
    if r["status"] == "ok":
        return SFT_CHORD if r.get("sft_chord") else ""
    if r["status"] != OUTSIDE:
        return r["status"]
    return f"outside its KL range [{number(r['kl_min'])}, {number(r['kl_max'])}]"


def _level_table(
    rows: list[dict], metrics: list[str], base: str, names: list[str] | None = None
) -> list[str]:
    head = ["family"]
    for name in names or metrics:
        head += [f"{name} [95% CI]", f"Δ {name} [95% CI]"]
    lines = []
    for r in rows:
        cells = [r["family"]]
        for m in metrics:
            if r["status"] != "ok":
                cells += ["–", "–"]
            else:
                cells += [_value(r, m), "(baseline)" if r["family"] == base else delta_cell(r, m)]
        lines.append([*cells, _note(r)])
    return markdown_table([*head, "note"], lines)


def _excluding(rows: list[dict], metrics: list[str], base: str) -> str:
    found = []
    for r in rows:
        if r["family"] == base or r["status"] != "ok":
            continue
        ms = [
            f"{m} {'+' if r[f'd_{m}'] > 0 else '−'}" for m in metrics if r.get(f"d_{m}_excludes_0")
        ]
        if ms:
            found.append(f"{r['family']} ({', '.join(ms)})")
    return "; ".join(found) if found else "none"


def _quality_tables(rows: list[dict], quality: list[str], base: str) -> list[str]:
    lines = []
    for group, ms in quality_groups(quality):
        space, _, ref = group.partition("_")
        lines += [
            "",
            f"Quality–diversity in the `{space}` space against the `{ref}` reference set:",
            "",
            *_level_table(rows, ms, base, [m.split("_")[0] for m in ms]),
        ]
    return lines


def _fronts(points: list[dict]) -> list[str]:
    out = []
    for flag, what, y, x in FRONTS:
        on = [p for p in points if p.get(flag)]
        if not on:
            continue
        items = ", ".join(
            f"{p['policy']} ({x} {number(p[x])}, {y} {_value(p, y)})"
            for p in sorted(on, key=lambda p: p[x])
        )
        out.append(f"- {what}: {items}.")
    return out


def _bon_table(rows: list[dict], metrics: list[str]) -> list[str]:
    ms = [m for m in ("reward", "gold") if m in metrics]
    head = ["n", "KL (analytic)", *(f"{m} [95% CI]" for m in ms)]
    lines = [[str(r["n"]), number(r["kl"]), *(_value(r, m) for m in ms)] for r in rows]
    return markdown_table(head, lines)


#: How a family's value at a level is read off its points, per fit (the Markdown's words).
FIT_TEXT = {
    "linear": (
        "Each family's value at a level is interpolated piecewise linearly in KL between "
        "the two seed-mean points of its β curve that bracket the level, in every bootstrap "
        "replicate too."
    ),
    "isotonic": (
        "Each family's value at a level: per seed, the least-squares monotone (isotonic) fit "
        "of the measure against KL through the family's points of that seed (one per variant), "
        "read at the level by linear interpolation between fitted values, then the mean over "
        "seeds, defined only where every seed's points reach the level; the fit's direction "
        "per family and measure is the sign of Spearman's rank correlation between KL and the "
        "measure over the pooled per-seed points (`<measure>_direction` in the CSV: +1 "
        "non-decreasing, −1 non-increasing), fixed for every seed and replicate. In each "
        "bootstrap replicate every original seed's points on the resampled prompts are "
        "fitted the same way and averaged over the replicate's resampled seeds; a replicate "
        "has a value only where all of them reach the level."
    ),
}


def _how(fit: str, trajectory: bool) -> str:
    """:data:`FIT_TEXT` of ``fit``, worded for the trajectory frontier's points if asked."""
    if not trajectory:
        return FIT_TEXT[fit]
    return (
        FIT_TEXT[fit]
        .replace("β curve", "trajectory")
        .replace("(one per variant)", "(SFT, checkpoints and endpoints)")
    )


def _fit_paragraph(fit: str, base: str, trajectory: bool = False) -> str:
    """How the values are read (the former paragraph, word for word, for the linear β
    frontier), then what every cell stores."""
    what, csv_name = (
        ("trajectory", "trajectory.csv") if trajectory else ("β curve", "matched_kl.csv")
    )
    short = "fewer than 2 points" if trajectory else "fewer than 2 β values"
    how = FIT_TEXT[fit].replace("β curve", what)
    if trajectory:
        how = how.replace("(one per variant)", "(SFT, checkpoints and endpoints)")
    bon = "interpolated" if fit == "linear" else "fitted"
    return (
        f'{how} "–": the family has {short} or the level lies outside its KL range (no '
        "extrapolation). †: in some replicates the level lies outside the resampled range; the "
        f"interval uses the others (coverage in {csv_name}). Δ: family minus **{base}** at the "
        "same KL, paired; `*`: the 95% interval excludes 0; a Δ whose two curves both reach "
        f"the level in fewer than {MIN_COMPARISON_COVERAGE:.0%} of the replicates is not "
        "reported as a comparison, and † marks one below 100%. Best-of-n: the SFT policy's "
        "best of n draws by reward, at its analytic KL log n − (n − 1)/n, "
        f"{bon} between its n the same way.\n\n"
        f"Every value and Δ cell stores its coverage (the share of replicates with a value) in "
        f'{csv_name}; a value below {MIN_COMPARISON_COVERAGE:.0%} is shown as "not compared" '
        "too. Every Δ stores its two-sided bootstrap p-value `d_<measure>_p` = min(1, "
        "2·min(share of Δ ≤ 0, share of Δ ≥ 0)) over the replicates with a value. The primary "
        f"fit is `frontier.fit` = {fit}; the {other_fit(fit)} fit follows as a sensitivity "
        "analysis."
    )


def _level_sections(
    matched: list[dict],
    levels: list[float],
    metrics: list[str],
    quality: list[str],
    base: str,
    label: str = "",
) -> list[str]:
    lines: list[str] = []
    for i, level in enumerate(levels):
        rows = [r for r in matched if r["kl"] == level]
        lines += ["", f"### KL = {number(level)} (level {i + 1} of {len(levels)}{label})"]
        for group in GROUPS:
            shown = [m for m in group if m in metrics]
            if shown:
                lines += ["", *_level_table(rows, shown, base)]
        lines += _quality_tables(rows, quality, base)
        lines += [
            "",
            f"Δ intervals that exclude 0 (sign of the difference): "
            f"{_excluding(rows, [*metrics, *quality], base)}.",
        ]
    return lines


def other_fit(fit: str) -> str:
    """The fit reported as the sensitivity analysis of ``fit``."""
    return next(f for f in FITS if f != fit)


def _sensitivity(setup: dict, sensitivity: list[dict], trajectory: bool = False) -> list[str]:
    fit, other = setup.get("fit", "linear"), other_fit(setup.get("fit", "linear"))
    return [
        "",
        f"## Sensitivity analysis: the {other} fit",
        "",
        f"The same comparison with the {other} fit instead of the {fit} one (rows with "
        f"`fit` = {other} in the CSV), at the same KL levels and on the same bootstrap "
        f"replicates. {_how(other, trajectory)}",
        *_level_sections(
            sensitivity,
            setup["levels"],
            setup["metrics"],
            setup.get("quality", []),
            setup["baseline"],
            f", {other} fit",
        ),
    ]


def _intro(setup: dict) -> str:
    return (
        f"{plural(setup['n_prompts'], 'held-out prompt')} per policy and seed; "
        f"{'seed' if len(setup['seeds']) == 1 else 'seeds'} "
        f"{', '.join(map(str, setup['seeds']))}. Brackets: 95% intervals of the two-level "
        f"bootstrap over seeds and prompts ({plural(setup['bootstrap'], 'resample')} shared "
        "by every policy, family and best-of-n, so differences are paired: same seeds, same "
        "prompts). KL: nats per sequence to the SFT policy. Entropies, nats per token: "
        "`entropy` over every generated position (it moves with the sample lengths), "
        "`entropy_first_k` over each sample's first evaluate.entropy_first_k generated "
        "positions, `context_entropy` teacher-forced on the same held-out review tokens for "
        "every policy "
        "(stages/lib/evaluate.py); the last is the one that measures the policy alone. "
        "A family is every variant equal in everything but β (stages/lib/frontier.py)."
    )


def matched_markdown(
    setup: dict,
    families: list[Family],
    matched: list[dict],
    points: list[dict],
    bon: list[dict],
    sensitivity: list[dict] = (),
    online: list[str] = (),
) -> str:
    """The Markdown of ``reports/frontier/matched_kl.md``: ``matched`` under the fit
    ``setup["fit"]`` (default linear), ``sensitivity`` the rows of the other fit (a section
    of their own, where there are KL levels); ``online``: the on-policy curves' section
    (:func:`stages.lib.online_frontier.online_markdown`), after the families."""
    base, metrics, levels = setup["baseline"], setup["metrics"], setup["levels"]
    quality = setup.get("quality", [])
    fit = setup.get("fit", "linear")
    lines = [
        "# Frontier: families at matched KL",
        "",
        _intro(setup),
        "",
        "## Families",
        "",
        *_families(families, setup["ranges"], base),
        "",
        *online,
        "## KL levels",
        "",
        (f"{', '.join(number(v) for v in levels)} nats: " if levels else "") + f"{setup['how']}.",
    ]
    if levels:
        lines += [
            "",
            _fit_paragraph(fit, base),
        ]
    if levels and quality:
        lines += ["", QUALITY_NOTE]
    lines += _level_sections(matched, levels, metrics, quality, base)
    if levels:
        lines += _sensitivity(setup, list(sensitivity))
    lines += [
        "",
        "## Pareto envelope (seed-mean points of sft and every variant)",
        "",
        *_fronts(points),
        "",
        "## Best-of-n from the SFT policy",
        "",
        *_bon_table(bon, metrics),
    ]
    single = [f.name for f in families if f.n_betas < 2]
    if single:
        lines += [
            "",
            f"Families with fewer than 2 β values (a point, not a curve; no matched-KL value): "
            f"{', '.join(single)}.",
        ]
    return "\n".join(lines) + "\n"


#: ``reports/frontier/trajectory.md`` where no variant has checkpoints.
NO_TRAJECTORY = (
    "# Trajectory frontier: families at matched KL along training\n\n"
    "No trajectories in this profile: no variant sets `checkpoints` (align.common or "
    "align.variants.<v>) with evaluated checkpoint steps, so there is no trajectory "
    "frontier; the β frontier is in matched_kl.md.\n"
)


def trajectory_markdown(
    setup: dict,
    families: list[Family],
    matched: list[dict],
    sensitivity: list[dict],
    online: list[str] = (),
) -> str:
    """The Markdown of ``reports/frontier/trajectory.md``: ``setup`` as
    :func:`matched_markdown`'s plus ``steps`` (variant -> its checkpoint steps) and ``k_star``
    (the KL, family and seed that bound the levels); ``online`` as :func:`matched_markdown`'s."""
    base, metrics, levels = setup["baseline"], setup["metrics"], setup["levels"]
    quality, fit = setup.get("quality", []), setup.get("fit", "linear")
    k, fam, seed = setup["k_star"]
    rows = []
    for f in families:
        members = "; ".join(
            f"{v} (β {'–' if b is None else f'{b:g}'}): "
            + (", ".join(map(str, setup["steps"].get(v, []))) or "endpoint only")
            for v, b in zip(f.variants, f.betas)
        )
        lo, hi = setup["ranges"].get(f.name, (math.nan, math.nan))
        name = f"**{f.name}** (baseline)" if f.name == base else f.name
        rows.append([name, members, f"{number(lo)} – {number(hi)}"])
    lines = [
        "# Trajectory frontier: families at matched KL along training",
        "",
        _intro(setup),
        "",
        "Each family's points, per seed: the SFT policy (KL 0), every evaluated checkpoint "
        "of every β of the family (its training trajectory, data/trajectory) and every β's "
        "final policy; so every family's curve starts at the SFT policy.",
        "",
        "## Families",
        "",
        *markdown_table(
            ["family", "variants (β): checkpoint steps", f"KL of its points ({fit} fit)"], rows
        ),
        "",
        *online,
        "## KL levels",
        "",
        (f"{', '.join(number(v) for v in levels)} nats: " if levels else "no KL level: ")
        + "1/4, 1/2 and 3/4 of the common range "
        f"[0, K*], K* = {number(k)} the smallest, over families and seeds, of that seed's "
        f"largest point-estimate KL (family {fam}, seed {seed}).",
    ]
    if not levels:
        return "\n".join(lines) + "\n"
    lines += ["", _fit_paragraph(fit, base, trajectory=True)]
    if quality:
        lines += ["", QUALITY_NOTE]
    lines += _level_sections(matched, levels, metrics, quality, base)
    lines += _sensitivity(setup, sensitivity, trajectory=True)
    return "\n".join(lines) + "\n"


#: Cells left out of metrics/frontier.json: flags and the fit's direction (not estimates).
SKIP = ("_excludes_0", "_direction")


def frontier_metrics(setup: dict, matched: list[dict]) -> dict:
    """``metrics/frontier.json``: the KL levels and, per family (and best-of-n) and level
    ``kl<i>``, the values, intervals and paired differences that exist (no NaN, no strings),
    the quality metrics' (``setup["quality"]``) after the others."""
    columns = matched_columns(setup.get("quality", ()))
    cells = [k for k in columns if k not in ROW_COLUMNS and not k.endswith(SKIP)]
    out: dict = {"kl_levels": {f"kl{i + 1}": round(v, 6) for i, v in enumerate(setup["levels"])}}
    for i, level in enumerate(setup["levels"]):
        for r in matched:
            if r["kl"] != level or r["status"] != "ok":
                continue
            entry = {k: round(float(r[k]), 6) + 0.0 for k in cells if k in r and _ok(r[k])}
            out.setdefault(r["family"], {})[f"kl{i + 1}"] = entry
    return out
