"""Artifact paths: one home for every path the stages pass between them."""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.lib import paths

ROOT = Path(__file__).resolve().parents[1]


def test_policy_and_variant_paths():
    assert paths.policy_model("sft", 2) == paths.SFT_DIR == Path("models/sft")  # one for all seeds
    assert paths.policy_model("dpo", 2) == paths.aligned_model("dpo", 2)
    assert paths.aligned_model("dpo", 2) == Path("models/aligned/dpo/seed-2")
    assert paths.metrics_file("sft") == Path("metrics/sft.json")
    assert paths.timings_file("sft") == Path("logs/timings/sft.json")


def test_per_seed_run_paths():
    """Each (variant, seed) run, and each seed's SFT evaluation, has its own files."""
    assert paths.align_metrics("dpo", 1) == Path("metrics/align/dpo/seed-1.json")
    assert paths.align_logs("dpo", 1) == Path("logs/align/dpo/seed-1")
    assert paths.eval_metrics("sft", 0) == Path("metrics/eval/sft/seed-0.json")
    assert paths.eval_samples("alpha-0_5", 3) == Path("data/eval/alpha-0_5/seed-3.jsonl")
    assert Path("metrics/summary.json") == paths.SUMMARY_METRICS


def test_every_artifact_path_is_a_dvc_dep_or_out():
    """dvc.yaml and the code agree on where each artifact lives."""
    text = (ROOT / "dvc.yaml").read_text()
    stages = yaml.safe_load(text)["stages"]
    listed = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("deps", []) + body.get("outs", []):
            listed.add(next(iter(entry)) if isinstance(entry, dict) else entry)
        for entry in body.get("plots", []):
            listed.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    run = ("${item.variant}", "${item.seed}")
    for path in (
        paths.PREPARED_DIR,
        paths.PROMPTS_DIR,
        paths.SFT_DIR,
        paths.REWARD_DIR,
        paths.SAMPLES,
        paths.SCORED,
        paths.PREFERENCES,
        paths.REFERENCE,
        paths.SUMMARY_METRICS,
        paths.aligned_model(*run),
        paths.align_metrics(*run),
        paths.align_logs(*run) / "plots/metrics",
        paths.eval_metrics(*run),
        paths.eval_samples(*run),
        paths.eval_metrics("sft", run[1]),
        paths.eval_samples("sft", run[1]),
    ):
        assert str(path) in listed, path


def test_timings_are_git_ignored():
    assert "logs/timings/" in (ROOT / ".gitignore").read_text().splitlines()
