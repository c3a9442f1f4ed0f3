"""The confirmatory comparisons of a pre-registered study (docs/protocol.md): bootstrap p-values
of paired differences and Holm's step-down correction over every hypothesis tested.

Pure functions (numpy)::

    p = bootstrap_p(deltas)                 # two-sided p of one paired difference's replicates
    adj, reject = holm([0.001, 0.04, 0.3])  # Holm-adjusted p-values, rejections at alpha 0.05

A hypothesis is one (family, endpoint, KL level) difference against the baseline family. Its
p-value is 2·min(share of replicates with Δ ≤ 0, share with Δ ≥ 0), capped at 1, over the
replicates where both curves reach the level; a cell whose curves reach the level in fewer than
:data:`MIN_COVERAGE` of the replicates is not compared and enters the correction with p = 1 (it
still counts in m, as the protocol fixed the hypotheses before the run).
"""

from __future__ import annotations

import math

import numpy as np

#: Family-wise error rate of the protocol.
ALPHA = 0.05
#: Below this share of replicates with a value a difference is not compared (p = 1).
MIN_COVERAGE = 0.9


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference from its replicates (NaN: no value in
    that replicate, left out): 2·min(P(Δ ≤ 0), P(Δ ≥ 0)), capped at 1; NaN without replicates."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


def holm(p_values, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down procedure (Holm 1979) over m hypotheses: the adjusted p-values
    max_{j <= i} min(1, (m - j + 1) p_(j)) in the input order, and which are rejected at family-wise
    level ``alpha`` (adjusted p <= alpha)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be a list of numbers in [0, 1], got {p_values!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted, adjusted <= alpha


def confirm(cells: list[dict], alpha: float = ALPHA) -> list[dict]:
    """``cells``: one dict per pre-registered hypothesis with ``p`` (:func:`bootstrap_p`) and
    ``coverage`` (share of replicates with a value); returns them with ``p_holm``, ``tested``
    (coverage >= :data:`MIN_COVERAGE`) and ``verdict``: "higher" / "lower" (by the sign of
    ``delta``) when Holm rejects, else "no difference shown" or "not compared"."""
    tested = [c["coverage"] >= MIN_COVERAGE for c in cells]
    p = [c["p"] if ok and not math.isnan(c["p"]) else 1.0 for c, ok in zip(cells, tested)]
    adjusted, reject = holm(p, alpha) if cells else (np.array([]), np.array([], dtype=bool))
    out = []
    for c, ok, adj, rej in zip(cells, tested, adjusted, reject):
        if not ok:
            verdict = "not compared"
        elif rej:
            verdict = "higher" if c["delta"] > 0 else "lower"
        else:
            verdict = "no difference shown"
        out.append({**c, "tested": ok, "p_holm": float(adj), "verdict": verdict})
    return out


def hypotheses(rows: list[dict], families: list[str], endpoints: list[str]) -> list[dict]:
    """The pre-registered cells of matched-KL ``rows`` (:func:`stages.lib.matched_kl.matched_kl`,
    one fit): every (family, endpoint, level) of ``families`` x ``endpoints`` x the rows' levels,
    with its paired difference against the baseline, interval, coverage and p-value (a family's
    row without a value at a level gives coverage 0: not compared)."""
    levels = sorted({r["kl"] for r in rows})
    by = {(r["family"], r["kl"]): r for r in rows}
    cells = []
    for family in families:
        for m in endpoints:
            for i, level in enumerate(levels, start=1):
                r = by.get((family, level), {})
                cells.append(
                    {
                        "family": family,
                        "endpoint": m,
                        "level": i,
                        "kl": level,
                        "delta": r.get(f"d_{m}", math.nan),
                        "lo": r.get(f"d_{m}_lo", math.nan),
                        "hi": r.get(f"d_{m}_hi", math.nan),
                        "coverage": r.get(f"d_{m}_coverage", 0.0),
                        "p": r.get(f"d_{m}_p", math.nan),
                    }
                )
    return cells


#: Columns of ``reports/frontier/confirmatory.csv``.
COLUMNS = (
    *("family", "endpoint", "level", "kl", "delta", "lo", "hi", "coverage", "p"),
    *("tested", "p_holm", "verdict"),
)


def markdown(rows: list[dict], baseline: str, how: str) -> str:
    """``reports/frontier/confirmatory.md``: the verdict of every pre-registered hypothesis."""
    if not rows:
        return (
            "# Confirmatory comparisons\n\nNone in this profile (`frontier.confirmatory` is "
            "empty): every comparison here is exploratory. The study's protocol: "
            "docs/protocol.md.\n"
        )
    n_tested = sum(r["tested"] for r in rows)
    lines = [
        "# Confirmatory comparisons (docs/protocol.md)",
        "",
        f"Δ = family − {baseline} at matched KL ({how}), 95% interval over seeds and prompts, "
        f"two-sided bootstrap p and Holm-adjusted p over all {len(rows)} hypotheses "
        f"(family-wise α = {ALPHA}; {len(rows) - n_tested} not compared: curves reach the "
        f"level in < {MIN_COVERAGE:.0%} of the resamples, counted with p = 1).",
        "",
        "| family | endpoint | level (KL) | Δ [95% CI] | coverage | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = (
            "–" if math.isnan(r["delta"]) else f"{r['delta']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
        )
        p = "–" if math.isnan(r["p"]) else f"{r['p']:.4f}"
        lines.append(
            f"| {r['family']} | {r['endpoint']} | L{r['level']} ({r['kl']:.2f}) | {delta} | "
            f"{r['coverage']:.2f} | {p} | {r['p_holm']:.4f} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def metrics(rows: list[dict]) -> dict:
    """``metrics/frontier.json``'s ``confirmatory`` key: per family, per endpoint and level, Δ,
    the Holm-adjusted p and whether Holm rejects (``dvc metrics diff`` compares them)."""
    out: dict = {}
    for r in rows:
        cell = {
            "delta": r["delta"],
            "p_holm": r["p_holm"],
            "rejected": r["verdict"] in ("higher", "lower"),
        }
        out.setdefault(r["family"], {})[f"{r['endpoint']}_L{r['level']}"] = cell
    return out
