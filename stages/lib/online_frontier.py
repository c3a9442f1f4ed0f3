"""The on-policy curves (issue #30, :mod:`stages.lib.online_policies`) on the ``frontier``: read
off their points with the families' fit machinery, beside the offline families, at the
offline families' KL levels::

    fams = online_families(curves, settings)        # Family-shaped, for points.csv and plots
    fits = online_fits(curves, est, metrics)        # Curves: each iterative variant, RLOO
    traj = online_fits(curves, est, ms, start=est["sft"])   # trajectory frontier: SFT first
    lines = online_markdown(curves, fits, "isotonic")       # the Markdown's section

An on-policy curve is a :class:`stages.lib.matched_kl.Curve` of kind ``online``: a curve from 2
points (rounds 1..R of a variant; RLOO's settings), fitted and compared like a family's β curve
(same fit, same bootstrap replicates, Δ against the baseline family). It never sets the KL
levels: the stage computes them from the offline families' ranges before it adds these curves.
In the β frontier its points are its policies (the SFT policy, its round 0, is a point of no
β curve there); in the trajectory frontier, where every family's curve starts at the SFT policy,
so does every on-policy curve, and K* stays the offline families'.
"""

from __future__ import annotations

from stages.lib.frontier import Family
from stages.lib.matched_kl import Curve, curve
from stages.lib.online_policies import OnlineCurve
from stages.lib.tables import markdown_table, number

#: The ``kind`` of an on-policy :class:`Curve` (a curve from 2 points).
KIND = "online"


def online_families(curves: list[OnlineCurve], settings: dict[str, dict]) -> list[Family]:
    """One :class:`Family` per on-policy curve, for the point rows and the plots: its policies
    as ``variants``, as ``betas`` a round's variant β (``settings``: the variants' loss
    settings) or an RLOO setting's KL coefficient (trl's β), and in ``settings`` the legend
    (``points``) and title (``knobs``) words of :mod:`stages.lib.frontier_plots`."""
    out = []
    for c in curves:
        if c.kind == "rounds":
            betas = tuple(settings[c.variant].get("beta") for _ in c.policies)
            words = (f"{len(c.policies)} rounds", "rounds " + ", ".join(f"{k:g}" for k in c.knobs))
        else:
            betas = tuple(c.knobs)
            words = (
                f"{len(c.policies)} KL coef.",
                "KL coef. " + ", ".join(f"{k:g}" for k in c.knobs),
            )
        tags = (("online", c.kind), ("points", words[0]), ("knobs", words[1]))
        out.append(Family(c.name, tags, c.policies, betas))
    return out


def online_fits(
    curves: list[OnlineCurve], est: dict, metrics: list[str], start: dict | None = None
) -> list[Curve]:
    """A :class:`Curve` of kind :data:`KIND` per on-policy curve through the estimates
    ``est`` of its policies (:func:`stages.lib.runs.estimate`, with per-seed replicates for the
    isotonic fit), ``start`` (the SFT policy's estimate) first when given."""
    out = []
    for c in curves:
        points = [*([start] if start is not None else []), *(est[p] for p in c.policies)]
        out.append(curve(c.name, len(points), points, metrics, kind=KIND))
    return out


def online_markdown(curves: list[OnlineCurve], fits: list[Curve], fit: str, trajectory=False):
    """The Markdown section on the on-policy curves ([] without any): a table of their points
    and KL ranges, and how they are compared (never moving the KL levels)."""
    if not curves:
        return []
    rows = []
    for c, f in zip(curves, fits):
        lo, hi = f.range(fit) if f.is_curve else f.kl_range
        rows.append([c.name, c.describe(), f"{number(lo)} – {number(hi)}"])
    start = (
        "the SFT policy (its round 0, as every family's curve starts there) and then its points"
        if trajectory
        else "its points (the SFT policy, its round 0, is not a point of the β frontier, as "
        "for every family)"
    )
    levels = "K*" if trajectory else "the KL levels"
    return [
        "## On-policy curves (issue #30)",
        "",
        *markdown_table(["curve", "points", f"KL of its points ({fit} fit)"], rows),
        "",
        f"Each on-policy curve runs through {start}, read off with the families' fit on the "
        'same bootstrap replicates; it needs at least 2 points, gets "–" where its range '
        "misses a level (no extrapolation), and its Δ is against the baseline family at the "
        f"same KL. The on-policy curves do not move {levels}: they come from the offline "
        "families alone.",
        "",
    ]
