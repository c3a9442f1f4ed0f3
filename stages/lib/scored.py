"""Scored rows: every completion of a SAMPLES row scored as ``prompt + completion`` (the reward
model and, where the source has one, the gold scorer), shared by ``score`` and ``online-round``::

    scored = score_rows(rows, lambda texts: score_texts(model, tokenizer, texts), gold_score)
"""

from __future__ import annotations

from collections.abc import Callable

from stages.lib.contracts import SCORED, check_row


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
