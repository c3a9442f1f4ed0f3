"""``score``: the reward model scores every sampled completion (and the gold scorer, if any).

Reads ``models/reward/``, ``data/samples.jsonl`` (contract ``SAMPLES``), ``reward.score`` and
``data.source``; writes ``data/scored.jsonl`` (contract ``SCORED``: each sample row plus
``"rewards": [K floats]`` and, for ``data.source: synthetic``, ``"gold": [K floats]``)::

    python -m stages score             # or: dvc repro score

Each completion is scored as the text ``prompt + completion`` (the decoded completion text, which
keeps its leading space from the tokenizer; the sampled ``completion_ids`` and ``finished`` ride
along untouched for the reference and the trainer). Kept apart from ``sample`` so that changing
the reward model re-scores the samples without re-sampling them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import write_jsonl
from stages.lib.config import DataConfig, RewardConfig, load_params, read_section
from stages.lib.contracts import SAMPLES, read_rows
from stages.lib.scored import score_rows
from stages.lib.scoring import load_reward_model, score_texts
from stages.lib.synthetic import gold_score


def score(params: dict) -> dict:
    """Run the stage on a params mapping; returns a summary."""
    kind = read_section(params, "reward", RewardConfig).score
    source = read_section(params, "data", DataConfig).source
    rows = read_rows(paths.SAMPLES, SAMPLES)
    if not paths.REWARD_DIR.is_dir():
        raise FileNotFoundError(
            f"{paths.REWARD_DIR}: reward model not found (run the reward stage)"
        )
    model, tokenizer = load_reward_model(str(paths.REWARD_DIR))
    gold_fn = gold_score if source == "synthetic" else None
    scored = score_rows(
        rows, lambda texts: score_texts(model, tokenizer, texts, score=kind), gold_fn
    )
    write_jsonl(paths.SCORED, scored)
    rewards = [r for row in scored for r in row["rewards"]]
    summary = {
        "prompts": len(scored),
        "completions": len(rewards),
        "mean_reward": sum(rewards) / len(rewards),
    }
    if gold_fn is not None:
        gold = [g for row in scored for g in row["gold"]]
        summary["mean_gold"] = sum(gold) / len(gold)
    return summary


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Score every sampled completion with the reward model (and the gold scorer)."""
    s = score(load_params(params))
    gold = f", mean gold {s['mean_gold']:.3f}" if "mean_gold" in s else ""
    typer.echo(
        f"scored {s['completions']} completions of {s['prompts']} prompts: "
        f"mean reward {s['mean_reward']:.3f}{gold}"
    )
