"""Artifact paths: every file and folder the stages pass between them, in one place.

Paths are relative to the repository root (the working directory of every stage, as under
``dvc repro``); ``dvc.yaml`` lists the same paths as deps and outs::

    from stages.lib import paths
    rows = read_rows(paths.PREFERENCES, PREFERENCES)
    paths.aligned_model("dpo")          # models/aligned/dpo
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
METRICS_DIR, LOGS_DIR, REPORTS_DIR = Path("metrics"), Path("logs"), Path("reports")
#: Wall-clock timings: printed and written here (git-ignored), never into tracked metrics.
TIMINGS_DIR = LOGS_DIR / "timings"


def metrics_file(stage: str) -> Path:
    """``metrics/<stage>.json`` (tracked by DVC as a metric, in git)."""
    return METRICS_DIR / f"{stage}.json"


def stage_logs(stage: str) -> Path:
    """``logs/<stage>`` (DVCLive training curves)."""
    return LOGS_DIR / stage


def aligned_model(variant: str) -> Path:
    """``models/aligned/<variant>``."""
    return ALIGNED_DIR / variant


def policy_model(policy: str) -> Path:
    """``models/sft`` for ``sft``, else ``models/aligned/<policy>``."""
    return SFT_DIR if policy == "sft" else aligned_model(policy)


def eval_metrics(policy: str) -> Path:
    """``metrics/eval/<policy>.json``: the evaluation metrics of one policy."""
    return METRICS_DIR / "eval" / f"{policy}.json"


def eval_samples(policy: str) -> Path:
    """``data/eval/<policy>.jsonl``: the evaluation samples of one policy, with their scores."""
    return EVAL_DIR / f"{policy}.jsonl"


def timings_file(stage: str) -> Path:
    """``logs/timings/<stage>.json``: wall times of the last run (git-ignored)."""
    return TIMINGS_DIR / f"{stage}.json"
