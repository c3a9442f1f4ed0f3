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
    resampled seeds, ``prompt_weights`` [B, P] how often each prompt was drawn; ``seed`` also
    fixes the draws of reference points (:meth:`point_weights`)."""

    seeds: np.ndarray
    prompt_weights: np.ndarray
    seed: int = 0

    def point_weights(self, n_points: int) -> np.ndarray:
        """[B, N]: how often each of N reference points is drawn in each resample (with
        replacement); the same for every policy and metric of these draws (paired)."""
        rng = np.random.default_rng([self.seed, n_points])
        return _weights(rng.integers(0, n_points, size=(len(self.seeds), n_points)), n_points)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
    return np.bincount(flat, minlength=len(idx) * n).reshape(len(idx), n).astype(np.float64)


def draw_resamples(n_seeds: int, n_prompts: int, n: int, seed: int) -> Resamples:
    """``n`` two-level resamples: S seeds with replacement, then P prompts with replacement
    (one prompt draw per resample, shared by its seeds: the prompts are crossed with seeds)."""
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n, n_seeds))
    prompt_idx = rng.integers(0, n_prompts, size=(n, n_prompts))
    return Resamples(seed_idx, _weights(prompt_idx, n_prompts), seed)


def point_estimate(num: np.ndarray, den: np.ndarray) -> float:
    """Mean over seeds of Σ_p num / Σ_p den (``num``, ``den``: [S, P])."""
    return float(np.mean(num.sum(1) / den.sum(1)))


def replicates(num: np.ndarray, den: np.ndarray, draws: Resamples) -> np.ndarray:
    """The estimate recomputed on every resample: [B]."""
    w = draws.prompt_weights
    per_seed = (w @ num.T) / (w @ den.T)  # [B, S]: each original seed on the resampled prompts
    return np.take_along_axis(per_seed, draws.seeds, axis=1).mean(1)


def set_replicates(hits: np.ndarray, draws: Resamples) -> np.ndarray:
    """A set fraction (coverage, recall) recomputed on every resample: [B]. ``hits`` [S, N, P]
    says which of N reference points the samples of prompt p hit in seed s; a run's value is
    the share of points hit by any prompt, a mean over the reference points. The resample
    draws the seeds (``draws.seeds``, shared with every other metric) and the reference points
    with replacement (:meth:`Resamples.point_weights`); the prompts stay fixed. Resampling the
    prompts instead would bias a union downward: a resample holds ~63% distinct prompts, and
    on the demo every such interval lay below its own estimate."""
    union = hits.any(axis=2).astype(np.float64)  # [S, N]
    return replicates(
        union, np.ones_like(union), Resamples(draws.seeds, draws.point_weights(union.shape[1]))
    )


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
