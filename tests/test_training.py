"""The supervised training helpers (stages/lib/training.py): the shared TrainingArguments, the
timing-free DVCLive callback, the train-or-keep and finish steps, on a 1-layer classifier."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import WARMUP_STEPS, assert_warms_up_over, lr_schedule
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from stages.lib import training
from stages.lib.config import (
    RewardConfig,
    TinyClassifierConfig,
    load_params,
    read_section,
)
from stages.lib.modeling import open_live, tiny_classifier, train_bpe_tokenizer
from stages.lib.training import (
    TimelessDVCLive,
    finish,
    is_timing,
    run_trainer,
    train_or_keep,
    train_summary,
    training_arguments,
)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "A great film, truly great.",
    "A dull film and a dull plot.",
    "Great fun.",
    "Dull, dull, dull.",
    "The acting was great.",
    "The plot was dull.",
] * 4
TINY = TinyClassifierConfig(
    vocab_size=280, n_layers=1, dim=16, n_heads=2, max_position_embeddings=32
)


def reward_config(**overrides) -> RewardConfig:
    """The repository's reward section with ``overrides``."""
    section = {**load_params(ROOT / "params.yaml")["reward"], **overrides}
    return read_section({"reward": section}, "reward", RewardConfig)


def tiny_setup():
    """A seeded tiny classifier, its tokenizer and a labelled dataset of :data:`TEXTS`."""
    tokenizer = train_bpe_tokenizer(TEXTS, 280, model_max_length=32)
    torch.manual_seed(0)
    model = tiny_classifier(tokenizer, TINY)
    enc = tokenizer(TEXTS)
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [int("reat" in t) for t in TEXTS],
        }
    )
    return model, tokenizer, dataset


def test_training_arguments_are_the_documented_ones():
    cfg = reward_config(
        epochs=3, learning_rate=1e-3, batch_size=4, warmup=0.1, weight_decay=0.01, logging_steps=5
    )
    args = training_arguments(cfg, 7, "/tmp/out")
    assert args == {
        "output_dir": "/tmp/out",
        "num_train_epochs": 3,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "train_sampling_strategy": "group_by_length",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 5,
        "logging_first_step": True,
        "report_to": "none",
        "disable_tqdm": False,
        "seed": 7,
        "data_seed": 7,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    TrainingArguments(**args)  # valid as they are


def test_is_timing():
    timings = [
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "eval_runtime",
        "eval_samples_per_second",
    ]
    assert all(map(is_timing, timings))
    assert not any(map(is_timing, ["loss", "train_loss", "total_flos", "epoch", "grad_norm"]))


def test_timeless_dvclive_logs_no_timings_and_no_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    live = open_live("logs")
    callback = TimelessDVCLive(live=live)
    args = TrainingArguments(output_dir=str(tmp_path / "random-name"), report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 0.1})
    summary = {
        "train_runtime": 3.2,
        "train_samples_per_second": 10.0,
        "train_steps_per_second": 1.0,
        "total_flos": 12.0,
        "train_loss": 1.4,
    }
    callback.on_log(args, state, control, logs=summary)
    assert "train_runtime" in summary  # the caller's dict is left alone
    live.end()
    logged = json.loads(Path("logs/metrics.json").read_text())
    assert logged["train"] == {"loss": 1.4} and logged["total_flos"] == 12.0
    assert logged["loss"] == 1.5
    plots = {
        p.relative_to("logs/plots/metrics").as_posix()
        for p in Path("logs/plots/metrics").rglob("*.tsv")
    }
    assert plots == {"loss.tsv", "learning_rate.tsv", "train/loss.tsv", "total_flos.tsv"}
    params = Path("logs/params.yaml").read_text()
    assert "random-name" not in params and "output_dir" not in params
    assert "learning_rate:" in params


def test_train_summary():
    result = SimpleNamespace(training_loss=0.75, global_step=9)
    history = [
        {"loss": 2.0, "step": 1},
        {"grad_norm": 1.0},
        {"loss": 0.5, "step": 9},
        {"train_loss": 0.75, "train_runtime": 1.0},
    ]
    assert train_summary(result, history) == {
        "train_loss": 0.75,
        "first_train_loss": 2.0,
        "final_train_loss": 0.5,
        "steps": 9,
    }
    empty = train_summary(result, [])
    assert math.isnan(empty["first_train_loss"]) and math.isnan(empty["final_train_loss"])


def test_run_trainer_trains_and_logs_curves_without_timings(
    tmp_path, monkeypatch, torch_one_thread
):
    monkeypatch.chdir(tmp_path)
    model, tokenizer, dataset = tiny_setup()
    before = model.classifier.weight.detach().clone()
    cfg = reward_config(epochs=1, batch_size=8, learning_rate=1e-2, logging_steps=1, warmup=0.0)
    summary = run_trainer(
        Trainer,
        TrainingArguments,
        model,
        dataset,
        cfg,
        seed=0,
        log_dir=tmp_path / "logs",
        prefix="test",
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    assert summary["steps"] == 3 and math.isfinite(summary["train_loss"])
    assert math.isfinite(summary["first_train_loss"]) and math.isfinite(summary["final_train_loss"])
    assert not torch.equal(before, model.classifier.weight.detach().cpu())
    files = [p.relative_to(tmp_path / "logs").as_posix() for p in (tmp_path / "logs").rglob("*")]
    assert "plots/metrics/loss.tsv" in files and "params.yaml" in files
    assert not [f for f in files if "runtime" in f or "per_second" in f]
    logged = (tmp_path / "logs/metrics.json").read_text()
    assert "runtime" not in logged and "per_second" not in logged
    assert "test-trainer-" not in (tmp_path / "logs/params.yaml").read_text()


def test_run_trainer_without_a_log_dir(tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.chdir(tmp_path)
    model, tokenizer, dataset = tiny_setup()
    cfg = reward_config(epochs=1, batch_size=12, logging_steps=1)
    summary = run_trainer(
        Trainer,
        TrainingArguments,
        model,
        dataset,
        cfg,
        seed=0,
        log_dir=None,
        prefix="test",
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    assert summary["steps"] == 2 and not list(tmp_path.iterdir())


def test_train_or_keep(tmp_path):
    model = torch.nn.Linear(3, 2)
    kept = train_or_keep(
        reward_config(model="some/model", epochs=0),
        model,
        10,
        tmp_path / "a",
        lambda log_dir: pytest.fail("trained with 0 epochs"),
    )
    assert kept == {"model": "some/model", "epochs": 0, "train_texts": 0, "parameters": 8}
    assert (tmp_path / "a").is_dir()  # an empty but current log
    calls = []
    trained = train_or_keep(
        reward_config(epochs=2),
        model,
        10,
        tmp_path / "b",
        lambda log_dir: calls.append(log_dir) or {"steps": 4},
    )
    assert calls == [tmp_path / "b"]
    assert trained == {"model": "tiny", "epochs": 2, "train_texts": 10, "parameters": 8, "steps": 4}


def test_finish_keeps_timings_out_of_the_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tokenizer, _ = tiny_setup()
    timings = finish(
        "reward",
        model,
        tokenizer,
        {"accuracy": 0.5},
        Path("models/reward"),
        started=0.0,
        trained=1.234,
    )
    assert json.loads(Path("metrics/reward.json").read_text()) == {"accuracy": 0.5}
    assert json.loads(Path("logs/timings/reward.json").read_text()) == timings
    assert set(timings) == {"train_seconds", "wall_seconds"} and timings["train_seconds"] == 1.23
    assert (tmp_path / "models/reward/config.json").is_file()


def test_supervised_warmup_ratio_is_a_share_of_the_steps(tmp_path):
    section = {**load_params(ROOT / "params.yaml")["reward"], "warmup": 0.1, "learning_rate": 1e-3}
    cfg = read_section({"reward": section}, "reward", RewardConfig)
    kwargs = training.training_arguments(cfg, 0, str(tmp_path))
    kwargs.update(bf16=False, use_cpu=True, disable_tqdm=True)
    args = TrainingArguments(**kwargs)
    assert args.get_warmup_steps(WARMUP_STEPS) == 10
    assert_warms_up_over(lr_schedule(args), 1e-3, 10)
