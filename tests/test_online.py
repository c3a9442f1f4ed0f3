"""Iterative (on-policy) DPO rounds: online-init + online-round on tiny models in a tmp project."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from stages.lib.config import load_params
from stages.lib.online import read_rounds, round_data, round_metrics, round_model
from stages.online_init import online_init
from stages.online_round import online_round
from tests.conftest import build_tiny_lm, save_classifier

ROOT = Path(__file__).resolve().parents[1]
WORDS = "The film was great but the acting never really worked and I loved it".split()


def online_params(**round_settings) -> dict:
    """The repository's params with test-sized align.common and online sections."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["align"]["common"].update(
        {
            "epochs": 1,
            "batch_prompts": 4,
            "eval_batch_prompts": 8,
            "logging_steps": 1,
            "eval_steps": 50,
            "warmup_ratio": 0.0,
            "learning_rate": 3e-3,
            "checkpoints": None,
        }
    )
    params["online"] = {
        "variants": ["dpo", "fkl"],
        "rounds": [{"round": 1, "start": 0}, {"round": 2, "start": 1}],
        "round": {
            "prompts": 12,
            "reference": "sft",
            "reference_batch_size": 16,
            "sample": {
                "n_per_prompt": 4,
                "temperature": 1.0,
                "max_new_tokens": 8,
                "batch_size": 32,
            },
            "pairs": {"strategy": "first_round", "val_fraction": 0.25},
            **round_settings,
        },
    }
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("online")
    build_tiny_lm(root / "models/sft")
    save_classifier(root / "models/reward")
    prompts = [
        {"prompt_id": f"train-{i}", "prompt": " ".join(WORDS[i % 7 : i % 7 + 3])} for i in range(20)
    ]
    (root / "data/prompts").mkdir(parents=True)
    (root / "data/prompts/train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_two_rounds_chain_from_the_sft_policy(project, monkeypatch):
    monkeypatch.chdir(project)
    params = online_params()
    assert online_init(params, "dpo", 0) == round_model("dpo", 0, 0)
    first = online_round(params, "dpo", 0, 1, progress=False)
    second = online_round(params, "dpo", 0, 2, progress=False)
    for r, m in ((1, first), (2, second)):
        assert m["round"] == r and m["prompts"] == 12 and m["completions"] == 48
        assert m["steps"] >= 1 and m["pairs"]["pairs"] >= 1
        assert json.loads(round_metrics("dpo", 0, r).read_text())["steps"] == m["steps"]
        prefs = (round_data("dpo", 0, r) / "preferences.jsonl").read_text().splitlines()
        refs = (round_data("dpo", 0, r) / "reference.jsonl").read_text().splitlines()
        assert len(prefs) == len(refs) >= 1
        assert (round_model("dpo", 0, r) / "config.json").is_file()
    sft, r1, r2 = (_weights(round_model("dpo", 0, r)) for r in range(3))
    assert torch.equal(sft, _weights(project / "models/sft"))
    assert not torch.equal(sft, r1) and not torch.equal(r1, r2)
    # a fresh draw of prompts per round (seeded): rounds 1 and 2 sample different prompt sets
    ids = [
        {
            json.loads(x)["prompt_id"]
            for x in (round_data("dpo", 0, r) / "preferences.jsonl").read_text().splitlines()
        }
        for r in (1, 2)
    ]
    assert ids[0] != ids[1]


def test_reference_previous_round_and_any_variant(project, monkeypatch):
    monkeypatch.chdir(project)
    params = online_params(reference="previous")
    online_init(params, "fkl", 1)
    m = online_round(params, "fkl", 1, 1, progress=False)
    assert m["reference"] == "previous" and m["variant"] == "fkl"
    # with the previous round as reference, the policy at step 0 is the reference: r = 0
    ref = [
        json.loads(x)
        for x in (round_data("fkl", 1, 1) / "reference.jsonl").read_text().splitlines()
    ]
    assert all(len(r["logps"]) == 4 for r in ref)


@pytest.mark.parametrize(
    ("rounds", "message"),
    [
        ([], "params: online.rounds: must list >= 1 rounds"),
        ([{"round": 2, "start": 1}], "params: online.rounds[0]: must be {round: 1, start: 0}"),
        ([{"round": 1, "start": 0, "x": 1}], "params: online.rounds[0].x: not a known key"),
    ],
)
def test_bad_rounds_name_the_key(rounds, message):
    params = online_params()
    params["online"]["rounds"] = rounds
    with pytest.raises(
        ValueError,
        match="^"
        + message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{").replace("}", r"\}"),
    ):
        read_rounds(params)


def test_round_below_one_and_unknown_variant(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match=r"^online-round@dpo-0-r0: --round: must be >= 1"):
        online_round(online_params(), "dpo", 0, 0)
    params = online_params()
    params["online"]["variants"] = ["nope"]
    with pytest.raises(ValueError, match=r"^params: online.variants: 'nope' is not a variant"):
        online_init(params, "nope", 0)


def test_missing_reward_model_and_missing_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^models/reward: reward model not found"):
        online_round(online_params(), "dpo", 0, 1)
    save_classifier(tmp_path / "models/reward")
    with pytest.raises(FileNotFoundError, match=r"round 2's policy not found \(run online-round"):
        online_round(online_params(), "dpo", 0, 3)


def test_a_round_whose_samples_all_tie_writes_nothing(project, monkeypatch):
    monkeypatch.chdir(project)
    params = online_params()
    online_init(params, "dpo", 5)
    monkeypatch.setattr(
        "stages.online_round.score_texts", lambda model, tok, texts, score: [0.0] * len(texts)
    )
    with pytest.raises(ValueError, match=r"^online-round@dpo-5-r1: round 1: no preference pair"):
        online_round(params, "dpo", 5, 1, progress=False)
    assert not round_model("dpo", 5, 1).exists()
    assert not round_data("dpo", 5, 1).exists()
    assert not round_metrics("dpo", 5, 1).exists()


def test_negative_prompts_key_is_named():
    with pytest.raises(ValueError, match=r"^params: online.round.prompts: must be >= 1, got 0"):
        from stages.lib.online import read_round_config

        read_round_config(online_params(prompts=0))
