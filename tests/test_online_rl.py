"""The online RL baseline: trl's RLOOTrainer for a few steps on tiny models, and its bad inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from stages.lib.config import load_params
from stages.lib.rl import rl_model
from stages.online_rl import online_rl
from tests.conftest import build_tiny_lm, save_classifier

ROOT = Path(__file__).resolve().parents[1]


def rl_params(**settings) -> dict:
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["online"]["rl_settings"] = settings or {"kl0_05": 0.05}
    params["online"]["rl"].update(
        {
            "prompts": 8,
            "steps": 2,
            "prompts_per_step": 2,
            "n_per_prompt": 4,
            "max_new_tokens": 8,
            "temperature": 1.0,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        }
    )
    return params


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    build_tiny_lm(tmp_path / "models/sft")
    save_classifier(tmp_path / "models/reward")
    (tmp_path / "data/prompts").mkdir(parents=True)
    rows = [{"prompt_id": f"train-{i}", "prompt": f"The film {i} was"} for i in range(10)]
    (tmp_path / "data/prompts/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_rloo_runs_a_few_steps_and_writes_an_evaluable_policy(project):
    m = online_rl(rl_params(), "kl0_05", 0)
    assert m["steps"] == 2 and m["kl_coef"] == 0.05 and m["last_reward"] is not None
    folder = rl_model("kl0_05", 0)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((project / "metrics/online-rl/kl0_05/seed-0.json").read_text())["steps"] == 2
    assert (project / "logs/online-rl/kl0_05/seed-0/plots/metrics").is_dir()


def test_negative_kl_coefficient_is_named(project):
    with pytest.raises(
        ValueError,
        match=r"^params: online.rl_settings.bad: the KL coefficient must be a number >= 0, got -0.1",
    ):
        online_rl(rl_params(bad=-0.1), "bad", 0)
    assert not rl_model("bad", 0).exists()


def test_missing_reward_model_is_named(project):
    import shutil

    shutil.rmtree(project / "models/reward")
    with pytest.raises(
        FileNotFoundError, match=r"^models/reward: reward model not found: RLOO needs it"
    ):
        online_rl(rl_params(), "kl0_05", 0)
    assert not rl_model("kl0_05", 0).exists()
