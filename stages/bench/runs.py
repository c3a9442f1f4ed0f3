"""Benchmark: the wall time of whole demo runs, process start to metrics written.

A *run* is what the pipeline does for one (variant, seed): ``python -m stages align <variant>
--seed <s>`` then ``python -m stages evaluate <variant> --seed <s>``, each a fresh process, as
``dvc repro`` starts them. Runs execute in a scratch workspace holding links to the demo's
inputs (``models/sft``, ``models/reward``, ``data/preferences.jsonl``, ``data/reference.jsonl``,
``data/prompts``, ``data/prepared/test.jsonl``) and the code's own ``params.yaml``, so the
repository's outputs are never touched. ``baseline`` names a commit whose code runs the same way
from a clone, side by side in the same benchmark run::

    from stages.bench.runs import run_wall_times
    result = run_wall_times(Path("."), variant="dpo", seed=0, baseline="05687a1")
    result["speedup"]                      # baseline total / this tree's total

``warm`` times the same run of this tree with ``STAGES_WARM=1`` (:mod:`stages.warm`): each
command forks from a server that has torch and transformers imported, started once before the
timed runs (its start is reported apart).

``side_by_side`` also times two runs (seeds ``seed`` and ``seed + 1``) one after the other with
every core, against the same two started together with one thread each (``OMP_NUM_THREADS=1``),
which is what ``dvc queue start -j 2`` does with queued experiments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What one run reads, relative to the repository root.
INPUTS = (
    "models/sft",
    "models/reward",
    "data/preferences.jsonl",
    "data/reference.jsonl",
    "data/prompts",
    "data/prepared/test.jsonl",  # evaluate's context entropy reads the eval prompts' reviews
    "data/quality",  # evaluate's quality measures (a baseline commit without them ignores it)
)


def workspace(repo: Path, code: Path, folder: Path) -> Path:
    """A scratch folder with links to ``repo``'s run inputs and a copy of ``code``'s params."""
    missing = [p for p in INPUTS if not (repo / p).exists()]
    if missing:
        raise FileNotFoundError(f"bench runs: {repo / missing[0]} not found (run `dvc repro`)")
    folder.mkdir(parents=True)
    for rel in INPUTS:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to((repo / rel).resolve())
    shutil.copy(code / "params.yaml", folder / "params.yaml")
    return folder


def _env(code: Path, warm_dir: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "TQDM_DISABLE": "1"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env["STAGES_WARM"] = "1" if warm_dir else "0"  # cold unless asked, whatever the caller set
    if warm_dir:
        env["STAGES_WARM_DIR"] = str(warm_dir)
    return env


def _start(
    code: Path,
    folder: Path,
    args: list[str],
    threads: int | None,
    warm_dir: Path | None = None,
    module: str = "stages",
) -> subprocess.Popen:
    env = _env(code, warm_dir)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        tail = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise ValueError(f"bench runs: {what} failed: {tail[0]}")


def timed_run(
    code: Path,
    folder: Path,
    variant: str,
    seed: int,
    threads: int | None = None,
    warm_dir: Path | None = None,
) -> dict:
    """Seconds of ``align`` and of ``evaluate`` for one run, each from process start to exit
    (with ``warm_dir``: under ``STAGES_WARM=1``, servers in that folder)."""
    out = {}
    for stage in ("align", "evaluate"):
        start = time.perf_counter()
        args = [stage, variant, "--seed", str(seed)]
        _wait(_start(code, folder, args, threads, warm_dir), stage)
        out[f"{stage}_s"] = time.perf_counter() - start
    out["total_s"] = out["align_s"] + out["evaluate_s"]
    return out


def start_warm(code: Path, folder: Path, warm_dir: Path) -> float:
    """Start ``code``'s warm server for ``folder`` (the first warm command does); its seconds."""
    start = time.perf_counter()
    _wait(_start(code, folder, ["--help"], None, warm_dir), "the warm server's first command")
    return time.perf_counter() - start


def stop_warm(code: Path, folder: Path, warm_dir: Path) -> None:
    """Stop the warm servers in ``warm_dir``."""
    _wait(
        _start(code, folder, ["stop"], None, warm_dir, "stages.warm_server"), "stopping the server"
    )


def side_by_side(code: Path, folder: Path, variant: str, seeds: tuple[int, int]) -> dict:
    """Two runs one after the other with every core, and the same two started together with
    one thread each; wall seconds of both."""
    start = time.perf_counter()
    for seed in seeds:
        timed_run(code, folder, variant, seed)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    for stage in ("align", "evaluate"):
        procs = [_start(code, folder, [stage, variant, "--seed", str(s)], 1) for s in seeds]
        for proc in procs:
            _wait(proc, stage)
    parallel = time.perf_counter() - start
    return {
        "sequential_s": sequential,
        "parallel_one_thread_s": parallel,
        "speedup": sequential / parallel,
    }


def run_wall_times(
    repo: Path,
    *,
    variant: str = "dpo",
    seed: int = 0,
    baseline: str | None = None,
    repeats: int = 2,
    parallel: bool = True,
) -> dict:
    """Wall times of one run of this tree (and of ``baseline``'s code, and of this tree under
    ``STAGES_WARM=1``, alternating), best of ``repeats``, with every repeat's totals
    (``totals_s``) and, with a ``baseline``, each repeat's speedups (``speedups``,
    ``speedups_warm``: the spread of the ratio within one benchmark); with ``parallel``,
    :func:`side_by_side` for this tree."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = {"head": repo}
        if baseline:
            clone = tmp / "baseline-code"
            subprocess.run(["git", "clone", "-q", str(repo.resolve()), str(clone)], check=True)
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", baseline], check=True)
            codes["baseline"] = clone
        spaces = {name: workspace(repo, code, tmp / f"run-{name}") for name, code in codes.items()}
        warm_dir = tmp / "warm"
        warm_dir.mkdir(mode=0o700)
        server_start = start_warm(repo, spaces["head"], warm_dir)
        best: dict[str, dict] = {}
        totals: dict[str, list[float]] = {}
        try:
            for _ in range(repeats):
                for name, code in [*codes.items(), ("warm", repo)]:
                    space = spaces["head" if name == "warm" else name]
                    where = warm_dir if name == "warm" else None
                    t = timed_run(code, space, variant, seed, warm_dir=where)
                    totals.setdefault(name, []).append(t["total_s"])
                    if name not in best or t["total_s"] < best[name]["total_s"]:
                        best[name] = t
        finally:
            stop_warm(repo, spaces["head"], warm_dir)
        out = {"variant": variant, "seed": seed, "repeats": repeats, **best, "totals_s": totals}
        out["warm"]["server_start_s"] = server_start
        out["warm_speedup"] = best["head"]["total_s"] / best["warm"]["total_s"]
        if baseline:
            out["baseline_commit"] = baseline
            out["speedup"] = best["baseline"]["total_s"] / best["head"]["total_s"]
            out["speedup_warm"] = best["baseline"]["total_s"] / best["warm"]["total_s"]
            # the same ratios within each repeat (runs timed one right after the other)
            for key, name in (("speedups", "head"), ("speedups_warm", "warm")):
                out[key] = [b / t for b, t in zip(totals["baseline"], totals[name])]
        if parallel:
            out["side_by_side"] = side_by_side(repo, spaces["head"], variant, (seed, seed + 1))
    return out
