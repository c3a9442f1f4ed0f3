"""``report``: compare every evaluated policy in a table, two plots and DVC plot data.

Reads ``align.variants`` from params.yaml (the policies are ``sft`` plus every variant, labelled
and grouped by their loss, divergence and alpha, read as the align stage reads them: the variant's
keys over ``align.common``) and ``metrics/eval/<policy>.json`` for each;
writes ``reports/summary.md``, ``reports/summary.csv``, ``reports/frontier.png`` (reward vs
entropy), ``reports/reward_vs_kl.png`` and ``reports/frontier.json`` (one row per policy, the data
of the top-level ``plots:`` in dvc.yaml)::

    python -m stages report              # or: dvc repro report

The frontier plot draws reward with its 95% bootstrap interval against predictive entropy and a
quadratic fit through the *divergence family* of the sigmoid (DPO-form) loss: the alpha variants
plus its limits, reverse KL (alpha → 0, i.e. DPO) and forward KL (alpha → 1), as in the f-DPO
paper's reward/entropy frontier. Hinge, IPO and Jensen-Shannon variants and SFT are shown as
points but not fitted. The fit needs at least 3 family points with distinct entropies.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import typer

from stages.lib import paths
from stages.lib.common import atomic_path, write_json
from stages.lib.config import load_params
from stages.lib.losses import LOSS_KEYS, LossConfig, read_loss_config

METRICS_DIR, REPORTS = paths.METRICS_DIR / "eval", paths.REPORTS_DIR
REQUIRED = ("reward", "reward_lo", "reward_hi", "entropy", "nll", "kl", "distinct_2", "length")
COLUMNS = (
    "policy",
    "loss",
    "divergence",
    "alpha",
    "reward",
    "reward_lo",
    "reward_hi",
    "entropy",
    "nll",
    "kl",
    "distinct_1",
    "distinct_2",
    "length",
    "gold",
    "gold_lo",
    "gold_hi",
    "n_prompts",
    "n_samples",
)
FAMILY_DIVERGENCES = ("reverse_kl", "alpha", "forward_kl")


def variant_loss(align: dict, name: str) -> LossConfig:
    """The pair loss of variant ``name``: its ``align.variants.<name>`` loss keys over those of
    ``align.common``, as the align stage reads them (errors name the key where it was set)."""
    common = align.get("common") or {}
    if not isinstance(common, dict):
        raise ValueError(f"params: align.common: must be a mapping, got {common!r}")
    variant = align["variants"][name] or {}
    if not isinstance(variant, dict):
        raise ValueError(f"params: align.variants.{name}: must be a mapping, got {variant!r}")

    def where(key: str) -> str:
        section = (
            f"align.variants.{name}" if key in variant or key not in common else "align.common"
        )
        return f"{section}.{key}"

    merged = {k: v for k, v in {**common, **variant}.items() if k in LOSS_KEYS}
    return read_loss_config(merged, where)


def variant_info(params: dict) -> dict[str, dict]:
    """policy -> {loss, divergence, alpha} for ``sft`` and every key of ``align.variants``."""
    align = params.get("align")
    variants = align.get("variants") if isinstance(align, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"params: align.variants: must be a non-empty mapping, got {variants!r}")
    info = {"sft": {"loss": "", "divergence": "", "alpha": None}}
    for name in variants:
        if name == "sft":
            raise ValueError("params: align.variants.sft: clashes with the SFT policy's name")
        loss = variant_loss(align, name)
        info[str(name)] = {"loss": loss.loss, "divergence": loss.divergence, "alpha": loss.alpha}
    return info


def read_metrics(info: dict[str, dict], folder: Path = METRICS_DIR) -> list[dict]:
    """One row per policy (params order): labels plus the metrics of ``<folder>/<policy>.json``."""
    rows = []
    for policy, labels in info.items():
        path = folder / f"{policy}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run evaluate for policy {policy!r} first)")
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
        for key in REQUIRED:
            value = metrics.get(key) if isinstance(metrics, dict) else None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{path}: field '{key}' missing or not a finite number")
        rows.append({"policy": policy, **labels, **{k: metrics.get(k) for k in COLUMNS[4:]}})
    extra = sorted({p.stem for p in folder.glob("*.json")} - set(info))
    if extra:
        print(
            f"note: ignoring {folder}/{{{','.join(extra)}}}.json (not in align.variants)",
            file=sys.stderr,
        )
    return rows


def family_fit(rows: list[dict]) -> tuple[np.ndarray, list[str]] | None:
    """Quadratic fit reward(entropy) over the sigmoid-loss divergence family; None if < 3 distinct
    entropies. Returns the coefficients (highest power first) and the fitted policies."""
    fam = [r for r in rows if r["loss"] == "sigmoid" and r["divergence"] in FAMILY_DIVERGENCES]
    if len({round(r["entropy"], 9) for r in fam}) < 3:
        return None
    coef = np.polyfit([r["entropy"] for r in fam], [r["reward"] for r in fam], 2)
    return coef, [r["policy"] for r in fam]


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _interval(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "–"
    return f"{r[key]:.3f} [{r[key + '_lo']:.3f}, {r[key + '_hi']:.3f}]"


def summary_markdown(rows: list[dict], fit) -> str:
    """The Markdown summary: one table row per policy, then the frontier fit."""
    head = (
        "| policy | loss | divergence | alpha | reward [95% CI] | entropy | nll | kl | "
        "distinct-2 | length | gold [95% CI] |"
    )
    lines = [
        "# Evaluation summary",
        "",
        f"{rows[0]['n_prompts']} held-out prompts × {rows[0]['n_samples']} samples per "
        "policy, temperature 1; intervals are 95% bootstrap intervals over prompts.",
        "",
        head,
        "|" + "---|" * head.count(" | ") + "---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['loss'] or '–'} | {r['divergence'] or '–'} | "
            f"{'–' if r['alpha'] is None else r['alpha']} | {_interval(r, 'reward')} | "
            f"{_fmt(r['entropy'])} | {_fmt(r['nll'], 2)} | {_fmt(r['kl'])} | "
            f"{_fmt(r['distinct_2'])} | {_fmt(r['length'], 1)} | {_interval(r, 'gold')} |"
        )
    lines.append("")
    if fit is None:
        lines.append(
            "Frontier fit: fewer than 3 sigmoid-loss divergence-family points; not fitted."
        )
    else:
        (a, b, c), names = fit
        a, b, c = (round(float(v), 9) + 0.0 for v in (a, b, c))
        lines.append(
            f"Frontier fit (reward = a·H² + b·H + c over {', '.join(names)}): "
            f"a = {a:.4g}, b = {b:.4g}, c = {c:.4g}."
        )
    return "\n".join(lines) + "\n"


COLORS = {
    "reverse_kl": "tab:blue",
    "forward_kl": "tab:red",
    "jsd": "tab:green",
    "alpha": "tab:purple",
    "": "black",
}
MARKERS = {"sigmoid": "o", "hinge": "s", "ipo": "^", "": "*"}


def _style(r: dict):
    return COLORS.get(r["divergence"], "tab:gray"), MARKERS.get(r["loss"], "D")


def _legend(ax, rows: list[dict]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COLORS.get(d, "tab:gray"), label=d)
        for d in dict.fromkeys(r["divergence"] for r in rows)
        if d
    ]
    handles += [
        Line2D([], [], ls="", marker=MARKERS.get(lo, "D"), color="gray", label=lo)
        for lo in dict.fromkeys(r["loss"] for r in rows)
        if lo
    ]
    handles += [Line2D([], [], ls="", marker="*", color="black", label="sft")]
    handles += [h for h in ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=7, loc="best")


def scatter_png(rows: list[dict], x: str, path: Path, xlabel: str, fit=None) -> None:
    """Reward (with its interval as error bars) against ``x``, points labelled; optional fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for r in rows:
        color, marker = _style(r)
        err = [[r["reward"] - r["reward_lo"]], [r["reward_hi"] - r["reward"]]]
        ax.errorbar(r[x], r["reward"], yerr=err, fmt=marker, color=color, capsize=3, ms=7)
        ax.annotate(
            r["policy"], (r[x], r["reward"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    if fit is not None:
        coef, names = fit
        xs = [r[x] for r in rows if r["policy"] in names]
        grid = np.linspace(min(xs), max(xs), 100)
        ax.plot(
            grid,
            np.polyval(coef, grid),
            "--",
            color="tab:purple",
            lw=1,
            label="quadratic fit: alpha family\n(incl. reverse/forward KL)",
        )
    _legend(ax, rows)
    ax.set_title(
        f"{rows[0]['n_prompts']} eval prompts × {rows[0]['n_samples']} samples, temperature 1",
        fontsize=9,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward (mean, 95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The summary table as CSV (empty cells for missing values)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})


def report(params: dict, metrics_dir: Path = METRICS_DIR, out: Path = REPORTS) -> list[dict]:
    """Run the stage; returns the rows it reported."""
    rows = read_metrics(variant_info(params), metrics_dir)
    fit = family_fit(rows)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows, fit))
    write_csv(out / "summary.csv", rows)
    write_json(out / "frontier.json", rows)
    scatter_png(rows, "entropy", out / "frontier.png", "predictive entropy (nats/token)", fit)
    scatter_png(rows, "kl", out / "reward_vs_kl.png", "KL(π ‖ π_sft) (nats/sequence)")
    return rows


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Summarise every policy's evaluation: table, reward-vs-entropy and reward-vs-KL plots."""
    rows = report(load_params(params))
    typer.echo(
        f"reported {len(rows)} policies -> {REPORTS}/summary.md, frontier.png, "
        f"reward_vs_kl.png, frontier.json"
    )
