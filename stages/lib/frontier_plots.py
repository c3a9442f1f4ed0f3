"""The ``frontier`` stage's figures: every family's β curve with its band, the Pareto envelope
and the best-of-n baseline, on four planes: reward vs KL, gold vs KL (proxy and truth side by
side), entropy vs KL, reward vs entropy.

``overview.png`` draws every family on one set of four panels; ``families.png`` one row of four
panels per family, with the SFT point, the envelope and best-of-n for context. A family's line
joins its seed-mean points in x order; its band spans each point's 95% interval of y (two-level
bootstrap over seeds and prompts); faint dots are single seeds. The envelope is the staircase
of the non-dominated policies (:func:`stages.lib.frontier.pareto_front`): the best y any policy
reaches within that x budget.

``trajectory.png`` is the trajectory frontier (stages.lib.frontier): one row per family, reward,
gold and entropy_first_k against KL: the seed-mean points (SFT, checkpoints, endpoints), faint
single seeds, the fitted curve of the primary fit (solid) and of the sensitivity fit (dashed),
and the KL levels (dotted); a "no trajectories" notice where there are none.

``precision_recall.png`` is the plane of the generative-modelling literature at matched KL: one
column per KL level, one row per feature space and reference set; in each panel every family's
interpolated (recall, precision) at that level with both 95% intervals as error bars (the
family colours of the other figures) and the SFT policy's point (at KL 0, for reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.lib.common import atomic_path
from stages.lib.frontier import Family, quality_groups
from stages.lib.matched_kl import Curve, fitted

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


def _points(fam: Family) -> str:
    """A legend's count of a family's points: ``3 β``, or an on-policy curve's own words
    (:func:`stages.lib.online_frontier.online_families`)."""
    return dict(fam.settings).get("points") or f"{fam.n_betas} β"


def _knobs(fam: Family) -> str:
    """A panel title's knobs: ``β 0.1, 0.3``, or an on-policy curve's own words."""
    betas = ", ".join("–" if b is None else f"{b:g}" for b in fam.betas)
    return dict(fam.settings).get("knobs") or f"β {betas}"


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
            _family(ax, fam, est, x, y, color, f"{fam.name} ({_points(fam)})")
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
            ax.set_title(f"{fam.name}: {_knobs(fam)}", fontsize=8)
        row[0].legend(fontsize=6, loc="best")
    _save(fig, path)
    plt.close(fig)


def _pr_point(ax, r: dict, prec: str, rec: str, color, marker: str, label: str) -> None:
    """(recall, precision) of a row with its two 95% intervals drawn as lines: from the
    interval's ends, not as ± errors (a set fraction's bootstrap interval need not hold the
    point estimate: :func:`stages.lib.bootstrap.set_replicates`)."""
    x, y = r[rec], r[prec]
    ax.plot([x], [y], marker, color=color, ms=9 if marker == "*" else 5, label=label, zorder=5)
    for (x0, x1), (y0, y1) in (
        ((r.get(f"{rec}_lo"), r.get(f"{rec}_hi")), (y, y)),
        ((x, x), (r.get(f"{prec}_lo"), r.get(f"{prec}_hi"))),
    ):
        if all(_ok(v) for v in (x0, x1, y0, y1)):
            ax.plot([x0, x1], [y0, y1], "-", color=color, lw=1, marker="|" if y0 == y1 else "_")


def _pr_panel(ax, rows: list[dict], colors: dict, sft: dict, prec: str, rec: str) -> None:
    for r in rows:
        if r["status"] == "ok" and _ok(r.get(prec)) and _ok(r.get(rec)):
            _pr_point(ax, r, prec, rec, colors[r["family"]], "o", r["family"])
    if prec in sft and rec in sft:
        point = {}
        for m in (prec, rec):
            point[m] = sft[m]["value"]
            point[f"{m}_lo"], point[f"{m}_hi"] = sft[m]["ci"]
        _pr_point(ax, point, prec, rec, "black", "*", "sft (KL 0)")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def precision_recall_png(
    path: Path, families: list[Family], matched: list[dict], sft: dict, setup: dict
) -> None:
    """Precision against recall at every KL level, per feature space and reference set
    (``setup``: the stage's ``levels`` and ``quality`` metrics); a notice without them."""
    plt = _plt()
    groups = [
        (g, ms[0], ms[1])
        for g, ms in quality_groups(setup["quality"])
        if [m.split("_")[0] for m in ms[:2]] == ["precision", "recall"]
    ]
    if not groups:
        fig, ax = plt.subplots(figsize=(6, 2), dpi=80)
        ax.axis("off")
        ax.text(0.5, 0.5, "no quality measures", ha="center", va="center", fontsize=12)
        _save(fig, path)
        plt.close(fig)
        return
    levels = setup["levels"] or [None]
    colors = dict(zip((f.name for f in families), _colors(len(families))))
    fig, axes = plt.subplots(
        len(groups),
        len(levels),
        figsize=(max(4.2 * len(levels), 6.5), 3.6 * len(groups) + 0.6),
        dpi=90,
        squeeze=False,
    )
    for row, (group, prec, rec) in zip(axes, groups):
        space, _, ref = group.partition("_")
        for ax, level in zip(row, levels):
            rows = [r for r in matched if level is not None and r["kl"] == level]
            _pr_panel(ax, rows, colors, sft, prec, rec)
            what = "no KL level" if level is None else f"KL = {level:.3f}"
            ax.set_title(f"{what}: {space} space, {ref} references", fontsize=8)
            ax.set_xlabel(f"recall ({space}, {ref})", fontsize=8)
            ax.set_ylabel(f"precision ({space}, {ref})", fontsize=8)
    handles: dict = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=7, frameon=False
    )
    fig.suptitle(
        "Precision vs recall at matched KL: each family interpolated along its β curve;\n"
        "error bars = 95% intervals over seeds and prompts (recall: seeds and reference points)",
        fontsize=10,
    )
    rows_of_legend = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, min(0.4, 0.04 * rows_of_legend / len(groups) + 0.03), 1, 0.96))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


#: The measures of ``trajectory.png``, one panel each.
TRAJECTORY_PANELS = ("reward", "gold", "entropy_first_k")
LABELS["entropy_first_k"] = "entropy of the first k tokens (nats/token)"


def _notice(path: Path, text: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2), dpi=80)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    _save(fig, path)
    plt.close(fig)


def trajectory_png(path: Path, curves: list[Curve], setup: dict | None, fit: str) -> None:
    """The trajectory frontier: per family (row) and measure (column) the seed-mean points,
    single seeds, the ``fit`` curve (solid), the other fit's (dashed) and the KL levels; a
    notice where there are no ``curves``."""
    if not curves:
        _notice(path, "no trajectories in this profile")
        return
    plt = _plt()
    other = "linear" if fit == "isotonic" else "isotonic"
    n = len(curves)
    fig, axes = plt.subplots(n, 3, figsize=(13, 3.0 * n + 0.6), dpi=80, squeeze=False)
    for row, c, color in zip(axes, curves, _colors(n)):
        for ax, m in zip(row, TRAJECTORY_PANELS):
            ax.set_xlabel(LABELS["kl"], fontsize=8)
            ax.set_ylabel(LABELS[m], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.set_title(c.name, fontsize=8)
            if m not in c.values:
                ax.text(
                    0.5, 0.5, f"no {m} scores", ha="center", va="center", transform=ax.transAxes
                )
                continue
            if c.seeds is not None:
                ax.plot(
                    c.seeds.kl.ravel(),
                    c.seeds.values[m].ravel(),
                    ".",
                    color=color,
                    alpha=0.25,
                    ms=3,
                )
            ax.plot(c.kl, c.values[m], "o", color=color, ms=4, label="seed-mean points")
            grid = np.linspace(0.0, float(c.kl.max()), 200)
            for f, style in ((fit, "-"), (other, "--")):
                if f == "isotonic" and c.seeds is None:
                    continue
                ax.plot(
                    grid,
                    fitted(c, m, grid, f),
                    style,
                    color=color,
                    lw=1.3 if style == "-" else 1.0,
                    label=f"{f} fit",
                )
            for level in setup["levels"]:
                ax.axvline(level, color="0.5", ls=":", lw=0.8)
        row[0].legend(fontsize=6, loc="best")
    fig.suptitle(
        f"Trajectory frontier: SFT, checkpoints and endpoints per family; {fit} fit (solid), "
        f"{other} (dashed), KL levels (dotted)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
