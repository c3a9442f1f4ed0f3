"""The ``frontier`` stage's figures: every family's β curve with its band, the Pareto envelope
and the best-of-n baseline, on four planes: reward vs KL, gold vs KL (proxy and truth side by
side), entropy vs KL, reward vs entropy.

``overview.png`` draws every family on one set of four panels; ``families.png`` one row of four
panels per family, with the SFT point, the envelope and best-of-n for context. A family's line
joins its seed-mean points in x order; its band spans each point's 95% interval of y (two-level
bootstrap over seeds and prompts); faint dots are single seeds. The envelope is the staircase
of the non-dominated policies (:func:`stages.lib.frontier.pareto_front`): the best y any policy
reaches within that x budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.lib.common import atomic_path
from stages.lib.frontier import Family

#: (x, y, envelope flag in the points rows, staircase side) of the four panels.
PANELS = (
    ("kl", "reward", "front_reward_kl", "post"),
    ("kl", "gold", "front_gold_kl", "post"),
    ("kl", "entropy", None, None),
    ("entropy", "reward", "front_reward_entropy", "pre"),
)
LABELS = {
    "kl": "KL(π ‖ π_sft) (nats/sequence)",
    "reward": "proxy reward (reward model)",
    "gold": "gold reward (exact scorer)",
    "entropy": "predictive entropy (nats/token)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _family(ax, fam: Family, est: dict, x: str, y: str, color, label: str | None) -> None:
    pts = [est[v] for v in fam.variants]
    xs = np.array([p[x]["value"] for p in pts])
    ys = np.array([p[y]["value"] for p in pts])
    lo = np.array([p[y]["ci"][0] for p in pts])
    hi = np.array([p[y]["ci"][1] for p in pts])
    order = np.argsort(xs, kind="stable")
    for p in pts:
        if p[x]["seeds"] is not None:
            ax.plot(p[x]["seeds"], p[y]["seeds"], ".", color=color, alpha=0.3, ms=3)
    if len(pts) > 1:
        ax.fill_between(xs[order], lo[order], hi[order], color=color, alpha=0.18, lw=0)
        ax.plot(xs[order], ys[order], "-o", color=color, ms=3.5, lw=1.3, label=label)
    else:
        err = [[ys[0] - lo[0]], [hi[0] - ys[0]]]
        ax.errorbar(xs, ys, yerr=err, fmt="s", color=color, ms=4, capsize=2, label=label)


def _context(ax, est: dict, bon: dict, points: list[dict], x: str, y: str, flag, side) -> None:
    sft = est["sft"]
    ax.plot(sft[x]["value"], sft[y]["value"], "*", color="black", ms=10, label="sft", zorder=5)
    if flag is not None and all(flag in p for p in points):
        front = sorted((p for p in points if p[flag]), key=lambda p: p[x])
        ax.step(
            [p[x] for p in front],
            [p[y] for p in front],
            where=side,
            color="0.35",
            ls="--",
            lw=1,
            label="Pareto envelope",
            zorder=4,
        )
    if x == "kl" and all(y in e for e in bon.values()):
        ks = [e["kl"]["value"] for e in bon.values()]
        vs = [e[y]["value"] for e in bon.values()]
        err = np.array(
            [[e[y]["value"] - e[y]["ci"][0], e[y]["ci"][1] - e[y]["value"]] for e in bon.values()]
        ).T
        ax.errorbar(
            ks,
            vs,
            yerr=err,
            fmt="-D",
            color="black",
            ms=3,
            lw=1,
            capsize=2,
            label="best-of-n (sft)",
            zorder=5,
        )
        for n, k, v in zip(bon, ks, vs):
            ax.annotate(f"n={n}", (k, v), textcoords="offset points", xytext=(3, -9), fontsize=6)


def _panel(ax, x: str, y: str, metrics: list[str]) -> bool:
    ax.set_xlabel(LABELS[x], fontsize=8)
    ax.set_ylabel(LABELS[y], fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if y not in metrics or x not in ("kl", *metrics):
        ax.text(0.5, 0.5, f"no {y} scores", ha="center", va="center", transform=ax.transAxes)
        return False
    return True


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def overview_png(
    path: Path, families: list[Family], est: dict, bon: dict, points: list[dict], metrics
) -> None:
    """Every family on the four panels, with SFT, the envelope and best-of-n."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=100)
    colors = _colors(len(families))
    for ax, (x, y, flag, side) in zip(axes.ravel(), PANELS):
        if not _panel(ax, x, y, metrics):
            continue
        for fam, color in zip(families, colors):
            _family(ax, fam, est, x, y, color, f"{fam.name} ({fam.n_betas} β)")
        _context(ax, est, bon, points, x, y, flag, side)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(
        "β curves per family: seed means, bands = 95% intervals over seeds and prompts, "
        "dots = single seeds",
        fontsize=10,
    )
    fig.subplots_adjust(bottom=0.16)
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def families_png(
    path: Path, families: list[Family], est: dict, bon: dict, points: list[dict], metrics
) -> None:
    """One row of the four panels per family, with SFT, the envelope and best-of-n."""
    plt = _plt()
    n = len(families)
    fig, axes = plt.subplots(n, 4, figsize=(16, 3.0 * n), dpi=80, squeeze=False)
    for row, (fam, color) in zip(axes, zip(families, _colors(n))):
        for ax, (x, y, flag, side) in zip(row, PANELS):
            if not _panel(ax, x, y, metrics):
                continue
            _family(ax, fam, est, x, y, color, fam.name)
            _context(ax, est, bon, points, x, y, flag, side)
            betas = ", ".join("–" if b is None else f"{b:g}" for b in fam.betas)
            ax.set_title(f"{fam.name}: β {betas}", fontsize=8)
        row[0].legend(fontsize=6, loc="best")
    _save(fig, path)
    plt.close(fig)
