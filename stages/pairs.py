"""``pairs``: turn K scored completions per prompt into preference pairs (preferred first).

Reads ``data/scored.jsonl`` (contract ``SCORED``), ``seed`` and ``pairs.*``; writes
``data/preferences.jsonl`` (contract ``PREFERENCES``: each scored row plus ``"pairs": [[w, l],
...]`` indices into its completions, w preferred, and ``"split"``: ``train`` or ``val``) and
``metrics/pairs.json``::

    python -m stages pairs             # or: dvc repro pairs

Strategies (``pairs.strategy``), each a pure function of a reward list and a ``random.Random``:

* ``first_round`` — RSO's "first-round-rank": shuffle the K completions, split them into K // 2
  disjoint pairs, higher reward preferred. With an odd K the last shuffled completion is dropped.
* ``tournament`` — RSO's "tournament-rank": single elimination over the shuffled K; every match
  is a pair (K - 1 matches); an odd one out in a round gets a bye. A tied match yields no pair
  and the first of the two in the shuffled order advances (a fair coin, as the order is random).
* ``best_worst`` — one pair, highest vs lowest reward (SLiC-HF "sample-rank", the f-DPO setup);
  among equal highest (lowest) rewards one is drawn at random.
* ``all`` — every pair of completions with different rewards (K (K - 1) / 2 at most).
* ``rso`` — statistical rejection sampling (RSO, Liu et al. 2023, arXiv 2309.06657, Algorithm 1)
  picks ``pairs.rso.n_select`` of the K candidates, approximately distributed as the policy
  tilted by exp(r / beta); the picked ones are then paired first-round. Get more candidates
  from ``sample.n_per_prompt`` (e.g. 16).

In every strategy a pair of equal rewards is skipped. Prompts left without any pair are kept out
of the output and counted in the metrics. ``pairs.val_fraction`` of the prompts (drawn by
prompt, seeded, before any prompt is dropped, so the same prompts are held out whatever the
strategy or reward model) get ``split: "val"``; all their pairs go with them.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from statistics import fmean
from typing import Sequence

import typer

from stages.common import StageError, load_params, param, write_json, write_jsonl
from stages.contracts import PREFERENCES, SCORED, check_row, read_rows

SCORED_PATH = Path("data/scored.jsonl")
PREFERENCES_PATH = Path("data/preferences.jsonl")
METRICS_PATH = Path("metrics/pairs.json")
STRATEGIES = ("first_round", "tournament", "best_worst", "all", "rso")

Pair = tuple[int, int]


def ordered_pair(rewards: Sequence[float], i: int, j: int) -> Pair | None:
    """``(winner, loser)`` by reward, or None for a tie."""
    if rewards[i] > rewards[j]:
        return i, j
    if rewards[j] > rewards[i]:
        return j, i
    return None


def first_round_pairs(rewards: Sequence[float], rng: random.Random,
                      candidates: Sequence[int] | None = None) -> list[Pair]:
    """Shuffle ``candidates`` (default: all indices) and pair neighbours: disjoint pairs, the
    last one dropped when their count is odd, ties skipped."""
    order = list(range(len(rewards)) if candidates is None else candidates)
    rng.shuffle(order)
    pairs = (ordered_pair(rewards, order[k], order[k + 1]) for k in range(0, len(order) - 1, 2))
    return [p for p in pairs if p is not None]


def tournament_pairs(rewards: Sequence[float], rng: random.Random) -> list[Pair]:
    """Single elimination over the shuffled indices: one pair per match (K - 1 matches),
    a bye for an odd one out (the last of its round), no pair for a tie (first one advances)."""
    alive = list(range(len(rewards)))
    rng.shuffle(alive)
    pairs: list[Pair] = []
    while len(alive) > 1:
        winners = []
        for k in range(0, len(alive) - 1, 2):
            pair = ordered_pair(rewards, alive[k], alive[k + 1])
            if pair is not None:
                pairs.append(pair)
            winners.append(alive[k] if pair is None else pair[0])
        if len(alive) % 2:
            winners.append(alive[-1])
        alive = winners
    return pairs


def best_worst_pairs(rewards: Sequence[float], rng: random.Random) -> list[Pair]:
    """One pair: a highest-reward vs a lowest-reward completion (random among equals);
    none when all rewards are equal."""
    hi, lo = max(rewards), min(rewards)
    if hi == lo:
        return []
    best = rng.choice([i for i, r in enumerate(rewards) if r == hi])
    worst = rng.choice([i for i, r in enumerate(rewards) if r == lo])
    return [(best, worst)]


def all_pairs(rewards: Sequence[float], rng: random.Random) -> list[Pair]:
    """Every pair with different rewards, (i, j) for i < j in index order, winner first."""
    pairs = (ordered_pair(rewards, i, j) for i in range(len(rewards))
             for j in range(i + 1, len(rewards)))
    return [p for p in pairs if p is not None]


def rso_select(rewards: Sequence[float], n_select: int, beta: float,
               rng: random.Random) -> list[int]:
    """Statistical rejection sampling (RSO, Algorithm 1): indices of ``n_select`` candidates, in
    acceptance order.

    Rounds over the not yet accepted candidates (in a seeded random order): with r_max the
    highest reward among them at the start of the round, a candidate is accepted when
    u < exp((r - r_max) / beta), u ~ U[0, 1). Accepted candidates follow the candidate
    distribution tilted by exp(r / beta) (the optimal KL-constrained policy for a pool drawn
    from the SFT policy); every round accepts at least its maximum, so it terminates.
    beta -> 0 picks the top rewards, beta -> inf picks uniformly at random."""
    if not 1 <= n_select <= len(rewards):
        raise ValueError(f"n_select={n_select} must be between 1 and {len(rewards)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    remaining = list(range(len(rewards)))
    rng.shuffle(remaining)
    accepted: list[int] = []
    while len(accepted) < n_select:
        r_max = max(rewards[i] for i in remaining)
        kept = []
        for i in remaining:
            if len(accepted) < n_select and rng.random() < math.exp((rewards[i] - r_max) / beta):
                accepted.append(i)
            else:
                kept.append(i)
        remaining = kept
    return accepted


def rso_pairs(rewards: Sequence[float], rng: random.Random, n_select: int,
              beta: float) -> tuple[list[Pair], list[int]]:
    """First-round pairs among the ``rso_select`` picks; returns (pairs, picked indices)."""
    picked = rso_select(rewards, n_select, beta, rng)
    return first_round_pairs(rewards, rng, picked), picked


def validation_ids(prompt_ids: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """A seeded draw of ``round(val_fraction * n)`` prompt ids (at least one when
    ``val_fraction`` > 0) held out for validation."""
    n = len(prompt_ids)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_val >= n and n_val > 0:
        raise StageError(f"params: pairs.val_fraction={val_fraction} leaves no train prompt "
                         f"among {n} prompts")
    return set(random.Random(f"{seed}-pairs-val").sample(list(prompt_ids), n_val))


def pair_settings(params: dict) -> dict:
    """The checked ``pairs.*`` settings plus the global seed (``rso`` keys only for rso)."""
    section = params.get("pairs")
    if not isinstance(section, dict):
        raise StageError("params: section 'pairs' is missing")
    settings = {
        "seed": param(params, "params.seed", int),
        "strategy": param(section, "pairs.strategy", str, lambda v: v in STRATEGIES,
                          f"must be one of {', '.join(STRATEGIES)}"),
        "val_fraction": param(section, "pairs.val_fraction", float, lambda v: 0 <= v < 1,
                              "must be in [0, 1)"),
    }
    if settings["strategy"] == "rso":
        settings["n_select"] = param(section, "pairs.rso.n_select", int, lambda v: v >= 2,
                                     "must be >= 2 (a pair needs two picks)")
        settings["beta"] = param(section, "pairs.rso.beta", float, lambda v: v > 0, "must be > 0")
    return settings


def make_pairs(rewards: Sequence[float], settings: dict,
               rng: random.Random) -> tuple[list[Pair], list[int]]:
    """Pairs of one prompt under ``settings['strategy']``, and the indices it drew from."""
    strategy = settings["strategy"]
    if strategy == "rso":
        return rso_pairs(rewards, rng, settings["n_select"], settings["beta"])
    fn = {"first_round": first_round_pairs, "tournament": tournament_pairs,
          "best_worst": best_worst_pairs, "all": all_pairs}.get(strategy)
    if fn is None:
        raise StageError(f"params: pairs.strategy must be one of {', '.join(STRATEGIES)}, "
                         f"got {strategy!r}")
    return fn(rewards, rng), list(range(len(rewards)))


def build_preferences(rows: list[dict], settings: dict) -> tuple[list[dict], dict]:
    """PREFERENCES rows (scored rows in order, prompts without pairs left out) and metrics."""
    val = validation_ids([r["prompt_id"] for r in rows], settings["val_fraction"],
                         settings["seed"])
    out, picked_rewards, margins, gold_agree, gold_ties = [], [], [], [], []
    chosen, rejected = [], []
    for n, row in enumerate(rows, start=1):
        rewards = row["rewards"]
        if settings["strategy"] == "rso" and settings["n_select"] > len(rewards):
            raise StageError(f"params: pairs.rso.n_select={settings['n_select']} exceeds the "
                             f"{len(rewards)} completions of scored row {n} "
                             f"({row['prompt_id']}); raise sample.n_per_prompt")
        rng = random.Random(f"{settings['seed']}-pairs-{row['prompt_id']}")
        pairs, picked = make_pairs(rewards, settings, rng)
        picked_rewards.extend(rewards[i] for i in picked)
        if not pairs:
            continue
        for w, l in pairs:
            margins.append(rewards[w] - rewards[l])
            chosen.append(rewards[w])
            rejected.append(rewards[l])
            if "gold" in row:
                gold_agree.append(row["gold"][w] > row["gold"][l])
                gold_ties.append(row["gold"][w] == row["gold"][l])
        new = {**row, "pairs": [list(p) for p in pairs],
               "split": "val" if row["prompt_id"] in val else "train"}
        out.append(check_row(new, PREFERENCES, f"preferences row for {row['prompt_id']}"))
    pool = [r for row in rows for r in row["rewards"]]
    metrics = {
        "prompts": len(rows),
        "prompts_with_pairs": len(out),
        "prompts_without_pairs": len(rows) - len(out),
        "pairs": len(margins),
        "pairs_per_prompt": round(len(margins) / len(out), 4) if out else 0.0,
        **{split: {"prompts": sum(r["split"] == split for r in out),
                   "pairs": sum(len(r["pairs"]) for r in out if r["split"] == split)}
           for split in ("train", "val")},
        "mean_reward_margin": round(fmean(margins), 6) if margins else 0.0,
        "mean_reward_chosen": round(fmean(chosen), 6) if chosen else 0.0,
        "mean_reward_rejected": round(fmean(rejected), 6) if rejected else 0.0,
        "mean_reward_pool": round(fmean(pool), 6),
    }
    if settings["strategy"] == "rso":
        metrics["mean_reward_picked"] = round(fmean(picked_rewards), 6)
    if gold_agree:
        metrics["gold_agreement"] = round(fmean(gold_agree), 6)
        metrics["gold_ties"] = round(fmean(gold_ties), 6)
    return out, metrics


def make_preference_file(params: dict) -> dict:
    """Run the stage on a params mapping; returns the metrics it wrote."""
    settings = pair_settings(params)
    rows = read_rows(SCORED_PATH, SCORED)
    out, metrics = build_preferences(rows, settings)
    if not out:
        raise StageError(f"{SCORED_PATH}: no prompt gives a preference pair (all rewards tied)")
    if metrics["train"]["pairs"] == 0:
        raise StageError(f"{SCORED_PATH}: no train pair left (lower pairs.val_fraction)")
    write_jsonl(PREFERENCES_PATH, out)
    write_json(METRICS_PATH, metrics)
    return metrics


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Build preference pairs from the scored completions."""
    m = make_preference_file(load_params(params))
    gold = f", gold agreement {m['gold_agreement']:.1%}" if "gold_agreement" in m else ""
    typer.echo(f"{m['pairs']} pairs from {m['prompts_with_pairs']} prompts "
               f"({m['prompts_without_pairs']} without a pair; {m['train']['pairs']} train / "
               f"{m['val']['pairs']} val pairs), mean margin {m['mean_reward_margin']:.3f}{gold}")
