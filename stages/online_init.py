"""``online-init``: round 0 of iterative DPO for one variant and seed, a copy of the SFT policy.

    python -m stages online-init dpo --seed 0
    dvc repro online-init@dpo-0               # the matrix online.variants x seeds

Copies ``models/sft`` into ``models/aligned/online-<v>-r0/seed-<s>`` (atomically), where round 1
(``online-round``) starts. It exists because dvc.yaml names round r-1's policy folder as a dep of
round r, the same path pattern for every round. It also validates ``online.rounds`` and
``online.variants`` (one-line errors naming the key) before any round runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import atomic_path
from stages.lib.config import load_params, run_seed
from stages.lib.online import read_online_variants, read_rounds, round_model
from stages.lib.variants import read_variants


def online_init(params: dict, variant: str, seed: int | None = None) -> Path:
    """Validate ``online.*`` and copy the SFT policy to round 0's folder; returns the folder."""
    seed = run_seed(params, seed)
    read_rounds(params)
    if variant not in read_online_variants(params, list(read_variants(params))):
        raise ValueError(f"params: online.variants: does not list {variant!r}")
    if not (paths.SFT_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{paths.SFT_DIR}: SFT policy not found (run the sft stage)")
    final = round_model(variant, seed, 0)
    with atomic_path(final) as tmp:
        shutil.copytree(paths.SFT_DIR, tmp)
    return final


def main(
    variant: str = typer.Argument(..., help="A variant name listed in online.variants."),
    seed: int | None = typer.Option(
        None, "--seed", min=0, help="Run seed (default: the first of `seeds`)."
    ),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file to read."),
) -> None:
    """Copy the SFT policy as round 0 of an on-policy run (and validate online.*)."""
    folder = online_init(load_params(params), variant, seed)
    typer.echo(f"online-init: round 0 of {variant} is the SFT policy, in {folder}")
