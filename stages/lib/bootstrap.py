"""The two-level bootstrap over seeds and prompts, shared by ``report`` and ``frontier``.

A run (policy π, seed s) has, per eval prompt p, a numerator and a denominator (reward: the
prompt's mean score over 1; entropy: the summed entropy over the generated tokens); the run's
estimate is Σ_p num / Σ_p den and the policy's value the mean of its runs over the seeds
(:func:`point_estimate`). Each resample draws S seeds with replacement from the S seeds and P
prompts with replacement from the P eval prompts; the prompt draw is shared by the resampled
seeds (every seed evaluates the *same* prompts: prompts and seeds are crossed, not nested) and,
when the caller reuses one :class:`Resamples`, by every policy and metric, so differences
recomputed on the same resamples are paired::

    draws = draw_resamples(n_seeds=3, n_prompts=100, n=2000, seed=0)
    reps = replicates(num, den, draws)        # num, den: [S, P] -> [B]
    lo, hi = interval(reps)                   # 95% percentile interval

The statistical argument is in :mod:`stages.report`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Resamples:
    """Bootstrap draws shared by every policy and metric: ``seeds`` [B, S] indices of the
    resampled seeds, ``prompt_weights`` [B, P] how often each prompt was drawn."""

    seeds: np.ndarray
    prompt_weights: np.ndarray


def draw_resamples(n_seeds: int, n_prompts: int, n: int, seed: int) -> Resamples:
    """``n`` two-level resamples: S seeds with replacement, then P prompts with replacement
    (one prompt draw per resample, shared by its seeds: the prompts are crossed with seeds)."""
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n, n_seeds))
    prompt_idx = rng.integers(0, n_prompts, size=(n, n_prompts))
    flat = (prompt_idx + n_prompts * np.arange(n)[:, None]).ravel()
    weights = np.bincount(flat, minlength=n * n_prompts).reshape(n, n_prompts)
    return Resamples(seed_idx, weights.astype(np.float64))


def point_estimate(num: np.ndarray, den: np.ndarray) -> float:
    """Mean over seeds of Σ_p num / Σ_p den (``num``, ``den``: [S, P])."""
    return float(np.mean(num.sum(1) / den.sum(1)))


def replicates(num: np.ndarray, den: np.ndarray, draws: Resamples) -> np.ndarray:
    """The estimate recomputed on every resample: [B]."""
    w = draws.prompt_weights
    per_seed = (w @ num.T) / (w @ den.T)  # [B, S]: each original seed on the resampled prompts
    return np.take_along_axis(per_seed, draws.seeds, axis=1).mean(1)


def set_replicates(hits: np.ndarray, draws: Resamples) -> np.ndarray:
    """A set fraction recomputed on every resample: [B]. ``hits`` [S, N, P] says which of N
    reference points the samples of prompt p hit in seed s (coverage, recall); a resample's
    value per seed is the fraction of points hit by a drawn prompt (a prompt drawn twice hits
    the same points once), averaged over the resampled seeds."""
    drawn = draws.prompt_weights.T  # [P, B]
    per_seed = np.stack([((h.astype(np.float64) @ drawn) > 0).mean(axis=0) for h in hits], axis=1)
    return np.take_along_axis(per_seed, draws.seeds, axis=1).mean(1)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
