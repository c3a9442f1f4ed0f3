"""The ``report`` stage's figures: aggregated reward against entropy or KL, and precision
against recall, with intervals.

``reports/reward_vs_entropy.png`` (reward against predictive entropy, with the original's
quadratic fit through the sigmoid-loss divergence family) and ``reports/reward_vs_kl.png``, drawn
from the rows :mod:`stages.report` aggregates and its per-seed rows; ``reports/precision_recall.png``
from the quality rows of :mod:`stages.lib.report_quality`::

    from stages.lib.report_plots import precision_recall_png, scatter_png
    scatter_png(rows, per_seed, "kl", Path("reports/reward_vs_kl.png"), "KL (nats/sequence)")
    precision_recall_png(quality_rows, layout, Path("reports/precision_recall.png"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.lib.common import atomic_path
from stages.lib.report_tables import EXTERNAL

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


def _legend(ax, rows: list[dict], single_seed: bool = True) -> None:
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
    if single_seed:
        handles += [Line2D([], [], ls="", marker=".", color="gray", alpha=0.4, label="single seed")]
    handles += [h for h in ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=7, loc="best")


def _bars(r: dict, key: str) -> list[list[float]]:
    return [[r[key] - r[f"{key}_lo"]], [r[f"{key}_hi"] - r[key]]]


def scatter_png(
    rows: list[dict], per_seed: list[dict], x: str, path: Path, xlabel: str, fit=None
) -> None:
    """Aggregated reward against ``x``, both with their intervals as bars, single runs as faint
    dots, points labelled (external policies as ``<name> (external)``); optional fit (the
    original's figure). Policies without a reward (no reward model) are not drawn; with none
    left the figure says that reward is not available."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    by_policy = {r["policy"]: r for r in rows}
    for s in per_seed:
        if s["reward"] is None:
            continue
        color, _ = _style(by_policy[s["policy"]])
        ax.plot(s[x], s["reward"], ".", color=color, alpha=0.35, ms=4)
    for r in rows:
        if r["reward"] is None:
            continue
        color, marker = _style(r)
        ax.errorbar(
            r[x],
            r["reward"],
            xerr=_bars(r, x),
            yerr=_bars(r, "reward"),
            fmt=marker,
            color=color,
            capsize=3,
            ms=7,
        )
        label = f"{r['policy']} (external)" if r["loss"] == EXTERNAL else r["policy"]
        ax.annotate(
            label, (r[x], r["reward"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    if all(r["reward"] is None for r in rows):
        ax.text(
            0.5,
            0.5,
            "reward not available (no reward model)",
            transform=ax.transAxes,
            ha="center",
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
            label="quadratic fit through the means (the original's figure):\n"
            "alpha family incl. reverse/forward KL",
        )
    _legend(ax, rows)
    r0 = rows[0]
    ax.set_title(
        f"mean over {r0['n_seeds']} seeds, 95% intervals over seeds and prompts; "
        f"{r0['n_prompts']} eval prompts × {r0['n_samples']} samples, temperature 1",
        fontsize=8,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def precision_recall_png(rows: list[dict], layout, path: Path) -> None:
    """Precision (y) against recall (x), as the GAN literature draws them: one panel per space
    (rows) and reference set (columns), one point per policy with both 95% intervals as bars,
    styled like :func:`scatter_png`. Without quality measures (``layout`` None) the figure
    says so (the DVC output must exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.lib.quality import metric_name

    spaces, sets = (layout.spaces, layout.sets) if layout is not None else ((), ())
    fig, axes = plt.subplots(
        max(1, len(spaces)),
        max(1, len(sets)),
        figsize=(4.5 * max(1, len(sets)), 4 * max(1, len(spaces))),
        dpi=120,
        squeeze=False,
    )
    if not spaces or not sets:
        axes[0][0].text(
            0.5, 0.5, "no quality measures", transform=axes[0][0].transAxes, ha="center"
        )
        axes[0][0].set_axis_off()
    for i, space in enumerate(spaces):
        for j, ref in enumerate(sets):
            ax = axes[i][j]
            p, r = metric_name("precision", space, ref), metric_name("recall", space, ref)
            if p not in layout.knn or r not in layout.knn:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
                continue
            for row in rows:
                color, marker = _style(row)
                # bars span [lo, hi] as they are: a percentile interval need not hold its
                # value, which bars relative to the point cannot draw
                ax.errorbar(
                    (row[f"{r}_lo"] + row[f"{r}_hi"]) / 2,
                    (row[f"{p}_lo"] + row[f"{p}_hi"]) / 2,
                    xerr=(row[f"{r}_hi"] - row[f"{r}_lo"]) / 2,
                    yerr=(row[f"{p}_hi"] - row[f"{p}_lo"]) / 2,
                    fmt="none",
                    ecolor=color,
                    capsize=3,
                    alpha=0.7,
                )
                ax.plot(row[r], row[p], marker, color=color, ms=6)
                label = f"{row['policy']} (external)" if row["loss"] == EXTERNAL else row["policy"]
                ax.annotate(
                    label, (row[r], row[p]), textcoords="offset points", xytext=(4, 3), fontsize=6
                )
            ax.set_title(f"space {space}, reference set {ref}", fontsize=9)
            ax.set_xlabel("recall (mean over seeds, 95% CI)")
            ax.set_ylabel("precision (mean over seeds, 95% CI)")
            ax.grid(alpha=0.3)
    if spaces and sets and rows:
        _legend(axes[0][-1], rows, single_seed=False)
        r0 = rows[0]
        fig.suptitle(
            f"precision against recall of the samples vs held-out human reviews: mean over "
            f"{r0['n_seeds']} seeds, 95% intervals over seeds and prompts (recall: seeds and "
            "reference points)",
            fontsize=9,
        )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
