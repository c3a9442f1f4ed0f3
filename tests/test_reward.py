"""The ``reward`` stage (stages/reward.py) on a micro corpus of polar reviews, 1-layer models.

Every test runs the stage in ``tmp_path`` (never touching the repository's data), starting from
the repository's params.yaml with the ``reward`` section shrunk to seconds, and loads models
from folders through the same ``from_pretrained`` code path a hub id uses. Scoring itself is
tested in tests/test_scoring.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NEGATIVE, POSITIVE, polar_rows, save_classifier, tiny_classifier_config
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ModernBertModel,
)
from typer.testing import CliRunner

from stages.cli import build_app
from stages.lib.config import load_params
from stages.lib.modeling import (
    load_pretrained,
)
from stages.lib.scoring import load_reward_model, score_texts
from stages.reward import accuracy, run_reward

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_classifier_config()
#: The micro run: what the tests change in the repository's ``reward`` section.
MICRO = {
    "epochs": 4,
    "max_length": 64,
    "max_train_texts": None,
    "batch_size": 8,
    "learning_rate": 3.0e-3,
    "warmup": 0.0,
    "weight_decay": 0.0,
    "logging_steps": 1,
    "eval_texts": 40,
}


def write_corpus(root, n_train: int = 120, n_test: int = 40, seed: int = 0) -> list[str]:
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = polar_rows(n_train, seed), polar_rows(n_test, seed + 1)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["text"] for r in train]


def reward_params(**overrides) -> dict:
    """The repository's params with the ``reward`` section shrunk to :data:`MICRO` and
    ``overrides`` (``tiny`` merges into ``reward.tiny``)."""
    params = load_params(ROOT / "params.yaml")
    reward = params["reward"]
    reward.update(MICRO)
    reward["tiny"].update(dataclasses.asdict(TINY), **overrides.pop("tiny", {}))
    reward.update(overrides)
    return params


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path)
    return tmp_path


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_reward_trains_ranks_and_saves(workdir, torch_one_thread):
    metrics, timings = run_reward(reward_params())
    assert metrics["final_train_loss"] < metrics["first_train_loss"] - 0.3
    assert metrics["train_texts"] == 120 and metrics["eval_texts"] == 40
    assert metrics["steps"] == 60 and metrics["accuracy"] >= 0.9
    assert json.loads((workdir / "metrics/reward.json").read_text()) == pytest.approx(metrics)
    assert "wall_seconds" not in metrics and "train_seconds" not in metrics
    assert json.loads((workdir / "logs/timings/reward.json").read_text()) == timings
    assert (workdir / "logs/reward/metrics.json").is_file()  # DVCLive training curves
    saved = AutoModelForSequenceClassification.from_pretrained("models/reward")
    assert saved.config.num_labels == 2
    assert AutoTokenizer.from_pretrained("models/reward").pad_token == "<|pad|>"
    model, tokenizer = load_reward_model("models/reward")
    assert accuracy(model, tokenizer, polar_rows(40, 1), 64) == metrics["accuracy"]
    for kind in ("logit", "margin", "prob"):
        pos, neg = score_texts(model, tokenizer, [POSITIVE, NEGATIVE], score=kind)
        assert pos > neg, kind


def test_reward_same_seed_gives_identical_weights_and_logs(tmp_path, monkeypatch, torch_one_thread):
    runs, logs = [], []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        write_corpus(tmp_path / name, n_train=40, n_test=10)
        run_reward(reward_params(epochs=1))
        runs.append(weights(load_pretrained("models/reward", "classifier", "reward.model")[0]))
        logs.append(tree(tmp_path / name / "logs/reward"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert "plots/metrics/loss.tsv" in logs[0] and logs[0] == logs[1]  # byte-identical curves
    assert not [name for name in logs[0] if "runtime" in name or "per_second" in name]


def test_max_train_texts_is_a_seeded_subset(workdir, torch_one_thread):
    metrics, _ = run_reward(reward_params(epochs=1, max_train_texts=16, batch_size=16))
    assert metrics["train_texts"] == 16 and metrics["steps"] == 1


def test_trained_folder_is_copied_with_epochs_0(workdir):
    source = save_classifier(workdir / "pretrained")
    metrics, _ = run_reward(reward_params(model="./pretrained", epochs=0))
    assert metrics["train_texts"] == 0 and 0 <= metrics["accuracy"] <= 1
    assert (workdir / "logs/reward").is_dir()  # an empty but current log
    a, tok_a = load_reward_model(str(source))
    b, tok_b = load_reward_model("models/reward")
    pair = [POSITIVE, NEGATIVE]
    assert score_texts(a, tok_a, pair) == score_texts(b, tok_b, pair)
    assert all(torch.equal(v, weights(b)[k]) for k, v in weights(a).items())


def test_pretrained_folder_is_fine_tuned(workdir, torch_one_thread):
    save_classifier(workdir / "pretrained", "distilbert")
    metrics, _ = run_reward(reward_params(model="pretrained", epochs=2))
    assert metrics["final_train_loss"] < metrics["first_train_loss"]
    assert (workdir / "models/reward/config.json").is_file()


def test_three_label_head_names_the_parameter(workdir):
    save_classifier(workdir / "three", num_labels=3)
    with pytest.raises(ValueError, match=r"^reward\.model: the classifier head has 3 labels"):
        run_reward(reward_params(model="three", epochs=0))
    assert not (workdir / "models/reward").exists()


def test_swapped_labels_are_rejected(workdir):
    save_classifier(
        workdir / "swapped",
        id2label={0: "POSITIVE", 1: "NEGATIVE"},
        label2id={"POSITIVE": 0, "NEGATIVE": 1},
    )
    with pytest.raises(ValueError, match=r"^reward\.model: label 1 must be the positive class"):
        run_reward(reward_params(model="swapped", epochs=0))


def test_base_model_without_a_trained_head_cannot_be_copied(workdir):
    folder = save_classifier(workdir / "clf")
    base = ModernBertModel(load_pretrained(str(folder), "classifier", "reward.model")[0].config)
    base.save_pretrained(folder)  # overwrite with a headless checkpoint
    with pytest.raises(ValueError, match=r"^reward\.model: 'clf' has no trained weights"):
        run_reward(reward_params(model="clf", epochs=0))


def test_unloadable_model_names_the_parameter(workdir):
    with pytest.raises(ValueError, match=r"^reward\.model: .*\(no such folder\)"):
        run_reward(reward_params(model="./missing-model", epochs=1))


def test_context_shorter_than_max_length_names_the_parameter(workdir):
    with pytest.raises(
        ValueError,
        match=r"^params: reward\.max_length: must be <= the model's "
        r"context of 128 positions \(reward\.tiny\."
        r"max_position_embeddings for a tiny model\), got 200$",
    ):
        run_reward(reward_params(max_length=200))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, r"params: reward\.epochs is 0 but reward\.model is 'tiny'"),
        ({"epochs": 1.5}, r"params: reward\.epochs: must be int, got 1\.5"),
        (
            {"tiny": {"dim": 33}},
            r"params: reward\.tiny\.dim=33 must be divisible by "
            r"reward\.tiny\.n_heads=2",
        ),
        (
            {"tiny": {"dropout": 1.0}},
            r"params: reward\.tiny\.dropout: must be in \[0, 1\), got 1\.0",
        ),
        ({"max_length": 1}, r"params: reward\.max_length: must be >= 2, got 1"),
        ({"learning_rate": 0}, r"params: reward\.learning_rate: must be > 0, got 0\.0"),
        (
            {"score": "softmax"},
            r"params: reward\.score: must be one of logit, margin, prob, "
            r"got 'softmax'",
        ),
        ({"lr": 1e-3}, r"params: reward\.lr: not a known key \(known: model, epochs, "),
        ({"tiny": None}, r"params: reward\.tiny: is missing"),
    ],
)
def test_bad_params_name_the_key(workdir, change, message):
    params = reward_params()
    tiny = change.pop("tiny", {})
    params["reward"]["tiny"] = None if tiny is None else {**params["reward"]["tiny"], **tiny}
    params["reward"].update(change)
    with pytest.raises(ValueError, match=f"^{message}"):
        run_reward(params)
    assert not (workdir / "models").exists() and not (workdir / "logs").exists()


def test_missing_section(workdir):
    with pytest.raises(ValueError, match=r"^params: section 'reward' is missing$"):
        run_reward({"seed": 0})


def test_cli_prints_wall_time_and_keeps_it_out_of_the_metrics(workdir):
    save_classifier(workdir / "pretrained")
    Path("params.yaml").write_text(yaml.safe_dump(reward_params(model="pretrained", epochs=0)))
    result = CliRunner().invoke(build_app("reward"), ["reward"])
    assert result.exit_code == 0, result.output
    assert "reward: pretrained -> models/reward, test accuracy " in result.output
    assert "on 40 reviews (" in result.output and result.output.rstrip().endswith("s)")
    assert "wall_seconds" not in Path("metrics/reward.json").read_text()
    assert set(json.loads(Path("logs/timings/reward.json").read_text())) == {
        "train_seconds",
        "wall_seconds",
    }
