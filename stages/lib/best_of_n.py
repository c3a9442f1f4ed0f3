"""Best-of-n from the SFT policy: the unbiased estimator of its expected reward and its analytic
KL, shared by the ``best-of-n`` stage (per-seed metrics) and ``frontier`` (curves, intervals).

Best-of-n draws n completions of a prompt from the SFT policy and keeps the one the reward
model scores highest. From N ≥ n draws per prompt (``best_of_n.n_max``), the expected score of
the kept completion is estimated without bias by averaging over *all* C(N, n) subsets of size
n (a U-statistic): with the draws sorted by reward ascending, the i-th (1-based) is the best of
a subset in C(i − 1, n − 1) of them, so

    E[score of the best of n] ≈ Σ_i score_(i) · C(i − 1, n − 1) / C(N, n),

where ``score`` is the reward itself or any other score of the kept completion (the gold score:
best-of-n selects by the proxy, so gold shows over-optimisation). Ties in reward (probability 0
for a continuous score) are broken by draw order. This uses every draw for every n, unlike
disjoint subsets, and equals the plain mean for n = 1 and the maximum for n = N::

    from stages.lib.best_of_n import best_of_n, best_of_n_kl, n_values
    per_prompt = best_of_n(rewards, 4)              # rewards [P, N] -> [P]
    gold_kept = best_of_n(rewards, 4, gold)         # gold of the reward-best of 4
    best_of_n_kl(4)                                 # log 4 - 3/4 nats

The KL of the best-of-n policy to the SFT policy is taken as the analytic value
log n − (n − 1)/n (Stiennon et al. 2020, arXiv 2009.01325; an upper bound on the exact KL,
Beirami et al. 2024, arXiv 2401.01879): nats per sequence, the unit of ``evaluate``'s ``kl``.
"""

from __future__ import annotations

import math

import numpy as np


def n_values(n_max: int) -> list[int]:
    """The n of the baseline curve: 1, 2, 4, ... up to ``n_max`` (``n_max`` itself last)."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    out = [1 << k for k in range(n_max.bit_length()) if 1 << k <= n_max]
    return out if out[-1] == n_max else [*out, n_max]


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n ‖ SFT) = log n − (n − 1)/n, nats per sequence."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def subset_weights(n_draws: int, n: int) -> np.ndarray:
    """Weight of the i-th smallest of ``n_draws`` draws (ascending) in the mean over all
    n-subsets of the subset maximum: C(i − 1, n − 1) / C(N, n); they sum to 1."""
    if not 1 <= n <= n_draws:
        raise ValueError(f"n must be in [1, {n_draws}] (the draws per prompt), got {n}")
    total = math.comb(n_draws, n)
    return np.array([math.comb(i, n - 1) / total for i in range(n_draws)])


def best_of_n(rewards: np.ndarray, n: int, scores: np.ndarray | None = None) -> np.ndarray:
    """Per prompt, the unbiased estimate of the expected ``scores`` (default: the rewards) of
    the reward-best of n draws, from ``rewards`` [P, N] (``scores`` the same shape)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [prompts, draws], got shape {rewards.shape}")
    scores = rewards if scores is None else np.asarray(scores, dtype=np.float64)
    if scores.shape != rewards.shape:
        raise ValueError(f"scores {scores.shape} and rewards {rewards.shape} differ in shape")
    order = np.argsort(rewards, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    return ranked @ subset_weights(rewards.shape[1], n)
