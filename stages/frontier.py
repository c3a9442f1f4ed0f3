"""``frontier``: the honest comparison: families along β at matched KL, the Pareto envelope of
non-dominated runs and the best-of-n baseline, with 95% intervals over seeds and prompts.

Reads ``seed``, ``seeds``, ``frontier.*``, ``align.common``/``align.variants`` and
``online.variants``/``rounds``/``rl_settings`` from params.yaml and, for ``sft``, every variant,
every on-policy policy and every seed of ``seeds``,
``data/eval/<policy>/seed-<s>.jsonl`` (the per-sample scores ``evaluate`` wrote) and
``data/best_of_n/seed-<s>.jsonl`` (``best-of-n``'s draws). Writes::

    reports/frontier/matched_kl.md, .csv   per KL level and family: reward, gold, entropy
                                           and the quality measures [95% CI] and paired
                                           differences against the baseline family;
                                           best-of-n as one more curve
    reports/frontier/points.csv            per policy: its family, β, the estimates with
                                           intervals, and whether it is on a Pareto envelope
    reports/frontier/best_of_n.csv         per n: analytic KL, reward and gold [95% CI]
    reports/frontier/overview.png          every family on one set of axes (4 panels)
    reports/frontier/families.png          one row of 4 panels per family
    reports/frontier/precision_recall.png  per KL level (column) and feature space and
                                           reference set (row): each family's (recall,
                                           precision) at that KL, both 95% intervals, and SFT
    reports/frontier/trajectory.md, .csv   the trajectory frontier (SFT, checkpoints and
    reports/frontier/trajectory.png        endpoints per family), or a "no trajectories" note
    metrics/frontier.json                  the matched-KL values (the trajectory's under
                                           ``trajectory``), under dvc.yaml's `metrics:`

    python -m stages frontier                 # or: dvc repro frontier
    python -m stages frontier --kl-levels 3.6,4,4.4 --out reports/frontier-low   # analysis

**Families** are the variants equal in everything but β (:mod:`stages.lib.frontier`: the loss
settings read as the align stage reads them, plus the curriculum); ``frontier.baseline`` names
a variant whose family is the reference of the paired differences (``dpo``: sigmoid loss,
reverse KL). **Estimates** per policy are ``report``'s: per run and prompt a numerator and a
denominator (reward and gold: the prompt's mean score; KL: the mean of log π − log π_sft over
its samples; entropy: summed over generated tokens, over their number), the run's value
Σ num / Σ den, the policy's the mean over seeds, intervals from the two-level bootstrap
(:mod:`stages.lib.bootstrap`) with one set of ``frontier.bootstrap`` resamples shared by every
policy, family and best-of-n, so every difference is paired (same seeds, same prompts).

**KL levels**: the 0.25, 0.5 and 0.75 quantiles of the KL range that every family with at least
2 β values covers (its seed-mean points' min to max), so each level lies inside every such
family's curve; the Markdown says which range was used. **Fit** (``frontier.fit``): each
family's value at a level is read off a per-seed monotone (isotonic) fit in KL averaged over
seeds (``isotonic``, the default), or interpolated piecewise linearly in KL along its
seed-mean points (``linear``), in every bootstrap replicate too
(:mod:`stages.lib.matched_kl`); the other fit is reported beside it as a sensitivity analysis
(its own Markdown section; ``fit`` column in the CSV; ``metrics/frontier.json`` holds the
primary's). Families with fewer than 2 β values, or whose range misses a level, get "–", never
an extrapolation. Every cell stores its bootstrap coverage, every Δ its two-sided bootstrap
p-value.

**Trajectory frontier**: where variants have ``checkpoints`` (``align.common`` or their own),
``evaluate`` writes ``data/trajectory/<v>/seed-<s>/`` (:func:`stages.lib.runs.read_trajectory`);
each family's points per seed are then the SFT policy (KL 0), every checkpoint of every β and
every endpoint, fitted the same way, compared at 1/4, 1/2 and 3/4 of [0, K*], K* the smallest
over families and seeds of that seed's largest KL. Without checkpoints the trajectory files say
so and nothing else changes. **Best-of-n** (n = 1, 2, 4, ... ≤ ``best_of_n.n_max``) sits at its analytic KL
log n − (n − 1)/n, its reward and gold estimated from all n-subsets of the draws
(:mod:`stages.lib.best_of_n`); between its n it is interpolated the same way.

**Quality–diversity**: where the runs' rows hold ``quality`` fields (evaluate against held-out
human reviews, :mod:`stages.lib.quality_reference`), the k-NN measures precision, recall,
density and coverage of every feature space and reference set that all runs have
(``<measure>_<space>_<set>``, found from the metric names) are compared like reward: precision
and density are per-prompt ratios, recall and coverage fractions of the reference set hit by
any prompt's samples, bootstrapped as sets on the same resamples
(:func:`stages.lib.runs.estimate`), so their interpolation and paired differences are those of
reward. The CSVs gain their columns after the existing ones (without quality fields the files
are exactly the former ones), the Markdown one table per space and set at each level;
best-of-n has none ("–", empty cells). ``precision_recall.png`` draws the precision–recall
plane of the generative-modelling literature at each matched KL (a "no quality measures"
notice without them).

**On-policy curves** (issue #30; :mod:`stages.lib.online_policies`, :mod:`stages.lib.online_frontier`;
none in the demo): with ``online.variants`` each variant's rounds 1..R are one curve
``online-<v>``, with ``online.rl_settings`` the RLOO settings one curve ``rloo``, read from
``data/eval`` and fitted, tabulated and plotted like a family (a curve from 2 points), with Δ
against the baseline family, after the KL levels (and the trajectory's K*) are fixed by the
offline families alone; the Markdown says so in its "On-policy curves" section.

**Pareto envelope**: the policies (``sft`` and every variant, seed-mean points) that no other
policy beats in both coordinates: max reward (gold) at min KL, and max reward at max entropy;
drawn as the staircase of what the best run at that budget reaches.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import typer

from stages.lib import paths
from stages.lib.best_of_n import best_of_n, best_of_n_kl, n_values
from stages.lib.bootstrap import Resamples, draw_resamples
from stages.lib.common import atomic_path, write_json
from stages.lib.config import load_params, read_seed, read_seeds
from stages.lib.confirm import COLUMNS as CONFIRM_COLUMNS
from stages.lib.confirm import confirm, hypotheses
from stages.lib.confirm import markdown as confirm_markdown
from stages.lib.confirm import metrics as confirm_metrics
from stages.lib.contracts import BEST_OF_N, read_rows
from stages.lib.frontier import (
    Family,
    confirmatory_families,
    group_families,
    k_star,
    k_star_families,
    point_rows,
    quality_metrics,
    read_config,
    variant_checkpoints,
    variant_settings,
)
from stages.lib.frontier_tables import (
    NO_TRAJECTORY,
    frontier_metrics,
    matched_columns,
    matched_markdown,
    other_fit,
    point_columns,
    trajectory_markdown,
)
from stages.lib.matched_kl import (
    FITS,
    QUANTILES,
    Curve,
    add_seed_replicates,
    curve,
    kl_levels,
    matched_kl,
)
from stages.lib.online_frontier import online_families, online_fits, online_markdown
from stages.lib.online_policies import check_names, online_curves
from stages.lib.runs import METRICS as RUN_METRICS
from stages.lib.runs import (
    check_same_prompts,
    estimate,
    load_runs,
    read_trajectory,
    stack,
    stack_sets,
)
from stages.lib.tables import plural
from stages.lib.variants import SFT

OUT = paths.FRONTIER_DIR
#: Metrics compared along the curves: every per-prompt metric of stages.lib.runs but KL (the
#: axis) and the quality templates (``<space>``: found per run, :func:`quality_metrics`), each
#: only where every run has it: gold needs a gold scorer, the last two an evaluate that writes
#: them (stages.lib.evaluate).
METRICS = tuple(m for m in RUN_METRICS if m != "kl" and "<" not in m)
BON = "best-of-n"


# --------------------------------------------------------------------------- params


def baseline_family(families: list[Family], baseline: str) -> Family:
    """The family of variant ``frontier.baseline``."""
    for fam in families:
        if baseline in fam.variants:
            return fam
    names = ", ".join(v for f in families for v in f.variants)
    raise ValueError(
        f"params: frontier.baseline: must be a variant of align.variants ({names}), "
        f"got {baseline!r}"
    )


# --------------------------------------------------------------------------- reading runs


def read_best_of_n(seed: int) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Prompt ids, rewards [P, N] and gold [P, N] (or None) of one best-of-n run."""
    path = paths.best_of_n_samples(seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `dvc repro best-of-n@{seed}`)")
    rows = read_rows(path, BEST_OF_N)
    sizes = {len(r["rewards"]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"{path}: rows hold {sorted(sizes)} draws; every prompt needs the same")
    rewards = np.array([r["rewards"] for r in rows], dtype=float)
    gold = (
        np.array([r["gold"] for r in rows], dtype=float) if all("gold" in r for r in rows) else None
    )
    return [r["prompt_id"] for r in rows], rewards, gold


# --------------------------------------------------------------------------- estimates


def bon_estimates(bon: list[tuple[np.ndarray, np.ndarray | None]], draws: Resamples) -> dict:
    """n -> :func:`estimate` of reward (and gold) of the best of n, analytic ``kl`` added."""
    n_max = bon[0][0].shape[1]
    out = {}
    for n in n_values(n_max):
        num = {"reward": np.stack([best_of_n(r, n) for r, _ in bon])}
        if all(g is not None for _, g in bon):
            num["gold"] = np.stack([best_of_n(r, n, g) for r, g in bon])
        den = {m: np.ones_like(v) for m, v in num.items()}
        est = add_seed_replicates(estimate(num, den, draws), num, den, draws)
        kl = best_of_n_kl(n)
        reps = np.full(len(draws.seeds), kl)
        est["kl"] = {"value": kl, "reps": reps, "seeds": np.full(len(bon), kl), "ci": (kl, kl)}
        est["kl"].update(seed_reps=np.full(draws.seeds.shape, kl), draws=draws.seeds)
        out[n] = est
    return out


#: Columns of ``reports/frontier/best_of_n.csv``.
BON_COLUMNS = ("n", "kl", "reward", "reward_lo", "reward_hi", "gold", "gold_lo", "gold_hi")


def _cis(e: dict) -> dict:
    """The 95% intervals of an n's reward (and gold) as ``<metric>_lo``/``_hi``."""
    out = {}
    for k in ("reward", "gold"):
        if k in e:
            out[f"{k}_lo"], out[f"{k}_hi"] = e[k]["ci"]
    return out


# --------------------------------------------------------------------------- stage


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Rows as CSV (empty cells for missing or NaN values; floats to 6 decimals)."""

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return round(v, 6) + 0.0 if isinstance(v, float) else v

    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: cell(r.get(k)) for k in columns})


def parse_levels(text: str) -> list[float]:
    """``--kl-levels`` ("3.6,4,4.4") as increasing non-negative floats, or a one-line error."""
    try:
        levels = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--kl-levels: must be comma-separated numbers, got {text!r}") from None
    if not all(0 <= v < math.inf for v in levels) or levels != sorted(set(levels)):
        raise ValueError(f"--kl-levels: must be increasing finite KL values >= 0, got {text!r}")
    return levels


def read_trajectories(params: dict, seeds: list[int], runs: dict) -> dict[str, list]:
    """variant -> per seed its ``[(step, Run)]`` (:func:`stages.lib.runs.read_trajectory`), for
    every variant with ``checkpoints`` whose runs have steps; every seed must list the same."""
    out = {}
    for v, wanted in variant_checkpoints(params).items():
        if not wanted:
            continue
        per_seed = [read_trajectory(v, s, runs[v][i]) for i, s in enumerate(seeds)]
        steps = [[n for n, _ in t] for t in per_seed]
        for s, st in zip(seeds[1:], steps[1:]):
            if st != steps[0]:
                raise ValueError(
                    f"{paths.trajectory_dir(v, s) / 'summary.json'}: steps {st} differ from "
                    f"seed {seeds[0]}'s {steps[0]}; every seed's run needs the same checkpoints"
                )
        if steps[0]:
            out[v] = per_seed
    return out


def trajectory(
    traj: dict,
    est: dict,
    families: list[Family],
    bon_curve: Curve,
    draws: Resamples,
    base: Family,
    setup: dict,
    online: list = (),
) -> tuple[dict, list[dict], list[dict], list[Curve]]:
    """The trajectory frontier (``traj``: :func:`read_trajectories`; ``est``: every policy's
    estimates with per-seed replicates): each family's points per seed are SFT, every
    checkpoint of every β and every endpoint, compared at 1/4, 1/2, 3/4 of [0, K*]
    (:func:`k_star`, over the families alone); the on-policy curves (``online``) from SFT
    beside them; returns its setup, the rows of ``setup["fit"]`` and of the other fit, and
    the curves."""
    every = [r for per_seed in traj.values() for t in per_seed for _, r in t]
    compared = [*setup["metrics"], *setup["quality"]]
    ms = [m for m in compared if all(m in r.num or m in r.sets for r in every)]
    points = {}
    for v, per_seed in traj.items():
        for k, (n, _) in enumerate(per_seed[0]):
            step_runs = [t[k][1] for t in per_seed]
            sets = {m: h for m, h in stack_sets(step_runs).items() if m in ms}
            num, den = stack(step_runs, ("kl", *ms))
            points[v, n] = add_seed_replicates(
                estimate(num, den, draws, sets=sets), num, den, draws, sets
            )
    curves = []
    for f in families:
        pts = [est[SFT]]
        for v in f.variants:
            pts += [points[v, n] for n, _ in (traj[v][0] if v in traj else [])] + [est[v]]
        curves.append(curve(f.name, f.n_betas, pts, ms, kind="trajectory"))
    chosen = setup["k_star_families"]
    k, fam, i = k_star([c for c in curves if not chosen or c.name in chosen])
    levels = [k * q for q in QUANTILES] if k > 0 else []  # K* <= 0: a family never left SFT
    fit = setup["fit"]
    curves += online_fits(online, est, ms, start=est[SFT])  # after K*: they never move it
    rows = {f: matched_kl([*curves, bon_curve], base.name, levels, ms, f) for f in FITS}
    tsetup = {
        **setup,
        "levels": levels,
        "k_star": (k, fam, setup["seeds"][i]),
        "steps": {v: [n for n, _ in t[0]] for v, t in traj.items()},
        "metrics": [m for m in setup["metrics"] if m in ms],
        "quality": [m for m in setup["quality"] if m in ms],
        "ranges": {c.name: c.range(fit) for c in curves},
    }
    return tsetup, rows[fit], rows[other_fit(fit)], curves


def frontier(
    params: dict,
    out: Path = OUT,
    levels: list[float] | None = None,
    metrics_path: Path = paths.FRONTIER_METRICS,
) -> dict:
    """Run the stage; returns what it wrote to ``metrics/frontier.json`` plus the rows.
    ``levels``: KL levels to compare at instead of the automatic ones (an analysis outside the
    pipeline: ``--kl-levels`` with ``--out`` elsewhere)."""
    cfg = read_config(params)
    fit = cfg.fit
    seeds = read_seeds(params)
    settings = variant_settings(params)
    families = group_families(settings)
    base = baseline_family(families, cfg.baseline)
    online = online_curves(params)  # on-policy curves (issue #30); [] in the demo
    check_names(online, [SFT, BON, *settings, *(f.name for f in families)])
    policies = [SFT, *settings, *(p for c in online for p in c.policies)]
    runs = load_runs(policies, seeds)
    first = runs[SFT][0]
    for run in (r for per in runs.values() for r in per):
        if "reward" not in run.num:
            raise ValueError(f"{run.path}: no rewards (the frontier needs a reward model)")
    bon = []
    for s in seeds:
        ids, rewards, gold = read_best_of_n(s)
        check_same_prompts(ids, first.prompt_ids, paths.best_of_n_samples(s), first.path)
        bon.append((rewards, gold))
    traj = read_trajectories(params, seeds, runs)
    every = [r for per in runs.values() for r in per]
    metrics = [m for m in METRICS if all(m in r.num for r in every)]
    quality = quality_metrics(every)
    compared = [*metrics, *quality]
    draws = draw_resamples(len(seeds), len(first.prompt_ids), cfg.bootstrap, read_seed(params))
    # the per-seed replicates of the isotonic fit, only for points on some curve
    on_curve = {v for f in families if f.n_betas >= 2 for v in f.variants}
    on_curve |= {p for c in online for p in c.policies}
    if traj:
        on_curve |= set(policies)
    est = {}
    for p in policies:
        sets = {m: hits for m, hits in stack_sets(runs[p]).items() if m in quality}
        num, den = stack(runs[p], ("kl", *metrics, *quality))
        est[p] = estimate(num, den, draws, sets=sets)
        if p in on_curve:
            add_seed_replicates(est[p], num, den, draws, sets)
    bon_est = bon_estimates(bon, draws)
    curves = [curve(f.name, f.n_betas, [est[v] for v in f.variants], compared) for f in families]
    curves.append(curve(BON, len(bon_est), list(bon_est.values()), compared))
    ranges = {c.name: c.kl_range for c in curves[:-1] if c.n_betas >= 2}
    base_curve = next(c for c in curves if c.name == base.name)
    fallback = base_curve.kl_range if base.n_betas >= 2 else None
    if levels is None:
        levels, how = kl_levels(ranges, fallback)
    else:
        how = "given with --kl-levels (not the pipeline's automatic levels)"
    # the on-policy curves join only now: the levels above are the offline families' alone
    online_fit = online_fits(online, est, compared)
    curves = [*curves[:-1], *online_fit, curves[-1]]  # best-of-n stays last
    by_fit = {f: matched_kl(curves, base.name, levels, compared, f) for f in FITS}
    matched, sensitivity = by_fit[fit], by_fit[other_fit(fit)]
    drawn = [*families, *online_families(online, settings)]
    points = point_rows(est, drawn, compared)
    bon_rows = [{"n": n, **{k: e[k]["value"] for k in e}, **_cis(e)} for n, e in bon_est.items()]
    setup = {
        "seeds": seeds,
        "n_prompts": len(first.prompt_ids),
        "bootstrap": cfg.bootstrap,
        "how": how,
        "levels": levels,
        "baseline": base.name,
        "metrics": metrics,
        "quality": quality,
        "ranges": {c.name: c.kl_range for c in curves},
        "fit": fit,
    }
    confirmatory = confirmatory_families(cfg, families, base, compared)
    setup["k_star_families"] = k_star_families(cfg, families, base, confirmatory)
    traj_result = None
    if traj:
        traj_result = trajectory(traj, est, families, curves[-1], draws, base, setup, online)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "matched_kl.md") as tmp:
        section = online_markdown(online, online_fit, fit)
        text = matched_markdown(setup, families, matched, points, bon_rows, sensitivity, section)
        tmp.write_text(text)
    write_csv(out / "matched_kl.csv", [*matched, *sensitivity], matched_columns(quality))
    write_csv(out / "points.csv", points, point_columns(quality))
    write_csv(out / "best_of_n.csv", bon_rows, BON_COLUMNS)
    summary = frontier_metrics(setup, matched)
    if traj_result is not None:
        tsetup, t_rows, t_sens, t_curves = traj_result
        with atomic_path(out / "trajectory.md") as tmp:
            section = online_markdown(online, t_curves[len(families) :], fit, trajectory=True)
            tmp.write_text(trajectory_markdown(tsetup, families, t_rows, t_sens, section))
        write_csv(out / "trajectory.csv", [*t_rows, *t_sens], matched_columns(tsetup["quality"]))
        summary["trajectory"] = frontier_metrics(tsetup, t_rows)
    else:
        with atomic_path(out / "trajectory.md") as tmp:
            tmp.write_text(NO_TRAJECTORY)
        write_csv(out / "trajectory.csv", [], matched_columns())
    tested, how = (
        (traj_result[1], "trajectory frontier") if traj_result else (matched, "β endpoints")
    )
    verdicts = confirm(hypotheses(tested, confirmatory, list(cfg.endpoints)))
    with atomic_path(out / "confirmatory.md") as tmp:
        tmp.write_text(confirm_markdown(verdicts, base.name, f"{how}, {fit} fit"))
    write_csv(out / "confirmatory.csv", verdicts, CONFIRM_COLUMNS)
    if verdicts:
        summary["confirmatory"] = confirm_metrics(verdicts)
    write_json(metrics_path, summary)
    from stages.lib.frontier_plots import (
        families_png,
        overview_png,
        precision_recall_png,
        trajectory_png,
    )

    overview_png(out / "overview.png", drawn, est, bon_est, points, metrics)
    families_png(out / "families.png", drawn, est, bon_est, points, metrics)
    precision_recall_png(out / "precision_recall.png", drawn, matched, est[SFT], setup)
    if traj_result is not None:
        trajectory_png(out / "trajectory.png", traj_result[3], traj_result[0], fit)
    else:
        trajectory_png(out / "trajectory.png", [], None, fit)
    result = {"metrics": summary, "matched": matched, "sensitivity": sensitivity}
    result.update(points=points, best_of_n=bon_rows)
    if traj_result is not None:
        result["trajectory"] = {"matched": traj_result[1], "sensitivity": traj_result[2]}
    return result


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file to read."),
    kl_levels: str = typer.Option(
        "",
        help="Analysis outside the pipeline: compare at these KL levels (e.g. 3.6,4,4.4) "
        "instead of the automatic ones; needs --out, which also receives frontier.json.",
    ),
    out: Path = typer.Option(OUT, help="Folder for the tables and plots."),
) -> None:
    """Compare the β families at matched KL; Pareto envelopes; the best-of-n baseline."""
    levels = parse_levels(kl_levels) if kl_levels else None
    if levels is not None and out.resolve() == OUT.resolve():
        raise ValueError(f"--kl-levels: give --out another folder than {OUT} (a DVC output)")
    metrics_path = paths.FRONTIER_METRICS if levels is None else out / "frontier.json"
    result = frontier(load_params(params), out, levels, metrics_path)
    found = list(result["metrics"]["kl_levels"].values())
    typer.echo(
        f"frontier: {plural(len(result['points']) - 1, 'variant')}, KL levels "
        f"{', '.join(f'{v:.2f}' for v in found) or 'none'} -> {out}/matched_kl.md, "
        f"matched_kl.csv, points.csv, best_of_n.csv, overview.png, families.png, "
        f"precision_recall.png, trajectory.md, .csv, .png, {metrics_path}"
    )
