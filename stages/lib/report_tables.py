"""The ``report`` stage's tables: the columns of ``reports/summary.csv`` and ``seeds.csv``, the
Markdown summary and ``metrics/summary.json``.

Pure formatting of the rows :mod:`stages.report` aggregates (one per policy: labels, estimates
with their 95% intervals, paired differences against the baseline, means); the stage writes
them::

    from stages.lib.report_tables import COLUMNS, summary_markdown, write_csv
    text = summary_markdown(rows, fit, seeds=[0, 1, 2], baseline="dpo", n=1000)
    write_csv(Path("reports/summary.csv"), rows, COLUMNS)
"""

from __future__ import annotations

import csv
from pathlib import Path

from stages.lib.common import atomic_path
from stages.lib.tables import markdown_table, number, plural

#: The metrics aggregated with a bootstrap interval and a paired difference.
ESTIMATES = ("reward", "gold", "entropy", "kl")
#: The loss label of an external policy (models/external/<name>), and what a missing reward shows.
EXTERNAL, NOT_AVAILABLE = "external", "n/a"
#: Metrics of a run's file averaged over seeds without an interval.
MEANS = ("nll", "distinct_1", "distinct_2", "length")
#: The label columns of a policy row, then every column of ``reports/summary.csv``.
LABELS = ("policy", "loss", "divergence", "alpha")
COLUMNS = (
    *LABELS,
    "n_seeds",
    *(f"{m}{s}" for m in ESTIMATES for s in ("", "_lo", "_hi")),
    *MEANS,
    "val_accuracy",
    "val_accuracy_min",
    "val_accuracy_max",
    *(f"d_{m}{s}" for m in ESTIMATES for s in ("", "_lo", "_hi", "_excludes_0")),
    "n_prompts",
    "n_samples",
)
#: The columns of ``reports/seeds.csv``: one row per (policy, seed), that run's own metrics.
SEED_COLUMNS = (
    "policy",
    "seed",
    "reward",
    "reward_lo",
    "reward_hi",
    "gold",
    "gold_lo",
    "gold_hi",
    "entropy",
    "kl",
    *MEANS,
    "val_accuracy",
)


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else number(v, digits)


def _interval(r: dict, key: str) -> str:
    if r.get(key) is None:
        return NOT_AVAILABLE if key == "reward" else "–"
    return f"{number(r[key])} [{number(r[key + '_lo'])}, {number(r[key + '_hi'])}]"


def _range(r: dict) -> str:
    if r["val_accuracy"] is None:
        return "–"
    lo, hi = number(r["val_accuracy_min"]), number(r["val_accuracy_max"])
    return f"{number(r['val_accuracy'])} ({lo}–{hi})"


def _policy_table(rows: list[dict]) -> list[str]:
    head = ["policy", "loss", "divergence", "alpha", "reward [95% CI]", "gold [95% CI]"]
    head += ["entropy [95% CI]", "KL [95% CI]", "nll", "distinct-2", "length"]
    head += ["val accuracy (min–max)"]
    lines = [
        [
            r["policy"],
            r["loss"] or "–",
            r["divergence"] or "–",
            "–" if r["alpha"] is None else str(r["alpha"]),
            *(_interval(r, m) for m in ESTIMATES),
            _fmt(r["nll"], 2),
            _fmt(r["distinct_2"]),
            _fmt(r["length"], 1),
            _range(r),
        ]
        for r in rows
    ]
    return markdown_table(head, lines)


def _difference(r: dict, key: str) -> str:
    if r.get(f"d_{key}") is None:
        return NOT_AVAILABLE if key == "reward" else "–"
    star = " *" if r[f"d_{key}_excludes_0"] else ""
    return f"{r[f'd_{key}']:+.3f} [{r[f'd_{key}_lo']:+.3f}, {r[f'd_{key}_hi']:+.3f}]{star}"


def _difference_table(rows: list[dict], baseline: str) -> list[str]:
    head = ["policy", *(f"Δ {m} [95% CI]" for m in ("reward", "gold", "entropy", "KL"))]
    lines = [
        [r["policy"], *(_difference(r, m) for m in ESTIMATES)]
        for r in rows
        if r["policy"] != baseline
    ]
    return markdown_table(head, lines)


def _excluding_zero(rows: list[dict], baseline: str) -> str:
    found = [
        f"{r['policy']} ({', '.join(m for m in ESTIMATES if r.get(f'd_{m}_excludes_0'))})"
        for r in rows
        if r["policy"] != baseline and any(r.get(f"d_{m}_excludes_0") for m in ESTIMATES)
    ]
    return "; ".join(found) if found else "none"


def _fit_line(fit) -> str:
    if fit is None:
        return "Frontier fit: fewer than 3 sigmoid-loss divergence-family points; not fitted."
    (a, b, c), names = fit
    a, b, c = (round(float(v), 9) + 0.0 for v in (a, b, c))
    return (
        f"Frontier fit, the original's figure (reward = a·H² + b·H + c through the means of "
        f"{', '.join(names)}): a = {a:.4g}, b = {b:.4g}, c = {c:.4g}."
    )


def _reward_note(rows: list[dict]) -> list[str]:
    """A line naming the policies without a reward (no reward model), if any, and the
    external ones."""
    lines = []
    missing = [r["policy"] for r in rows if r["reward"] is None]
    if missing:
        lines += [
            f"Reward {NOT_AVAILABLE} for {', '.join(missing)}: evaluated without a reward "
            "model (`evaluate --no-reward`); entropy, KL, nll and distinct-n are measured as "
            "for every policy.",
            "",
        ]
    external = [r["policy"] for r in rows if r["loss"] == EXTERNAL]
    if external:
        lines += [
            f"External policies (trained elsewhere, `models/external/<name>`, loss column "
            f"`{EXTERNAL}`): {', '.join(external)}.",
            "",
        ]
    return lines


def sft_warning(sft: dict | None, where: str = "metrics/sft.json") -> str | None:
    """The summary's warning line when the ``sft`` stage's metrics (``where``; None: no file)
    say its held-out perplexity is above the vocabulary size or ``sft.max_perplexity``
    (``perplexity_warning``), naming the perplexity, the limit and what to do; else None."""
    if not sft or sft.get("perplexity_warning") is not True:
        return None
    ppl, vocab, limit = sft.get("perplexity"), sft.get("vocab_size"), sft.get("max_perplexity")
    if not isinstance(ppl, (int, float)):
        return (
            f"**Warning:** {where} flags the SFT policy's held-out perplexity (perplexity_warning)."
        )
    above = []
    if isinstance(vocab, int) and ppl > vocab:
        above.append(f"its vocabulary size {vocab} (worse than a uniform guess)")
    if isinstance(limit, (int, float)) and ppl > limit:
        above.append(f"`sft.max_perplexity` {limit:g}")
    return (
        f"**Warning:** the SFT policy's held-out perplexity is {ppl:.2f} ({where}), above "
        f"{' and '.join(above) or 'its limit'}: it fits these texts poorly, and every policy "
        "here starts from it; fine-tune it (more) on them (`sft.epochs`) or pick a model that "
        "fits the data (`sft.model`)."
    )


def _seeds(seeds: list[int]) -> str:
    """``seeds 0, 1, 2. Each value is the mean over the seeds of one run's metric``, or for one
    seed ``seed 0. Each value is that run's metric``."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}. Each value is that run's metric"
    listed = ", ".join(map(str, seeds))
    return f"seeds {listed}. Each value is the mean over the seeds of one run's metric"


def summary_markdown(
    rows: list[dict], fit, seeds: list[int], baseline: str, n: int, warning: str | None = None
) -> str:
    """The Markdown summary: ``warning`` (:func:`sft_warning`) if any, the policy table, the
    paired differences, the frontier fit."""
    r0 = rows[0]
    lines = [
        "# Evaluation summary",
        "",
        *([warning, ""] if warning else []),
        f"{plural(r0['n_prompts'], 'held-out prompt')} × {plural(r0['n_samples'], 'sample')} "
        f"per policy and seed, temperature 1; {_seeds(seeds)}; brackets: 95% interval of a "
        f"two-level bootstrap over seeds and prompts ({plural(n, 'resample')}; "
        "stages/report.py). Entropy: nats per generated token (token-weighted); KL: nats per "
        "sequence; val accuracy: the align run's final validation accuracy (mean, min–max over "
        "seeds).",
        "",
        *_policy_table(rows),
        "",
        *_reward_note(rows),
        f"## Paired differences against {baseline}",
        "",
        f"Policy minus {baseline} on the same seeds and prompts, bootstrapped the same way; "
        "`*`: the 95% interval excludes 0.",
        "",
        *_difference_table(rows, baseline),
        "",
        f"Intervals that exclude 0: {_excluding_zero(rows, baseline)}.",
        "",
        _fit_line(fit),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Rows as CSV (empty cells for missing values)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})


def summary_metrics(rows: list[dict]) -> dict:
    """``metrics/summary.json``: per policy, the numeric aggregates (no labels)."""
    keep = [c for c in COLUMNS if c not in LABELS and not c.endswith("_excludes_0")]
    return {r["policy"]: {k: r[k] for k in keep if r.get(k) is not None} for r in rows}
