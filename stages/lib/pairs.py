"""Pair strategies: turn K rewarded completions of one prompt into preference pairs.

Each strategy is a pure function of a reward list and a ``random.Random`` and returns
``(winner, loser)`` index pairs, winner first; the ``pairs`` stage calls :func:`make_pairs` per
prompt, the alignment benchmark calls :func:`first_round_pairs` / :func:`all_pairs`::

    from stages.lib.pairs import make_pairs
    pairs, picked = make_pairs([0.3, -1.2, 0.8, 0.1], cfg, random.Random("0-pairs-train-17"))

Strategies (``pairs.strategy``):

* ``first_round`` — RSO's "first-round-rank": shuffle the K completions, split them into K // 2
  disjoint pairs, higher reward preferred. With an odd K the last shuffled completion is dropped.
* ``tournament`` — RSO's "tournament-rank": single elimination over the shuffled K; every match
  is a pair (K - 1 matches); an odd one out in a round gets a bye. A tied match yields no pair
  and the first of the two in the shuffled order advances (a fair coin, as the order is random).
* ``best_worst`` — one pair, highest vs lowest reward (SLiC-HF "sample-rank", the f-DPO setup);
  among equal highest (lowest) rewards one is drawn at random.
* ``all`` — every pair of completions with different rewards (K (K - 1) / 2 at most).
* ``rso`` — statistical rejection sampling (RSO, Liu et al. 2023, arXiv 2309.06657, Algorithm 1)
  picks ``pairs.rso.n_select`` < K of the K candidates, approximately distributed as the policy
  tilted by exp(r / beta); the picked ones are then paired first-round. n_select = K would
  accept every candidate (no selection: first_round in disguise), so it is an error.

In every strategy a pair of equal rewards is skipped.

:func:`hold_out_by_text` draws the prompts held out of training *by text* (the ``pairs``
stage's validation prompts; ``ingest``'s validation and eval prompts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from stages.lib.config import PAIR_STRATEGIES, PairsConfig

Pair = tuple[int, int]


def ordered_pair(rewards: Sequence[float], i: int, j: int) -> Pair | None:
    """``(winner, loser)`` by reward, or None for a tie."""
    if rewards[i] > rewards[j]:
        return i, j
    if rewards[j] > rewards[i]:
        return j, i
    return None


def first_round_pairs(
    rewards: Sequence[float], rng: random.Random, candidates: Sequence[int] | None = None
) -> list[Pair]:
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
    """Every pair with different rewards, (i, j) for i < j in index order, winner first
    (``rng`` is unused; it keeps the strategy signature)."""
    pairs = (
        ordered_pair(rewards, i, j) for i in range(len(rewards)) for j in range(i + 1, len(rewards))
    )
    return [p for p in pairs if p is not None]


def rso_select(
    rewards: Sequence[float], n_select: int, beta: float, rng: random.Random
) -> list[int]:
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


def rso_pairs(
    rewards: Sequence[float], rng: random.Random, n_select: int, beta: float
) -> tuple[list[Pair], list[int]]:
    """First-round pairs among the ``rso_select`` picks; returns (pairs, picked indices).

    ``n_select`` must be below K = len(rewards): picking all K selects nothing."""
    k = len(rewards)
    if n_select >= k:
        raise ValueError(
            f"params: pairs.rso.n_select: must be < the K = {k} completions per prompt "
            f"(sample.n_per_prompt), got {n_select}: rso would accept every candidate and select "
            "nothing; raise sample.n_per_prompt or lower pairs.rso.n_select"
        )
    picked = rso_select(rewards, n_select, beta, rng)
    return first_round_pairs(rewards, rng, picked), picked


def pair_rng(seed: int, prompt_id: str) -> random.Random:
    """The generator of one prompt's pairs, seeded by the global ``seed`` and the prompt id
    (the ``pairs`` stage, ``ingest`` and align's re-pairing draw the same pairs from it)."""
    return random.Random(f"{seed}-pairs-{prompt_id}")


STRATEGIES = {
    "first_round": first_round_pairs,
    "tournament": tournament_pairs,
    "best_worst": best_worst_pairs,
    "all": all_pairs,
}


def make_pairs(
    rewards: Sequence[float], cfg: PairsConfig, rng: random.Random
) -> tuple[list[Pair], list[int]]:
    """Pairs of one prompt under ``cfg.strategy``, and the indices it drew from (the RSO picks,
    or all indices)."""
    if cfg.strategy == "rso":
        return rso_pairs(rewards, rng, cfg.rso.n_select, cfg.rso.beta)
    fn = STRATEGIES.get(cfg.strategy)
    if fn is None:
        raise ValueError(
            f"params: pairs.strategy: must be one of {', '.join(PAIR_STRATEGIES)}, "
            f"got {cfg.strategy!r}"
        )
    return fn(rewards, rng), list(range(len(rewards)))


def hold_out_by_text(
    prompts: Sequence[tuple[str, str]],
    fraction: float,
    key: str,
    parameter: str,
    kept: str = "a train prompt",
) -> set[str]:
    """The ids of about ``round(fraction * n)`` of the ``(prompt_id, prompt)`` pairs (at least
    one when ``fraction`` > 0), held out *by text*: the distinct prompt texts
    (whitespace-normalised, case-sensitive) in an order shuffled by the seed string ``key``, each
    taken with all its prompts until the count is reached, so no held-out text is also a kept
    text. Holding out every prompt is an error naming ``parameter`` (the fraction's key) and
    what must be ``kept``."""
    groups: dict[str, list[str]] = {}
    for prompt_id, text in prompts:
        groups.setdefault(" ".join(text.split()), []).append(prompt_id)
    n = len(prompts)
    n_out = max(1, round(fraction * n)) if fraction > 0 else 0
    texts = sorted(groups)
    random.Random(key).shuffle(texts)
    out: list[str] = []
    for text in texts:
        if len(out) >= n_out:
            break
        out.extend(groups[text])
    if out and len(out) >= n:
        raise ValueError(
            f"params: {parameter}: must leave {kept} among {n} prompts "
            f"({len(groups)} distinct texts), got {fraction}"
        )
    return set(out)
