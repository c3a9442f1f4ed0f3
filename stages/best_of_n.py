"""``best-of-n``: the baseline every aligned family is judged against: the SFT policy's own
samples, the best of n by reward, once per run seed.

Reads ``best_of_n.n_max``, ``evaluate.{n_prompts, max_new_tokens, batch_size}``,
``reward.score`` and ``data.source`` from params.yaml (and ``seeds`` when ``--seed`` is not
given), ``models/sft``, ``models/reward`` and ``data/prompts/eval.jsonl``; writes
``data/best_of_n/seed-<s>.jsonl`` (per eval prompt: the ``n_max`` completions with their
rewards, and gold scores on the synthetic corpus) and ``metrics/best_of_n/seed-<s>.json`` (that
seed's best-of-n reward and gold for n = 1, 2, 4, ... ≤ n_max, at the analytic KL)::

    python -m stages best-of-n --seed 1      # or: dvc repro best-of-n@1

The draws are the evaluation's (:func:`stages.lib.evaluate.policy_samples`, the function
``evaluate`` samples with): the first ``evaluate.n_prompts`` eval prompts, temperature 1, no
top-k/top-p, ``evaluate.max_new_tokens``, so best-of-1 is the SFT policy as ``evaluate``
measures it; they come from their own random stream (``best_of_n``, seeded by the run seed), so
they are independent of ``evaluate-sft``'s samples. Scores are ``evaluate``'s
(:func:`stages.lib.evaluate.reward_scores`). The estimator (all n-subsets of the n_max draws)
and the analytic KL are in :mod:`stages.lib.best_of_n`; the ``frontier`` stage draws the curve
with intervals over seeds and prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.lib import paths
from stages.lib.best_of_n import best_of_n, best_of_n_kl, n_values
from stages.lib.common import write_json, write_jsonl
from stages.lib.config import (
    BestOfNConfig,
    DataConfig,
    EvaluateConfig,
    RewardConfig,
    load_params,
    read_section,
    run_seed,
)
from stages.lib.contracts import PROMPTS, read_rows
from stages.lib.evaluate import load_policy, policy_samples, reward_scores

#: The random stream of the best-of-n draws (``evaluate`` samples from ``evaluate``).
STREAM = "best_of_n"


def summary(rewards: np.ndarray, gold: np.ndarray | None, n_max: int) -> dict:
    """Per n of :func:`stages.lib.best_of_n.n_values`: the analytic KL and the mean over
    prompts of the best-of-n reward (and gold) estimates; ``rewards``/``gold`` [P, n_max]."""
    out = {"n_max": n_max, "n_prompts": int(rewards.shape[0])}
    for n in n_values(n_max):
        entry = {"kl": round(best_of_n_kl(n), 6)}
        entry["reward"] = round(float(best_of_n(rewards, n).mean()), 6)
        if gold is not None:
            entry["gold"] = round(float(best_of_n(rewards, n, gold).mean()), 6)
        out[f"n_{n}"] = entry
    return out


def draws(params: dict, seed: int) -> tuple[list[dict], dict]:
    """Sample and score the draws of one seed; returns the rows and the metrics."""
    cfg = read_section(params, "best_of_n", BestOfNConfig)
    ev = read_section(params, "evaluate", EvaluateConfig)
    score = read_section(params, "reward", RewardConfig).score
    source = read_section(params, "data", DataConfig).source
    eval_rows = read_rows(paths.EVAL_PROMPTS, PROMPTS)
    if ev.n_prompts > len(eval_rows):
        raise ValueError(
            f"params: evaluate.n_prompts: must be <= the {len(eval_rows)} prompts "
            f"of {paths.EVAL_PROMPTS}, got {ev.n_prompts}"
        )
    if not paths.REWARD_DIR.is_dir():
        raise FileNotFoundError(
            f"{paths.REWARD_DIR}: reward model not found (run the reward stage)"
        )
    rows, k = eval_rows[: ev.n_prompts], cfg.n_max
    prompts = [r["prompt"] for r in rows]
    model, tokenizer = load_policy(paths.SFT_DIR)
    gen = policy_samples(
        model, tokenizer, prompts, ev, n=k, seed=seed, stream=STREAM, desc="best-of-n sft"
    )
    del model
    texts = [p + c for p, per in zip(prompts, gen.texts) for c in per]
    scores, gold = reward_scores(texts, score=score, source=source, batch_size=ev.batch_size)
    scores = scores.reshape(-1, k)
    gold = None if gold is None else gold.reshape(-1, k)
    out = []
    for i, row in enumerate(rows):
        item = {
            "prompt_id": row["prompt_id"],
            "prompt": row["prompt"],
            "completions": gen.texts[i],
            "rewards": [round(float(v), 6) for v in scores[i]],
        }
        if gold is not None:
            item["gold"] = [round(float(v), 6) for v in gold[i]]
        out.append(item)
    return out, summary(scores, gold, k)


def main(
    seed: int | None = typer.Option(
        None,
        "--seed",
        min=0,
        help="Run seed: the sampling seed of the draws. Default: the first of `seeds`.",
    ),
    params: Path = typer.Option(Path("params.yaml"), help="Params file to read."),
) -> None:
    """Sample n_max completions per eval prompt from the SFT policy and score them."""
    values = load_params(params)
    seed = run_seed(values, seed)
    rows, metrics = draws(values, seed)
    write_jsonl(paths.best_of_n_samples(seed), rows)
    write_json(paths.best_of_n_metrics(seed), metrics)
    top = metrics[f"n_{metrics['n_max']}"]
    gold = f", gold {top['gold']:.3f}" if "gold" in top else ""
    typer.echo(
        f"best-of-n (seed {seed}): n=1 reward {metrics['n_1']['reward']:.3f}; n={metrics['n_max']}"
        f" reward {top['reward']:.3f}{gold} at KL {top['kl']:.3f} -> "
        f"{paths.best_of_n_metrics(seed)}"
    )
