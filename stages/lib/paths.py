"""Artifact paths: every file and folder the stages pass between them, in one place.

Paths are relative to the repository root (the working directory of every stage, as under
``dvc repro``); ``dvc.yaml`` lists the same paths as deps and outs::

    from stages.lib import paths
    rows = read_rows(paths.PREFERENCES, PREFERENCES)
    paths.aligned_model("dpo", 1)       # models/aligned/dpo/seed-1

``align`` and ``evaluate`` run once per (variant, seed) and ``evaluate`` once per seed for
``sft``: their artifacts sit under ``<variant>/seed-<s>`` (:func:`run_name`).
"""

from __future__ import annotations

from pathlib import Path

# prepare
PREPARED_DIR = Path("data/prepared")
PREPARED_TRAIN, PREPARED_TEST = PREPARED_DIR / "train.jsonl", PREPARED_DIR / "test.jsonl"
PROMPTS_DIR = Path("data/prompts")
TRAIN_PROMPTS, EVAL_PROMPTS = PROMPTS_DIR / "train.jsonl", PROMPTS_DIR / "eval.jsonl"
# sft, reward
SFT_DIR, REWARD_DIR = Path("models/sft"), Path("models/reward")
# sample, score, pairs, reference
SAMPLES, SCORED = Path("data/samples.jsonl"), Path("data/scored.jsonl")
PREFERENCES, REFERENCE = Path("data/preferences.jsonl"), Path("data/reference.jsonl")
# align, evaluate, report
ALIGNED_DIR = Path("models/aligned")
EVAL_DIR = Path("data/eval")
TRAJECTORY_DIR = Path("data/trajectory")
METRICS_DIR, LOGS_DIR, REPORTS_DIR = Path("metrics"), Path("logs"), Path("reports")
#: Wall-clock timings: printed and written here (git-ignored), never into tracked metrics.
TIMINGS_DIR = LOGS_DIR / "timings"


def metrics_file(stage: str) -> Path:
    """``metrics/<stage>.json`` (tracked by DVC as a metric, in git)."""
    return METRICS_DIR / f"{stage}.json"


def stage_logs(stage: str) -> Path:
    """``logs/<stage>`` (DVCLive training curves)."""
    return LOGS_DIR / stage


def run_name(seed: int) -> str:
    """``seed-<s>``: the folder or file stem of one run's artifacts."""
    return f"seed-{seed}"


def aligned_model(variant: str, seed: int) -> Path:
    """``models/aligned/<variant>/seed-<s>``: the policy trained by one align run."""
    return ALIGNED_DIR / variant / run_name(seed)


#: The folder of an align run's checkpoints, inside its model folder.
CHECKPOINTS = "checkpoints"


def checkpoint_model(variant: str, seed: int, step: int) -> Path:
    """``models/aligned/<variant>/seed-<s>/checkpoints/step-<n>``: the policy of one align run
    after ``step`` optimizer steps (``align.common.checkpoints``)."""
    return aligned_model(variant, seed) / CHECKPOINTS / f"step-{step}"


def policy_model(policy: str, seed: int) -> Path:
    """``models/sft`` for ``sft`` (one SFT policy for every seed), else
    ``models/aligned/<policy>/seed-<s>``."""
    return SFT_DIR if policy == "sft" else aligned_model(policy, seed)


def align_metrics(variant: str, seed: int) -> Path:
    """``metrics/align/<variant>/seed-<s>.json``: the training metrics of one align run."""
    return METRICS_DIR / "align" / variant / f"{run_name(seed)}.json"


def align_logs(variant: str, seed: int) -> Path:
    """``logs/align/<variant>/seed-<s>``: the DVCLive logs of one align run (curves under
    ``plots/metrics``)."""
    return LOGS_DIR / "align" / variant / run_name(seed)


def eval_metrics(policy: str, seed: int) -> Path:
    """``metrics/eval/<policy>/seed-<s>.json``: the evaluation metrics of one policy and seed."""
    return METRICS_DIR / "eval" / policy / f"{run_name(seed)}.json"


def eval_samples(policy: str, seed: int) -> Path:
    """``data/eval/<policy>/seed-<s>.jsonl``: the evaluation samples of one policy and seed,
    with their per-sample scores."""
    return EVAL_DIR / policy / f"{run_name(seed)}.jsonl"


#: ``metrics/summary.json``: the report's aggregates over seeds (what ``dvc metrics diff`` shows).
SUMMARY_METRICS = METRICS_DIR / "summary.json"


def timings_file(stage: str) -> Path:
    """``logs/timings/<stage>.json``: wall times of the last run (git-ignored)."""
    return TIMINGS_DIR / f"{stage}.json"


# best-of-n, frontier (issue 15)
BEST_OF_N_DIR = Path("data/best_of_n")
#: ``reports/frontier/``: the matched-KL tables and the frontier plots.
FRONTIER_DIR = REPORTS_DIR / "frontier"
#: ``metrics/frontier.json``: the matched-KL values (what ``dvc metrics diff`` shows).
FRONTIER_METRICS = METRICS_DIR / "frontier.json"


def best_of_n_samples(seed: int) -> Path:
    """``data/best_of_n/seed-<s>.jsonl``: the SFT policy's n_max scored draws per eval prompt."""
    return BEST_OF_N_DIR / f"{run_name(seed)}.jsonl"


def best_of_n_metrics(seed: int) -> Path:
    """``metrics/best_of_n/seed-<s>.json``: best-of-n reward (and gold) per n, one seed."""
    return METRICS_DIR / "best_of_n" / f"{run_name(seed)}.json"


# Bring your own preferences and policies (README, "Bring your own preferences and policies")
#: ``data/pairs-trl/``: the training pairs in trl's preference format, JSON Lines files
#: ``train.jsonl`` and ``test.jsonl`` (the validation prompts; ``datasets.load_dataset`` reads the
#: folder), written by ``pairs`` (and by ``ingest`` in the ``byo/`` pipeline).
PAIRS_TRL = Path("data/pairs-trl")
#: ``models/external/<name>/``: policies trained elsewhere, evaluated as ``evaluate-external@``.
EXTERNAL_DIR = Path("models/external")


def external_model(name: str) -> Path:
    """``models/external/<name>``: an external policy folder (any causal LM sharing the SFT
    tokenizer), listed by name under ``external`` in params.yaml."""
    return EXTERNAL_DIR / name


# The quality–diversity measures (issue 28): written once per profile by quality-reference.
QUALITY_DIR = Path("data/quality")
#: ``data/quality/reference.jsonl``: the reference sets' held-out reviews, cut to a sample's length.
QUALITY_REFERENCE = QUALITY_DIR / "reference.jsonl"
#: ``data/quality/spaces.npz``: the fitted feature spaces and the reference sets' features.
QUALITY_SPACES = QUALITY_DIR / "spaces.npz"


def trajectory_dir(variant: str, seed: int) -> Path:
    """``data/trajectory/<variant>/seed-<s>``: ``evaluate``'s measures of one align run's
    checkpoints (one ``step-<n>.jsonl`` each, rows as ``data/eval``; ``summary.json``)."""
    return TRAJECTORY_DIR / variant / run_name(seed)


def trajectory_samples(variant: str, seed: int, step: int) -> Path:
    """``data/trajectory/<variant>/seed-<s>/step-<n>.jsonl``: one checkpoint's evaluation."""
    return trajectory_dir(variant, seed) / f"step-{step}.jsonl"
