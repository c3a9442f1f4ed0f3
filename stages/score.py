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

from collections.abc import Callable
from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import write_jsonl
from stages.lib.config import DataConfig, RewardConfig, load_params, read_section
from stages.lib.contracts import SAMPLES, SCORED, check_row, read_rows
from stages.lib.scoring import load_reward_model, score_texts
from stages.lib.synthetic import gold_score


def full_texts(rows: list[dict]) -> list[str]:
    """``prompt + completion`` for every completion, row by row."""
    return [row["prompt"] + c for row in rows for c in row["completions"]]


def attach_scores(
    rows: list[dict], rewards: list[float], gold: list[float] | None = None
) -> list[dict]:
    """Split flat score lists back into per-row ``rewards`` (and ``gold``) lists, asserting
    the SCORED contract on every new row."""
    n = sum(len(row["completions"]) for row in rows)
    if len(rewards) != n or (gold is not None and len(gold) != n):
        raise ValueError(f"scorer returned {len(rewards)} rewards for {n} completions")
    out, start = [], 0
    for i, row in enumerate(rows):
        stop = start + len(row["completions"])
        new = {**row, "rewards": [float(r) for r in rewards[start:stop]]}
        if gold is not None:
            new["gold"] = [float(g) for g in gold[start:stop]]
        out.append(check_row(new, SCORED, f"scored row {i + 1} ({row['prompt_id']})"))
        start = stop
    return out


def score_rows(
    rows: list[dict],
    reward_fn: Callable[[list[str]], list[float]],
    gold_fn: Callable[[str], float] | None = None,
) -> list[dict]:
    """SCORED rows: ``reward_fn`` scores all texts in one (internally batched) call;
    ``gold_fn`` scores one text."""
    texts = full_texts(rows)
    rewards = reward_fn(texts)
    gold = [gold_fn(t) for t in texts] if gold_fn is not None else None
    return attach_scores(rows, rewards, gold)


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
