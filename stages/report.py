"""``report``: every evaluated policy aggregated over run seeds and prompts: tables, plots,
DVC metrics.

Reads ``seed``, ``seeds``, ``report.*``, ``align.common``/``align.variants`` and ``online.*``'s
variants, rounds and RLOO settings from params.yaml
(the policies are ``sft`` plus every variant, labelled and grouped by their loss, divergence and
alpha, read as the align stage reads them: the variant's keys over ``align.common``) and, for
every policy and every seed of ``seeds``, ``metrics/eval/<policy>/seed-<s>.json``,
``data/eval/<policy>/seed-<s>.jsonl`` (the per-sample scores) and, for a variant,
``metrics/align/<variant>/seed-<s>.json`` (its validation accuracy); ``metrics/sft.json`` when it
exists, for one thing only: when it says the SFT policy's held-out perplexity is above its
vocabulary size or ``sft.max_perplexity`` (``perplexity_warning``, the ``sft`` stage), the
summary opens with that warning (and the stage prints it). Writes::

    reports/summary.md, summary.csv    per policy: mean over seeds, 95% interval (seeds and
                                       prompts), paired differences against report.baseline
    reports/seeds.csv                  per policy and seed: that run's metrics
    reports/points.json                per policy: the aggregated points of dvc.yaml's plots
    reports/reward_vs_entropy.png      reward against predictive entropy, with interval bars
    reports/reward_vs_kl.png           reward against KL to the SFT policy, with interval bars
    metrics/summary.json               the aggregates, under dvc.yaml's `metrics:`
    reports/quality.md, quality.csv    per policy, feature space and reference set: precision,
                                       recall, density, coverage (intervals, paired
                                       differences), MAUVE, Vendi, self-BLEU (seed min–max), and
                                       the rank agreement of the policies between spaces
    reports/precision_recall.png       precision against recall, one panel per space and set
    metrics/quality.json               the quality numbers and the agreement, under `metrics:`

    python -m stages report              # or: dvc repro report

**Estimates.** A run (policy π, seed s) has, per eval prompt p, a numerator and a denominator
(:mod:`stages.lib.runs`, shared with the ``frontier`` stage; the summary shows reward, gold,
entropy and KL): reward and gold (the mean score of the prompt's samples, denominator 1), KL
(the mean over the prompt's samples of log π(y|x) − log π_sft(y|x), denominator 1) and entropy
(the predictive entropy summed over the prompt's generated positions, denominator their number:
the token-weighted entropy of ``evaluate``). The run's metric is Σ_p num / Σ_p den (what
``metrics/eval/<policy>/seed-<s>.json`` holds); the policy's value is the mean of its runs'
metrics over the seeds.

**Intervals: a two-level bootstrap over seeds and prompts** (:mod:`stages.lib.bootstrap`,
shared with the ``frontier`` stage). Each of ``report.bootstrap``
resamples draws S seeds with replacement from the S seeds and then P prompts with replacement
from the P eval prompts, and recomputes the policy's value on the resampled seeds, each on the
resampled prompts (a prompt drawn twice counts twice); the 95% interval is the 2.5th to 97.5th
percentile of these values. The prompt draw is shared by the resampled seeds, since every seed
evaluates the *same* prompts (prompts and seeds are crossed, not nested; independent prompt
draws per seed would count the S × P cells as S × P distinct prompts and shrink the prompt part
of the interval by √S), and by every policy, so the intervals use common resamples. With
identical seeds the interval is the prompt bootstrap; with identical prompts it is the seed
bootstrap. With 3 seeds the seed part is coarse (10 distinct seed multisets; the bootstrap
variance of a mean of S values is (S − 1)/S of the plug-in one).

**Paired differences** against ``report.baseline`` (``dpo``): per seed and prompt, the
difference of the two policies' numerators/denominators on the same prompt and seed, i.e. the
value of π minus the baseline's, recomputed on every resample (same seeds, same prompts); an
interval that excludes 0 is marked in the table. Identical policies give exactly 0 with a
zero-width interval.

The reward-vs-entropy plot draws the aggregated reward against the aggregated entropy with both
intervals as bars, faint dots for the single runs, and the original's figure: a quadratic fit
through the *divergence family* of the sigmoid (DPO-form) loss — the alpha variants plus its
limits, reverse KL (alpha → 0, i.e. DPO) and forward KL (alpha → 1), as in the f-DPO paper's
reward/entropy frontier — fitted to the aggregated points; only plain sigmoid variants
(:func:`plain_sigmoid`: no SFT term, no label smoothing, no curriculum). Hinge, IPO and
Jensen-Shannon variants and SFT are shown as points but not fitted. It is a labelled
reproduction of the original's figure, not a frontier: the ``frontier`` stage draws the Pareto
envelope of non-dominated runs and compares families at matched KL. The fit needs at least
3 family points with distinct entropies.

**Quality and diversity** (issue #28; :mod:`stages.lib.report_quality`): where the runs hold
the quality measures of ``evaluate`` (their metrics files' ``quality`` and the rows' per-prompt
fields, :mod:`stages.lib.quality_reference`), precision and density are per-prompt ratios,
bootstrapped on the summary's resamples; recall and coverage are sets of reference points hit
(:mod:`stages.lib.runs`) and resample the same seeds and the reference points. Both get paired
differences against the baseline; MAUVE, Vendi and self-BLEU get the mean and min–max over
seeds. Spearman's rho between the policies' values in two feature spaces, recomputed on every
replicate, says how far the spaces agree on the ranking. Every run must hold the same quality
measures, or none (one-line error naming the file); with none, quality.md says so in one line,
quality.csv is its header, metrics/quality.json is ``{}`` and precision_recall.png says "no
quality measures".

**External policies** (``external`` in params.yaml: folders under ``models/external``, evaluated
by ``evaluate-external@<name>-<seed>``) are reported like variants, labelled ``external`` in
the loss column and drawn as grey diamonds; they have no align run (no val accuracy).
**On-policy policies** (issue #30, :mod:`stages.lib.online_policies`, none in the demo): every
round of ``online.variants`` (``online-<v>-r<r>``, labelled with its variant's loss) and every
RLOO setting (``rloo-<setting>``, loss ``rloo``) are read from ``data/eval`` and
``metrics/eval`` like a variant, with paired differences against the baseline, and named in a
closing note of the summary; no align run behind them either. **Without
a reward model** (``evaluate --no-reward``) reward is shown as ``n/a`` in the tables (never 0),
``metrics/summary.json`` has no reward keys, and the reward plots say that reward is not
available.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from stages.lib import paths
from stages.lib.bootstrap import Resamples, draw_resamples
from stages.lib.common import atomic_path, write_json
from stages.lib.config import (
    ReportConfig,
    load_params,
    read_external,
    read_section,
    read_seed,
    read_seeds,
)
from stages.lib.online_policies import OnlineCurve, check_names, online_curves, online_labels
from stages.lib.online_policies import summary_note as online_note
from stages.lib.report_plots import precision_recall_png, scatter_png
from stages.lib.report_quality import COLUMNS as QUALITY_COLUMNS
from stages.lib.report_quality import (
    agreement,
    csv_rows,
    quality_markdown,
    quality_metrics,
    quality_rows,
    read_layout,
)
from stages.lib.report_tables import (
    COLUMNS,
    ESTIMATES,
    EXTERNAL,
    MEANS,
    SEED_COLUMNS,
    sft_warning,
    summary_markdown,
    summary_metrics,
    write_csv,
)
from stages.lib.runs import Run, check_runs, estimate, eval_stage, paired, read_eval, stack
from stages.lib.tables import plural
from stages.lib.variants import SFT, read_variants

REPORTS = paths.REPORTS_DIR
QUALITY_METRICS = paths.METRICS_DIR / "quality.json"
#: Fields of a run's metrics file that must be finite numbers (``reward`` too, unless null: no
#: reward model).
REQUIRED = ("entropy", "nll", "kl", "distinct_2", "length", "n_prompts", "n_samples")
#: The divergences of the sigmoid-loss family that the original's quadratic fit goes through.
FAMILY_DIVERGENCES = ("reverse_kl", "alpha", "forward_kl")


# --------------------------------------------------------------------------- labels


def variant_info(params: dict) -> dict[str, dict]:
    """policy -> {loss, divergence, alpha} for ``sft``, every variant of ``align.variants``
    (read as the align stage reads them: :func:`stages.lib.variants.read_variants`), every
    on-policy policy (:func:`stages.lib.online_policies.online_curves`; none in the demo) and
    every external policy."""
    info = {SFT: {"loss": "", "divergence": "", "alpha": None}}
    for name, variant in read_variants(params).items():
        loss = variant.loss()
        info[name] = {"loss": loss.loss, "divergence": loss.divergence, "alpha": loss.alpha}
    curves = online_curves(params)
    check_names(curves, info)
    info.update(online_labels(curves, info))
    for name in read_external(params):
        if name in info:
            raise ValueError(
                f"params: external: {name!r} clashes with the name of a policy (sft or a "
                f"variant of align.variants)"
            )
        info[name] = {"loss": EXTERNAL, "divergence": "", "alpha": None}
    return info


# --------------------------------------------------------------------------- reading runs


@dataclass
class PolicyRun(Run):
    """A :class:`stages.lib.runs.Run` with its metrics file and the validation accuracy of its
    align run (None for sft and external policies)."""

    metrics: dict
    val_accuracy: float | None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({what})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_run(policy: str, seed: int, external: bool = False, stage: str | None = None) -> PolicyRun:
    """The files of one (policy, seed) run, checked (one-line errors naming the file);
    ``external``: an external policy's run (no align run); ``stage``: an on-policy policy's
    run, evaluated by that DVC stage (no align run either)."""
    flag = " --external" if external else ""
    what = (
        f"run `dvc repro {stage or eval_stage(policy, seed, external)}` or "
        f"`python -m stages evaluate {policy}{flag} --seed {seed}`"
    )
    metrics_path = paths.eval_metrics(policy, seed)
    metrics = _read_json(metrics_path, what)
    for key in REQUIRED:
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{metrics_path}: field '{key}' missing or not a finite number")
    value = metrics.get("reward")
    if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"{metrics_path}: field 'reward' must be a finite number or null")
    if stage is not None and not paths.eval_samples(policy, seed).is_file():
        raise FileNotFoundError(f"{paths.eval_samples(policy, seed)}: not found ({what})")
    run = read_eval(policy, seed, external)
    samples_path, num = run.path, run.num
    if ("reward" in num) != (metrics.get("reward") is not None):
        raise ValueError(
            f"{samples_path}: rewards {'present' if 'reward' in num else 'absent'} but "
            f"{metrics_path} has reward {metrics.get('reward')!r} (files of different runs?)"
        )
    reward = num["reward"].mean() if "reward" in num else None
    if reward is not None and abs(reward - metrics["reward"]) > 1e-4 * max(1.0, abs(reward)):
        raise ValueError(
            f"{samples_path}: mean reward {reward:.6f} differs from {metrics_path}'s "
            f"{metrics['reward']:.6f} (files of different runs?)"
        )
    val = None
    if policy != "sft" and not external and stage is None:
        align_path = paths.align_metrics(policy, seed)
        align = _read_json(align_path, f"run `dvc repro align@{policy}-{seed}`")
        val = align.get("val_accuracy")
    return PolicyRun(**vars(run), metrics=metrics, val_accuracy=val)


def _check_same_samples(runs: list[PolicyRun]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.metrics["n_samples"] != first.metrics["n_samples"]:
            raise ValueError(
                f"{paths.eval_metrics(run.policy, run.seed)}: n_samples "
                f"{run.metrics['n_samples']} differs from {first.metrics['n_samples']} in "
                f"{paths.eval_metrics(first.policy, first.seed)} (re-run evaluate)"
            )


def read_runs(
    info: dict[str, dict], seeds: list[int], online: list[OnlineCurve] = ()
) -> dict[str, list[PolicyRun]]:
    """policy -> its runs, one per seed (params order), all on the same prompts (``online``:
    the on-policy curves, whose policies have no align run)."""
    of = {p: c for c in online for p in c.policies}
    runs = {
        policy: [
            read_run(
                policy,
                s,
                labels["loss"] == EXTERNAL,
                of[policy].eval_stage(policy, s) if policy in of else None,
            )
            for s in seeds
        ]
        for policy, labels in info.items()
    }
    every = [r for per in runs.values() for r in per]
    check_runs(every)
    _check_same_samples(every)
    _note_extra(info, seeds)
    return runs


def _note_extra(info: dict[str, dict], seeds: list[int]) -> None:
    """Name result files left over from other variants, seeds or layouts (not reported)."""
    folder = paths.METRICS_DIR / "eval"
    read = {paths.eval_metrics(p, s) for p in info for s in seeds}
    extra = sorted(str(p) for p in folder.rglob("*.json") if p not in read)
    if extra:
        print(
            f"note: ignoring {len(extra)} file(s) not in align.variants x seeds: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- bootstrap


def estimates(runs: list[Run], base: list[Run], draws: Resamples) -> dict:
    """Per metric of :data:`ESTIMATES`: the value with its interval and the paired difference
    against ``base`` (the baseline's runs, same seeds and prompts) with its interval."""
    ours, theirs = (
        estimate(*stack(runs, ESTIMATES), draws),
        estimate(*stack(base, ESTIMATES), draws),
    )
    out = {}
    for key in ESTIMATES:
        if key not in ours or key not in theirs:
            out.update({f"{key}{s}": None for s in ("", "_lo", "_hi")})
            out.update({f"d_{key}{s}": None for s in ("", "_lo", "_hi", "_excludes_0")})
            continue
        out.update(paired(key, ours[key], theirs[key]))
    return out


def _round(row: dict) -> dict:
    return {k: round(v, 6) + 0.0 if isinstance(v, float) else v for k, v in row.items()}


def aggregate(
    info: dict[str, dict], runs: dict[str, list[PolicyRun]], baseline: str, draws: Resamples
) -> list[dict]:
    """One row per policy (params order): labels, estimates, paired differences, means."""
    rows = []
    for policy, labels in info.items():
        per = runs[policy]
        vals = [r.val_accuracy for r in per if r.val_accuracy is not None]
        row = {"policy": policy, **labels, "n_seeds": len(per)}
        row.update(estimates(per, runs[baseline], draws))
        row.update({k: float(np.mean([r.metrics[k] for r in per])) for k in MEANS})
        row.update(
            val_accuracy=float(np.mean(vals)) if vals else None,
            val_accuracy_min=min(vals) if vals else None,
            val_accuracy_max=max(vals) if vals else None,
            n_prompts=per[0].metrics["n_prompts"],
            n_samples=per[0].metrics["n_samples"],
        )
        rows.append(_round(row))
    return rows


def seed_rows(runs: dict[str, list[PolicyRun]]) -> list[dict]:
    """One row per (policy, seed): that run's own metrics (``reports/seeds.csv``)."""
    out = []
    for per in runs.values():
        for r in per:
            row = {k: r.metrics.get(k) for k in SEED_COLUMNS[2:-1]}
            out.append({"policy": r.policy, "seed": r.seed, **row, "val_accuracy": r.val_accuracy})
    return out


# --------------------------------------------------------------------------- fit


def plain_sigmoid(params: dict) -> set[str]:
    """Variants of the plain sigmoid (DPO-form) loss: loss sigmoid with sft_weight 0,
    label_smoothing 0 and the default shuffled prompt order (no SFT term, no label noise, no
    curriculum), read like the align stage reads them."""
    out = set()
    for name, variant in read_variants(params).items():
        loss = variant.loss()
        if (
            loss.loss == "sigmoid"
            and loss.sft_weight == 0
            and loss.label_smoothing == 0
            and variant.settings.get("curriculum", "shuffle") == "shuffle"
        ):
            out.add(name)
    return out


def family_fit(
    rows: list[dict], plain: set[str] | None = None
) -> tuple[np.ndarray, list[str]] | None:
    """Quadratic fit reward(entropy) over the sigmoid-loss divergence family (only the policies
    in ``plain`` when given: :func:`plain_sigmoid`); None if < 3 distinct entropies. Returns
    the coefficients (highest power first) and the fitted policies."""
    fam = [r for r in rows if r["loss"] == "sigmoid" and r["divergence"] in FAMILY_DIVERGENCES]
    if plain is not None:
        fam = [r for r in fam if r["policy"] in plain]
    fam = [r for r in fam if r["reward"] is not None]  # no reward model: nothing to fit
    if len({round(r["entropy"], 9) for r in fam}) < 3:
        return None
    coef = np.polyfit([r["entropy"] for r in fam], [r["reward"] for r in fam], 2)
    return coef, [r["policy"] for r in fam]


# --------------------------------------------------------------------------- stage


def _baseline(cfg: ReportConfig, info: dict[str, dict]) -> str:
    if cfg.baseline not in info or cfg.baseline == "sft":
        variants = ", ".join(p for p in info if p != "sft")
        raise ValueError(
            f"params: report.baseline: must be a variant of align.variants ({variants}), "
            f"got {cfg.baseline!r}"
        )
    return cfg.baseline


def quality_outputs(
    info: dict[str, dict],
    runs: dict[str, list[PolicyRun]],
    baseline: str,
    draws: Resamples,
    rows: list[dict],
    seeds: list[int],
    n: int,
) -> tuple[str, list[dict], dict, tuple]:
    """The quality part (:mod:`stages.lib.report_quality`): quality.md's text, quality.csv's
    rows, metrics/quality.json and the arguments of precision_recall.png (placeholders without
    quality measures); checked and computed before the stage writes anything."""
    layout = read_layout(runs)
    qrows, agree = [], {}
    if layout is not None:
        qrows, ests = quality_rows(info, runs, baseline, layout, draws)
        agree = agreement(ests, layout, list(info))
    counts = {"n_prompts": rows[0]["n_prompts"], "n_samples": rows[0]["n_samples"]}
    text = quality_markdown(qrows, layout, agree, seeds=seeds, baseline=baseline, n=n, **counts)
    return text, csv_rows(qrows, layout), quality_metrics(qrows, layout, agree), (qrows, layout)


def read_sft_warning() -> str | None:
    """The summary's warning line from ``metrics/sft.json`` (:func:`sft_warning`: the SFT
    policy's held-out perplexity above its vocabulary size or ``sft.max_perplexity``), printed
    to stderr too; None without one or without the file (the report does not need it)."""
    path = paths.metrics_file("sft")
    if not path.is_file():
        return None
    line = sft_warning(_read_json(path, "the sft stage's metrics"), str(path))
    if line is not None:
        print(f"report: warning: {line.removeprefix('**Warning:** ')}", file=sys.stderr)
    return line


def report(params: dict, out: Path = REPORTS) -> list[dict]:
    """Run the stage; returns the aggregated rows it reported."""
    info, seeds = variant_info(params), read_seeds(params)
    cfg = read_section(params, "report", ReportConfig)
    baseline = _baseline(cfg, info)
    online = online_curves(params)
    runs = read_runs(info, seeds, online)
    n_prompts = len(runs[SFT][0].prompt_ids)
    draws = draw_resamples(len(seeds), n_prompts, cfg.bootstrap, read_seed(params))
    rows, per_seed = aggregate(info, runs, baseline, draws), seed_rows(runs)
    fit = family_fit(rows, plain_sigmoid(params))
    quality = quality_outputs(info, runs, baseline, draws, rows, seeds, cfg.bootstrap)
    warning = read_sft_warning()
    with atomic_path(out / "summary.md") as tmp:
        text = summary_markdown(rows, fit, seeds, baseline, cfg.bootstrap, warning)
        tmp.write_text(text + "\n".join(["", *online_note(online)]) if online else text)
    write_csv(out / "summary.csv", rows, COLUMNS)
    write_csv(out / "seeds.csv", per_seed, SEED_COLUMNS)
    write_json(out / "points.json", rows)
    write_json(paths.SUMMARY_METRICS, summary_metrics(rows))
    scatter_png(
        rows,
        per_seed,
        "entropy",
        out / "reward_vs_entropy.png",
        "predictive entropy (nats/token)",
        fit,
    )
    scatter_png(rows, per_seed, "kl", out / "reward_vs_kl.png", "KL(π ‖ π_sft) (nats/sequence)")
    with atomic_path(out / "quality.md") as tmp:
        tmp.write_text(quality[0])
    write_csv(out / "quality.csv", quality[1], QUALITY_COLUMNS)
    write_json(QUALITY_METRICS, quality[2])
    precision_recall_png(*quality[3], out / "precision_recall.png")
    return rows


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Aggregate every policy over seeds and prompts: tables, plots, metrics/summary.json and
    metrics/quality.json."""
    rows = report(load_params(params))
    typer.echo(
        f"reported {len(rows)} policies x {plural(rows[0]['n_seeds'], 'seed')} -> "
        f"{REPORTS}/summary.md, "
        f"summary.csv, seeds.csv, reward_vs_entropy.png, reward_vs_kl.png, points.json, "
        f"quality.md, quality.csv, precision_recall.png, {paths.SUMMARY_METRICS}, "
        f"{QUALITY_METRICS}"
    )
