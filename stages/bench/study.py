"""The matched-KL study's size and estimated wall time, before running it (not a stage)::

    python -m stages.bench.study                    # profile study, after the demo has run
    python -m stages.bench.study --profile study-fdpo --from-scratch
    python -m stages.bench.study --params params.yaml   # an already composed params file

Composes ``conf/`` with ``profile=<name>`` exactly as ``dvc exp run -S profile=<name>`` does
(or reads ``--params``), groups the variants into families as the ``frontier`` stage does
(:func:`stages.lib.frontier.group_families`) and counts the stage runs ``dvc repro`` starts:
one ``align`` + ``evaluate`` per (variant, seed), one ``evaluate-sft`` and one ``best-of-n`` per
seed, then ``report`` and ``frontier``. With ``--from-scratch`` every run counts (plus the
shared stages: prepare .. reference); by default the demo's variants and the per-seed stages
are taken as already run (a workspace that ran the demo's ``dvc repro``), so only the new
variants' runs count.

The time is an estimate, not a measurement: stage seconds × runs, one after the other, with the
per-stage seconds measured on the demo on this project's 2-core CPU (README, *Performance*:
align 29.3 s, evaluate 11 s a run; best-of-n and the shared stages as given in
:data:`SECONDS`). ``dvc exp run --queue`` with ``dvc queue start -j 2`` and one thread each ran
two runs 1.35x faster than one after the other (README); that is printed as a second figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from stages.lib.frontier import group_families, variant_settings
from stages.tools.params import compose

ROOT = Path(__file__).resolve().parents[2]
#: Seconds per stage run on the demo, 2-core CPU (README, Performance; best-of-n: its draws took
#: 11.2 s of CPU on one thread for 100 prompts x 16, plus ~5 s of process start; frontier: ~12 s
#: wall on the demo outputs, a busy machine).
SECONDS = {
    "align": 29.3,
    "evaluate": 11.0,
    "evaluate-sft": 11.0,
    "best-of-n": 16.0,
    "report": 5.0,
    "frontier": 12.0,
    # one checkpoint of a run's trajectory (align.common.checkpoints), measured by evaluate in the
    # run's process: sampling, scoring, reward and quality measures of one more policy (issue 29;
    # provisional, from one measurement on a loaded machine: docs/performance.md)
    "checkpoint": 4.0,
    # prepare .. reference, once: a clean clone's 23.5 min minus the 21 min 46 s of sft,
    # reference, 30 align, 33 evaluate and report (README), plus sft and reference (~1 min)
    "shared": 165.0,
}
#: Two runs side by side with one thread each vs one after the other (README, Performance).
PARALLEL_SPEEDUP = 1.35


def study_size(params: dict, done: set[str], from_scratch: bool) -> dict:
    """Families, runs per stage and the estimated seconds (see the module docstring);
    ``done``: variants taken as already run."""
    settings = variant_settings(params)
    families = group_families(settings)
    seeds = len(params["seeds"])
    new = [v for v in settings if from_scratch or v not in done]
    steps = params["align"]["common"].get("checkpoints") or []
    runs = {
        "align": len(new) * seeds,
        "checkpoint": len(new) * seeds * len(steps),
        "evaluate": len(new) * seeds,
        "evaluate-sft": seeds if from_scratch else 0,
        "best-of-n": seeds if from_scratch else 0,
        "report": 1,
        "frontier": 1,
        "shared": 1 if from_scratch else 0,
    }
    seconds = sum(SECONDS[k] * n for k, n in runs.items())
    return {
        "families": [(f.name, f.n_betas) for f in families],
        "variants": len(settings),
        "new_variants": len(new),
        "seeds": seeds,
        "runs": runs,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """Print the study's families, run counts and estimated wall time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="study", help="conf/profile/<name>.yaml")
    parser.add_argument("--params", type=Path, help="an already composed params file")
    parser.add_argument("--from-scratch", action="store_true", help="count every stage run")
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text()) if args.params else compose(args.profile)
    done = set(yaml.safe_load((ROOT / "params.yaml").read_text())["align"]["variants"])
    size = study_size(params, done, args.from_scratch)
    source = args.params or f"profile={args.profile}"
    print(
        f"{source}: {size['variants']} variants in {len(size['families'])} families, "
        f"{size['seeds']} seeds"
    )
    for name, n_betas in size["families"]:
        print(f"  {name}: {n_betas} β values")
    counted = "every run" if args.from_scratch else "runs not in the demo"
    print(f"stage runs ({counted}): " + ", ".join(f"{k} {n}" for k, n in size["runs"].items() if n))
    minutes = size["seconds"] / 60
    print(
        f"estimated wall time on the 2-core CPU: {minutes:.0f} min one run after the other; "
        f"~{minutes / PARALLEL_SPEEDUP:.0f} min with `dvc queue start -j 2` (one thread each)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
