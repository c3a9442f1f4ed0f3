"""The paper profile's dress rehearsal (:mod:`stages.bench.rehearsal`): its parameters are the
composed paper profile with only the sources and the documented cuts changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.bench.rehearsal import CUTS, paper_params, rehearse

ROOT = Path(__file__).resolve().parents[1]


def test_paper_params_are_the_composed_profile_with_local_sources_and_cuts(tmp_path):
    params = paper_params(ROOT, tmp_path / "imdb", tmp_path / "gpt2", tmp_path / "bert")
    paper = yaml.safe_load((ROOT / "conf/profile/paper.yaml").read_text())
    config = yaml.safe_load((ROOT / "conf/config.yaml").read_text())
    assert "defaults" not in params and set(params) == set(config) - {"defaults"}
    assert params["data"]["source"] == str(tmp_path / "imdb")
    assert params["sft"]["model"] == str(tmp_path / "gpt2") and params["sft"]["epochs"] == 0
    assert params["reward"]["model"] == str(tmp_path / "bert") and params["reward"]["epochs"] == 0
    assert params["reward"]["max_length"] == paper["reward"]["max_length"]
    assert params["align"]["common"]["optimizer"] == "adamw_torch_fused"
    for key, value in paper["align"]["common"].items():
        assert params["align"]["common"][key] == value
    assert list(params["align"]["variants"]) == ["dpo"]
    assert params["seeds"] == CUTS["seeds"] == [0]
    for section, values in CUTS.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert params[section][key] == value
    # everything neither cut nor replaced is the paper profile over the base config
    assert params["sample"]["batch_size"] == paper["sample"]["batch_size"]
    assert params["evaluate"]["batch_size"] == paper["evaluate"]["batch_size"]
    assert params["pairs"] == config["pairs"]


def test_rehearsal_needs_the_imdb_copy(tmp_path):
    with pytest.raises(FileNotFoundError, match="rehearsal: .*train.jsonl not found"):
        rehearse(ROOT, tmp_path)


@pytest.mark.slow
def test_paper_rehearsal_end_to_end(imdb_dir, tmp_path):
    """The paper profile through `dvc repro`, stage by stage, with GPT-2 124M / DistilBERT shapes
    (about 5 minutes on 2 cores; skipped without the IMDB copy)."""
    result = rehearse(ROOT, imdb_dir, workdir=tmp_path)
    assert list(result["stages"]) == [
        "prepare",
        "sft",
        "reward",
        "sample",
        "score",
        "pairs",
        "reference",
        "align@dpo-0",
        "quality-reference",
        "evaluate-sft@0",
        "evaluate@dpo-0",
        "report",
        "best-of-n@0",
        "frontier",
    ]
    assert all(s["wall_s"] > 0 and s["peak_mib"] > 0 for s in result["stages"].values())
    # the policy starts as the SFT copy: zero implicit reward at the first step (float32 head)
    assert abs(result["step0"]["chosen_reward"]) < 1e-3
    assert abs(result["step0"]["rejected_reward"]) < 1e-3
    assert result["params"]["align"]["common"]["optimizer"] == "adamw_torch_fused"
    assert result["summary_lines"] > 5
