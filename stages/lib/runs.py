"""Evaluated runs as ``[seeds × prompts]`` arrays, every per-prompt metric defined once, and the
estimates over seeds and prompts; shared by ``report`` and ``frontier``.

A run is one ``evaluate`` of a policy with one seed: ``data/eval/<policy>/seed-<s>.jsonl``, one
row per eval prompt. Every metric is a ratio per prompt, a numerator over a denominator
(:data:`METRICS`); a run's value is Σ_p num / Σ_p den and a policy's the mean over its seeds, with
intervals from the two-level bootstrap (:mod:`stages.lib.bootstrap`)::

    runs = load_runs(["sft", "dpo"], seeds=[0, 1, 2])   # policy -> [Run], same prompts checked
    num, den = stack(runs["dpo"], METRICS)              # metric -> [S, P] (where every run has it)
    est = estimate(num, den, draws)                     # metric -> value, replicates, interval

A metric added to :func:`per_prompt` (and :data:`METRICS`) is read by both stages: ``frontier``
compares every metric along the β curves, ``report`` tabulates those of its summary columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.lib import paths
from stages.lib.bootstrap import Resamples, interval, point_estimate, replicates
from stages.lib.contracts import EVALUATION, read_rows

#: Every per-prompt metric, numerator / denominator per eval prompt (:func:`per_prompt`).
METRICS = {
    "reward": "mean reward-model score of the prompt's samples / 1 (only with a reward model)",
    "gold": "mean gold score of the prompt's samples / 1 (only with a gold scorer)",
    "entropy": "predictive entropy summed over the generated positions / their number",
    "kl": "mean over the prompt's samples of log π(y|x) − log π_sft(y|x) / 1 (0 for sft)",
    "entropy_first_k": "entropy summed over the first k generated positions / their number",
    "context_entropy": "entropy summed over the fixed context's tokens / their number",
}


def per_prompt(rows: list[dict], *, sft: bool, where: str) -> tuple[dict, dict]:
    """Per-prompt numerators and denominators of one evaluate run's rows (see :data:`METRICS`):
    ``reward`` where every row has rewards, ``gold`` where every row has gold scores,
    ``entropy_first_k`` where every row has it, ``context_entropy`` where any row has it (the
    first ``evaluate.fixed_contexts`` prompts; 0 over 0 for the others); ``where`` names the
    file in errors."""
    if not sft and any("logp_sft" not in r for r in rows):
        raise ValueError(f"{where}: field 'logp_sft' missing (kl of an aligned policy needs it)")
    ones = np.ones(len(rows))
    num, den = {}, {}
    if all("rewards" in r for r in rows):  # none without a reward model
        num["reward"], den["reward"] = np.array([np.mean(r["rewards"]) for r in rows]), ones
    if all("gold" in r for r in rows):
        num["gold"], den["gold"] = np.array([np.mean(r["gold"]) for r in rows]), ones
    num["entropy"] = np.array([np.dot(r["entropy"], r["n_generated"]) for r in rows], dtype=float)
    den["entropy"] = np.array([sum(r["n_generated"]) for r in rows], dtype=float)
    num["kl"] = (
        np.zeros(len(rows))
        if sft
        else np.array([np.mean(np.subtract(r["logp"], r["logp_sft"])) for r in rows])
    )
    den["kl"] = ones
    if all("entropy_first_k" in r and "n_first_k" in r for r in rows):  # stages.lib.evaluate
        num["entropy_first_k"] = np.array(
            [np.dot(r["entropy_first_k"], r["n_first_k"]) for r in rows], dtype=float
        )
        den["entropy_first_k"] = np.array([sum(r["n_first_k"]) for r in rows], dtype=float)
    if any("context_entropy" in r for r in rows):
        tokens = np.array([r.get("context_tokens", 0) for r in rows], dtype=float)
        num["context_entropy"] = np.array([r.get("context_entropy", 0.0) for r in rows]) * tokens
        den["context_entropy"] = tokens
    return num, den


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One (policy, seed) evaluation: its samples file, prompt ids and the per-prompt
    numerators and denominators of :func:`per_prompt` (metric -> [P])."""

    policy: str
    seed: int
    path: Path
    prompt_ids: list[str]
    num: dict[str, np.ndarray]
    den: dict[str, np.ndarray]


def eval_stage(policy: str, seed: int, external: bool = False) -> str:
    """The DVC stage that writes the run: ``evaluate-sft@<s>``, ``evaluate@<policy>-<s>`` or
    ``evaluate-external@<name>-<s>``."""
    if external:
        return f"evaluate-external@{policy}-{seed}"
    return f"evaluate-sft@{seed}" if policy == "sft" else f"evaluate@{policy}-{seed}"


def read_eval(policy: str, seed: int, external: bool = False) -> Run:
    """The run of ``policy`` with ``seed`` from ``data/eval/<policy>/seed-<s>.jsonl``."""
    path = paths.eval_samples(policy, seed)
    if not path.is_file():
        stage = eval_stage(policy, seed, external)
        raise FileNotFoundError(f"{path}: not found (run `dvc repro {stage}`)")
    rows = read_rows(path, EVALUATION)
    num, den = per_prompt(rows, sft=policy == "sft", where=str(path))
    return Run(policy, seed, path, [r["prompt_id"] for r in rows], num, den)


def check_same_prompts(ids: list[str], first: list[str], path: Path, first_path: Path) -> None:
    """``ids`` (of the file ``path``) are the prompts ``first`` of ``first_path``, in order."""
    if ids != first:
        raise ValueError(
            f"{path}: its {len(ids)} prompts differ from the {len(first)} of {first_path}; "
            f"every run must evaluate the same prompts (re-run it)"
        )


def check_runs(runs: list[Run]) -> None:
    """Every run evaluated the first run's prompts."""
    for run in runs[1:]:
        check_same_prompts(run.prompt_ids, runs[0].prompt_ids, run.path, runs[0].path)


def load_runs(policies: list[str], seeds: list[int]) -> dict[str, list[Run]]:
    """policy -> its runs, one per seed (in order), all on the same prompts."""
    runs = {p: [read_eval(p, s) for s in seeds] for p in policies}
    check_runs([r for per in runs.values() for r in per])
    return runs


# --------------------------------------------------------------------------- estimates


def stack(runs: list[Run], metrics) -> tuple[dict, dict]:
    """[S, P] numerators and denominators over a policy's runs of each of ``metrics`` that
    every run has (the others are left out)."""
    keep = [m for m in metrics if all(m in r.num for r in runs)]
    num = {m: np.stack([r.num[m] for r in runs]) for m in keep}
    den = {m: np.stack([r.den[m] for r in runs]) for m in keep}
    return num, den


def estimate(num: dict, den: dict, draws: Resamples) -> dict:
    """Per metric (``num``/``den``: metric -> [S, P]): ``value`` (mean over seeds of the runs'
    values), bootstrap replicates ``reps`` [B], per-seed values ``seeds`` and the 95% ``ci``."""
    out = {}
    for m in num:
        reps = replicates(num[m], den[m], draws)
        out[m] = {
            "value": point_estimate(num[m], den[m]),
            "reps": reps,
            "seeds": num[m].sum(1) / den[m].sum(1),
            "ci": interval(reps),
        }
    return out


def excludes_0(lo: float, hi: float) -> bool:
    """Whether an interval of a difference excludes 0 (at 6 decimals, as the tables show it)."""
    return bool(round(lo, 6) > 0 or round(hi, 6) < 0)
