"""Artifact paths: one home for every path the stages pass between them."""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.lib import paths

ROOT = Path(__file__).resolve().parents[1]


def test_policy_and_variant_paths():
    assert paths.policy_model("sft") == paths.SFT_DIR == Path("models/sft")
    assert paths.policy_model("dpo") == paths.aligned_model("dpo") == Path("models/aligned/dpo")
    assert paths.metrics_file("sft") == Path("metrics/sft.json")
    assert paths.timings_file("sft") == Path("logs/timings/sft.json")


def test_every_artifact_path_is_a_dvc_dep_or_out():
    """dvc.yaml and the code agree on where each artifact lives."""
    text = (ROOT / "dvc.yaml").read_text()
    stages = yaml.safe_load(text)["stages"]
    listed = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("deps", []) + body.get("outs", []):
            listed.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    for path in (
        paths.PREPARED_DIR,
        paths.PROMPTS_DIR,
        paths.SFT_DIR,
        paths.REWARD_DIR,
        paths.SAMPLES,
        paths.SCORED,
        paths.PREFERENCES,
        paths.REFERENCE,
    ):
        assert str(path) in listed, path


def test_timings_are_git_ignored():
    assert "logs/timings/" in (ROOT / ".gitignore").read_text().splitlines()
