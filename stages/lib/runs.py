"""Evaluated runs as ``[seeds × prompts]`` arrays, every per-prompt metric defined once, and the
estimates over seeds and prompts; shared by ``report`` and ``frontier``.

A run is one ``evaluate`` of a policy with one seed: ``data/eval/<policy>/seed-<s>.jsonl``, one
row per eval prompt. Every metric is a ratio per prompt, a numerator over a denominator
(:data:`METRICS`); a run's value is Σ_p num / Σ_p den and a policy's the mean over its seeds, with
intervals from the two-level bootstrap (:mod:`stages.lib.bootstrap`)::

    runs = load_runs(["sft", "dpo"], seeds=[0, 1, 2])   # policy -> [Run], same prompts checked
    num, den = stack(runs["dpo"], METRICS)              # metric -> [S, P] (where every run has it)
    steps = read_trajectory("dpo", 0)                   # [(step, Run)] of its checkpoints
    est = estimate(num, den, draws)                     # metric -> value, replicates, interval

A metric added to :func:`per_prompt` (and :data:`METRICS`) is read by both stages: ``frontier``
compares every metric along the β curves, ``report`` tabulates those of its summary columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.lib import paths
from stages.lib.bootstrap import (
    Resamples,
    interval,
    point_estimate,
    replicates,
    set_replicates,
)
from stages.lib.contracts import EVALUATION, read_rows

#: Every per-prompt metric, numerator / denominator per eval prompt (:func:`per_prompt`).
METRICS = {
    "reward": "mean reward-model score of the prompt's samples / 1 (only with a reward model)",
    "gold": "mean gold score of the prompt's samples / 1 (only with a gold scorer)",
    "entropy": "predictive entropy summed over the generated positions / their number",
    "kl": "mean over the prompt's samples of log π(y|x) − log π_sft(y|x) / 1 (0 for sft)",
    "entropy_first_k": "entropy summed over the first k generated positions / their number",
    "context_entropy": "entropy summed over the fixed context's tokens / their number",
    "precision_<space>_<set>": "samples inside a reference k-NN ball / the prompt's samples",
    "density_<space>_<set>": "Σ over samples of the reference balls holding it / k / samples",
}
#: Every set metric: a fraction of the N reference points that any prompt's samples hit
#: (:func:`quality_sets`); bootstrapped over seeds and reference points, not prompts
#: (:func:`stages.lib.bootstrap.set_replicates`).
SET_METRICS = {
    "coverage_<space>_<set>": "reference points whose k-NN ball holds a sample / N",
    "recall_<space>_<set>": "reference points inside a sample's k-NN ball / N",
}


def _quality(rows: list[dict], where: str) -> dict[str, tuple[int, list[dict]]]:
    """``<space>/<set>`` -> (k, its entry per row) of the rows' ``quality`` fields
    (:mod:`stages.lib.quality_reference`); {} when the rows have none."""
    if not any("quality" in r for r in rows):
        return {}
    if not all(isinstance(r.get("quality"), dict) for r in rows):
        raise ValueError(f"{where}: field 'quality' missing in some rows (re-run evaluate)")
    keys = [k for k in rows[0]["quality"] if k != "k"]
    out = {}
    for key in keys:
        entries = [r["quality"].get(key) for r in rows]
        k = rows[0]["quality"].get("k")
        n = entries[0]["n_reference"] if isinstance(entries[0], dict) else None
        for i, (r, e) in enumerate(zip(rows, entries)):
            ok = (
                isinstance(e, dict)
                and r["quality"].get("k") == k
                and e.get("n_reference") == n
                and len(e.get("inside", ())) == len(r["entropy"])
                and all(0 <= j < n for j in (*e.get("covers", ()), *e.get("recalls", ())))
            )
            if not ok or not isinstance(k, int) or k < 1:
                raise ValueError(
                    f"{where}: row {i + 1}: quality {key!r} must hold n_reference, an inside "
                    f"count per sample and reference indices below n_reference, with one k"
                )
        out[key] = (k, entries)
    return out


def _quality_name(measure: str, key: str) -> str:
    return f"{measure}_{key.replace('/', '_')}"


def quality_sets(rows: list[dict], where: str) -> dict[str, np.ndarray]:
    """Per set metric of :data:`SET_METRICS`, the [N, P] matrix of which reference points the
    samples of each prompt hit (a prompt's ``covers`` / ``recalls``); {} without quality."""
    out = {}
    for key, (_, entries) in _quality(rows, where).items():
        for measure, field in (("coverage", "covers"), ("recall", "recalls")):
            hits = np.zeros((entries[0]["n_reference"], len(rows)), dtype=bool)
            for p, e in enumerate(entries):
                hits[e[field], p] = True
            out[_quality_name(measure, key)] = hits
    return out


def per_prompt(rows: list[dict], *, sft: bool, where: str) -> tuple[dict, dict]:
    """Per-prompt numerators and denominators of one evaluate run's rows (see :data:`METRICS`):
    ``reward`` where every row has rewards, ``gold`` where every row has gold scores,
    ``entropy_first_k`` where every row has it, ``context_entropy`` where any row has it (the
    first ``evaluate.fixed_contexts`` prompts; 0 over 0 for the others), precision and density
    per space and reference set where the rows have ``quality``; ``where`` names the file in
    errors."""
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
    samples = np.array([len(r["entropy"]) for r in rows], dtype=float)
    for key, (k, entries) in _quality(rows, where).items():
        inside = [np.asarray(e["inside"]) for e in entries]
        num[_quality_name("precision", key)] = np.array([(c > 0).sum() for c in inside], float)
        num[_quality_name("density", key)] = np.array([c.sum() / k for c in inside], float)
        den[_quality_name("precision", key)] = den[_quality_name("density", key)] = samples
    return num, den


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One (policy, seed) evaluation: its samples file, prompt ids, the per-prompt
    numerators and denominators of :func:`per_prompt` (metric -> [P]) and the hit matrices of
    :func:`quality_sets` (metric -> [N, P])."""

    policy: str
    seed: int
    path: Path
    prompt_ids: list[str]
    num: dict[str, np.ndarray]
    den: dict[str, np.ndarray]
    sets: dict[str, np.ndarray]


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
    return read_run(policy, seed, path, sft=policy == "sft")


def read_run(name: str, seed: int, path: Path, sft: bool) -> Run:
    """The :class:`Run` of one evaluation samples file (contract ``EVALUATION``): its prompt
    ids, per-prompt numerators and denominators and quality hit matrices."""
    rows = read_rows(path, EVALUATION)
    num, den = per_prompt(rows, sft=sft, where=str(path))
    sets = quality_sets(rows, str(path))
    return Run(name, seed, path, [r["prompt_id"] for r in rows], num, den, sets)


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


def read_trajectory(variant: str, seed: int, final: Run | None = None) -> list[tuple[int, Run]]:
    """The checkpoints of one align run, ``(step, run)`` in ascending steps ([] without any),
    from ``data/trajectory/<variant>/seed-<s>/``: ``summary.json`` (``steps``) and one
    ``step-<n>.jsonl`` per step, rows as ``data/eval``'s, on the final run's prompts
    (``final``: that run, read here when not given). A missing folder or summary is a
    ``FileNotFoundError`` naming it and the ``evaluate`` stage that writes it; a listed step
    without its file, a file on other prompts or a bad summary a one-line ``ValueError``."""
    folder = paths.trajectory_dir(variant, seed)
    summary = folder / "summary.json"
    for path in (folder, summary):
        if not path.exists():
            stage = eval_stage(variant, seed)
            raise FileNotFoundError(f"{path}: not found (run `dvc repro {stage}`)")
    try:
        info = json.loads(summary.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{summary}: not JSON ({err.msg}, line {err.lineno})") from None
    steps = info.get("steps") if isinstance(info, dict) else None
    ok = (
        isinstance(steps, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in steps)
        and all(a < b for a, b in zip(steps, steps[1:]))
        and info.get("variant") == variant
        and info.get("seed") == seed
    )
    if not ok:
        raise ValueError(
            f"{summary}: must hold variant {variant!r}, seed {seed} and steps, an ascending "
            f"list of integers >= 1 (re-run `dvc repro {eval_stage(variant, seed)}`)"
        )
    if steps and final is None:
        final = read_eval(variant, seed)
    out = []
    for n in steps:
        path = paths.trajectory_samples(variant, seed, n)
        if not path.is_file():
            raise ValueError(
                f"{path}: not found, but {summary} lists step {n} "
                f"(re-run `dvc repro {eval_stage(variant, seed)}`)"
            )
        run = read_run(f"{variant}@{n}", seed, path, sft=False)
        check_same_prompts(run.prompt_ids, final.prompt_ids, path, final.path)
        out.append((n, run))
    return out


# --------------------------------------------------------------------------- estimates


def stack(runs: list[Run], metrics) -> tuple[dict, dict]:
    """[S, P] numerators and denominators over a policy's runs of each of ``metrics`` that
    every run has (the others are left out)."""
    keep = [m for m in metrics if all(m in r.num for r in runs)]
    num = {m: np.stack([r.num[m] for r in runs]) for m in keep}
    den = {m: np.stack([r.den[m] for r in runs]) for m in keep}
    return num, den


def estimate(num: dict, den: dict, draws: Resamples, sets: dict | None = None) -> dict:
    """Per metric (``num``/``den``: metric -> [S, P]; ``sets``: set metric -> [S, N, P] hits,
    :func:`stack_sets`): ``value`` (mean over seeds of the runs' values), bootstrap replicates
    ``reps`` [B], per-seed values ``seeds`` and the 95% ``ci``."""
    out = {}
    for m in num:
        reps = replicates(num[m], den[m], draws)
        out[m] = {
            "value": point_estimate(num[m], den[m]),
            "reps": reps,
            "seeds": num[m].sum(1) / den[m].sum(1),
            "ci": interval(reps),
        }
    for m, hits in (sets or {}).items():
        reps = set_replicates(hits, draws)
        per_seed = hits.any(axis=2).mean(axis=1)
        out[m] = {"value": float(per_seed.mean()), "reps": reps, "seeds": per_seed}
        out[m]["ci"] = interval(reps)
    return out


def stack_sets(runs: list[Run]) -> dict[str, np.ndarray]:
    """[S, N, P] hit matrices over a policy's runs of each set metric every run has."""
    keep = [m for m in runs[0].sets if all(m in r.sets for r in runs)]
    return {m: np.stack([r.sets[m] for r in runs]) for m in keep}


def paired(key: str, e: dict, b: dict) -> dict:
    """The cells of ``key`` for a policy's :func:`estimate` ``e`` against the baseline's ``b``
    (same draws): the value and its 95% interval (``<key>_lo``/``_hi``), the paired difference
    ``d_<key>`` with its interval from the replicates' differences, and whether it excludes 0."""
    d_lo, d_hi = interval(e["reps"] - b["reps"])
    return {
        key: e["value"],
        f"{key}_lo": e["ci"][0],
        f"{key}_hi": e["ci"][1],
        f"d_{key}": e["value"] - b["value"],
        f"d_{key}_lo": d_lo,
        f"d_{key}_hi": d_hi,
        f"d_{key}_excludes_0": excludes_0(d_lo, d_hi),
    }


def excludes_0(lo: float, hi: float) -> bool:
    """Whether an interval of a difference excludes 0 (at 6 decimals, as the tables show it)."""
    return bool(round(lo, 6) > 0 or round(hi, 6) < 0)
