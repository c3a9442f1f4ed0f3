"""``score``: the reward model scores every sampled completion (and the gold scorer, if any).

Reads ``models/reward/``, ``data/samples.jsonl`` (contract ``SAMPLES``), ``reward.score`` and
``data.source``; writes ``data/scored.jsonl`` (contract ``SCORED``: each sample row plus
``"rewards": [K floats]`` and, for ``data.source: synthetic``, ``"gold": [K floats]``)::

    python -m stages score             # or: dvc repro score

Each completion is scored as the text ``prompt + completion`` (the completion keeps its leading
space from the tokenizer). Kept apart from ``sample`` so that changing the reward model
re-scores the samples without re-sampling them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from stages.common import StageError, load_params, param, write_jsonl
from stages.contracts import SAMPLES, SCORED, check_row, read_rows

REWARD_DIR = Path("models/reward")
SAMPLES_PATH = Path("data/samples.jsonl")
SCORED_PATH = Path("data/scored.jsonl")


def full_texts(rows: list[dict]) -> list[str]:
    """``prompt + completion`` for every completion, row by row."""
    return [row["prompt"] + c for row in rows for c in row["completions"]]


def attach_scores(rows: list[dict], rewards: list[float],
                  gold: list[float] | None = None) -> list[dict]:
    """Split flat score lists back into per-row ``rewards`` (and ``gold``) lists, asserting
    the SCORED contract on every new row."""
    n = sum(len(row["completions"]) for row in rows)
    if len(rewards) != n or (gold is not None and len(gold) != n):
        raise StageError(f"scorer returned {len(rewards)} rewards for {n} completions")
    out, start = [], 0
    for i, row in enumerate(rows):
        stop = start + len(row["completions"])
        new = {**row, "rewards": [float(r) for r in rewards[start:stop]]}
        if gold is not None:
            new["gold"] = [float(g) for g in gold[start:stop]]
        out.append(check_row(new, SCORED, f"scored row {i + 1} ({row['prompt_id']})"))
        start = stop
    return out


def score_rows(rows: list[dict], reward_fn: Callable[[list[str]], list[float]],
               gold_fn: Callable[[str], float] | None = None) -> list[dict]:
    """SCORED rows: ``reward_fn`` scores all texts in one (internally batched) call;
    ``gold_fn`` scores one text."""
    texts = full_texts(rows)
    rewards = reward_fn(texts)
    gold = [gold_fn(t) for t in texts] if gold_fn is not None else None
    return attach_scores(rows, rewards, gold)


def score(params: dict) -> dict:
    """Run the stage on a params mapping; returns a summary."""
    reward = params.get("reward")
    data = params.get("data")
    if not isinstance(reward, dict) or not isinstance(data, dict):
        raise StageError("params: sections 'reward' and 'data' are required")
    kind = param(reward, "reward.score", str)
    source = param(data, "data.source", str)
    rows = read_rows(SAMPLES_PATH, SAMPLES)
    if not REWARD_DIR.is_dir():
        raise StageError(f"{REWARD_DIR}: reward model not found (run the reward stage)")
    from stages.reward import load_reward_model, score_texts

    model, tokenizer = load_reward_model(str(REWARD_DIR))
    gold_fn = None
    if source == "synthetic":
        from stages.synthetic import gold_score as gold_fn
    scored = score_rows(rows, lambda texts: score_texts(model, tokenizer, texts, score=kind),
                        gold_fn)
    write_jsonl(SCORED_PATH, scored)
    rewards = [r for row in scored for r in row["rewards"]]
    summary = {"prompts": len(scored), "completions": len(rewards),
               "mean_reward": sum(rewards) / len(rewards)}
    if gold_fn is not None:
        gold = [g for row in scored for g in row["gold"]]
        summary["mean_gold"] = sum(gold) / len(gold)
    return summary


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Score every sampled completion with the reward model (and the gold scorer)."""
    s = score(load_params(params))
    gold = f", mean gold {s['mean_gold']:.3f}" if "mean_gold" in s else ""
    typer.echo(f"scored {s['completions']} completions of {s['prompts']} prompts: "
               f"mean reward {s['mean_reward']:.3f}{gold}")
