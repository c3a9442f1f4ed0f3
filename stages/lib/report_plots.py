"""The ``report`` stage's figures: aggregated reward against entropy or KL, and precision
against recall, with intervals.

``reports/reward_vs_entropy.png`` (reward against predictive entropy, with the original's
quadratic fit through the sigmoid-loss divergence family) and ``reports/reward_vs_kl.png``, drawn
from the rows :mod:`stages.report` aggregates and its per-seed rows; ``reports/precision_recall.png``
from the quality rows of :mod:`stages.lib.report_quality`. Point labels never overlap: each
goes to the first free place around its point (:func:`label_offsets`), so an external policy
that lands on the SFT policy's point gets its label beside, not on top of, the SFT's::

    from stages.lib.report_plots import precision_recall_png, scatter_png
    scatter_png(rows, per_seed, "kl", Path("reports/reward_vs_kl.png"), "KL (nats/sequence)")
    precision_recall_png(quality_rows, layout, Path("reports/precision_recall.png"))
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stages.lib.common import atomic_path
from stages.lib.report_tables import EXTERNAL
from stages.lib.tables import plural

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


def _label_box(x: float, y: float, dx: float, dy: float, ha: str, width: float, height: float):
    left = x + dx - (width if ha == "right" else 0.0)
    return left, y + dy, left + width, y + dy + height  # the text's baseline at y + dy


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_offsets(
    points: list[tuple[float, float]],
    labels: list[str],
    fontsize: float,
    first: tuple[float, float] = (5, 4),
) -> list[tuple[float, float, str]]:
    """Per label, the offset of its text's baseline from its point (dx, dy, in typographic
    points) and its horizontal alignment, so that no two labels overlap and each sits nearer
    its own point than any other: the first of above right (``first``, where every label went
    before), above left, below right, below left whose box (about 0.6 em per character,
    1.2 em high) overlaps no label placed before it (in order) and the middle of whose side
    next to its point is no nearer another point; else the first that overlaps no label; else
    above right moved up a line at a time until free. ``points`` are where the points are
    drawn, in typographic points (display units * 72 / dpi)."""
    height = 1.2 * fontsize
    dx, dy = first
    places = [(dx, dy, "left"), (-dx, dy, "right")]
    places += [(dx, -dy - height, "left"), (-dx, -dy - height, "right")]
    placed: list[tuple] = []
    out = []
    for i, ((x, y), label) in enumerate(zip(points, labels, strict=True)):
        width = 0.6 * fontsize * len(label)
        others = [p for j, p in enumerate(points) if j != i]
        stacked = [(dx, dy + k * height, "left") for k in range(1, len(points) + 1)]
        free, own = [], []
        for place in places + stacked:
            box = _label_box(x, y, *place, width, height)
            if not any(_overlap(box, other) for other in placed):
                free.append(place)
            # the middle of the label's side next to its point: no nearer another point
            cx, cy = box[0] if place[2] == "left" else box[2], (box[1] + box[3]) / 2
            mine = math.hypot(cx - x, cy - y)
            if all(math.hypot(cx - ox, cy - oy) >= mine for ox, oy in others):
                own.append(place)
        place = next((p for p in places if p in free and p in own), None)
        place = place or (free[0] if free else stacked[-1])
        placed.append(_label_box(x, y, *place, width, height))
        out.append(place)
    return out


def annotate_points(
    ax,
    points: list[tuple[float, float]],
    labels: list[str],
    fontsize: float,
    first: tuple[float, float] = (5, 4),
) -> None:
    """Label the data ``points`` of ``ax`` so that no two labels overlap
    (:func:`label_offsets`, from where the points are drawn now: call it once the axes limits
    are final)."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before reading positions
    scale = 72.0 / ax.figure.dpi
    shown = [tuple(float(v) * scale for v in ax.transData.transform(p)) for p in points]
    places = label_offsets(shown, labels, fontsize, first)
    for point, label, (dx, dy, ha) in zip(points, labels, places, strict=True):
        ax.annotate(
            label, point, textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=fontsize
        )


def _label(r: dict) -> str:
    return f"{r['policy']} (external)" if r["loss"] == EXTERNAL else r["policy"]


def _bars(r: dict, key: str) -> list[list[float]]:
    return [[r[key] - r[f"{key}_lo"]], [r[f"{key}_hi"] - r[key]]]


def scatter_figure(rows: list[dict], per_seed: list[dict], x: str, xlabel: str, fit=None):
    """Aggregated reward against ``x``, both with their intervals as bars, single runs as faint
    dots, points labelled (external policies as ``<name> (external)``); optional fit (the
    original's figure). Policies without a reward (no reward model) are not drawn; with none
    left the figure says that reward is not available. Returns the open figure."""
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
    r0 = rows[0]
    ax.set_title(
        f"mean over {plural(r0['n_seeds'], 'seed')}, 95% intervals over seeds and prompts; "
        f"{plural(r0['n_prompts'], 'eval prompt')} × {plural(r0['n_samples'], 'sample')}, "
        "temperature 1",
        fontsize=8,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()  # the axes' final size first: labels are placed where points are drawn
    shown = [r for r in rows if r["reward"] is not None]
    annotate_points(ax, [(r[x], r["reward"]) for r in shown], [_label(r) for r in shown], 8)
    _legend(ax, rows)
    fig.tight_layout()
    return fig


def scatter_png(
    rows: list[dict], per_seed: list[dict], x: str, path: Path, xlabel: str, fit=None
) -> None:
    """:func:`scatter_figure` saved as ``path``."""
    import matplotlib.pyplot as plt

    fig = scatter_figure(rows, per_seed, x, xlabel, fit)
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
            points = [(row[r], row[p]) for row in rows]
            annotate_points(ax, points, [_label(row) for row in rows], 6, first=(4, 3))
            ax.set_title(f"space {space}, reference set {ref}", fontsize=9)
            ax.set_xlabel("recall (mean over seeds, 95% CI)")
            ax.set_ylabel("precision (mean over seeds, 95% CI)")
            ax.grid(alpha=0.3)
    if spaces and sets and rows:
        _legend(axes[0][-1], rows, single_seed=False)
        r0 = rows[0]
        fig.suptitle(
            f"precision against recall of the samples vs held-out human reviews: mean over "
            f"{plural(r0['n_seeds'], 'seed')},\n95% intervals over seeds and prompts (recall: "
            "over seeds and reference points)",
            fontsize=9,
        )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
