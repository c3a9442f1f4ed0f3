"""Benchmark: what DVC itself spends around every stage of ``dvc repro``, on this repo's dvc.lock.

Before a stage runs DVC reads ``dvc.lock`` (a plain YAML load); after it, DVC rewrites it with a
round-trip load and dump that keeps comments and order (``dvc.dvcfile.Lockfile.dump_stages``).
Every stage's code deps, params and outputs are in that file, so both grow with the number of
stages. The plain load runs on ruamel.yaml's C loader when ``ruamel.yaml.clib`` is installed
(a dependency of this project) and on its pure-Python loader otherwise: both are timed here, side
by side, on the same text. The round trip is pure Python either way::

    from stages.bench.lockfile import lockfile_cost
    cost = lockfile_cost(Path("dvc.lock"))
    cost["load_speedup"], cost["roundtrip_s"]

``python -m stages bench --only dvc`` adds the wall time of ``dvc status`` in this repo.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update
from ruamel.yaml import YAML

from stages.bench import best_seconds


def lockfile_cost(lock: Path, repeats: int = 3) -> dict:
    """Seconds (best of ``repeats``) to load ``lock`` with ruamel's default loader (C where
    ``ruamel.yaml.clib`` is installed, named in ``loader``) and its pure-Python one, and of DVC's
    round-trip load + dump after a stage; the file's size and stage count."""
    text = lock.read_text()
    c_loader = YAML(typ="safe")
    stages = len((c_loader.load(text) or {}).get("stages", {}))
    c_s = best_seconds(lambda: YAML(typ="safe").load(text), repeats)
    pure_s = best_seconds(lambda: YAML(typ="safe", pure=True).load(text), repeats)
    roundtrip_s = best_seconds(lambda: dumps_yaml(parse_yaml_for_update(text, str(lock))), repeats)
    return {
        "lockfile": str(lock),
        "bytes": len(text.encode()),
        "lines": text.count("\n"),
        "stages": stages,
        "loader": c_loader.Parser.__name__,  # CParser where ruamel.yaml.clib is installed
        "c_load_s": c_s,
        "pure_load_s": pure_s,
        "load_speedup": pure_s / c_s,
        "roundtrip_s": roundtrip_s,
    }


def status_seconds(repo: Path, repeats: int = 2) -> float:
    """Wall time of ``dvc status -q`` in ``repo`` (best of ``repeats``), process start included."""
    cmd = [sys.executable, "-m", "dvc", "status", "-q"]
    return best_seconds(lambda: subprocess.run(cmd, cwd=repo, capture_output=True), repeats)
