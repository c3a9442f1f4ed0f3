"""Supervised training shared by the ``sft`` and ``reward`` stages: one transformers ``Trainer``
run with the arguments both stages use, DVCLive curves without timings, and the common tail
(train or keep the model, evaluate, save, write metrics and timings)::

    metrics, timings = train_and_save(
        "sft", cfg, model, tok, len(texts), paths.SFT_DIR,
        train=lambda log_dir: run_trainer(SFTTrainer, SFTConfig, model, dataset, cfg, seed=seed,
                                          log_dir=log_dir, prefix="sft", processing_class=tok),
        evaluate=lambda: {"eval_texts": len(test), "perplexity": ...},
        started=started,
    )

Wall times never enter ``metrics/<stage>.json`` or ``logs/<stage>``: they go to
``logs/timings/<stage>.json`` (git-ignored), so a re-run leaves the tracked files unchanged.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from dvclive import Live
from transformers.integrations import DVCLiveCallback

from stages.lib import paths
from stages.lib.common import write_json, write_timings
from stages.lib.config import RewardConfig, SftConfig
from stages.lib.modeling import open_live, save_pretrained, use_bf16

#: Substrings of the Trainer log keys that are wall-clock timings.
TIMING_KEYS = ("runtime", "per_second")
#: ``TrainingArguments`` keys left out of the DVCLive params (a temporary folder's random name).
UNLOGGED_ARGS = ("output_dir",)


def is_timing(key: str) -> bool:
    """Whether a Trainer log key is a wall-clock timing (``train_runtime``, ``*_per_second``)."""
    return any(part in key for part in TIMING_KEYS)


class TimelessDVCLive(DVCLiveCallback):
    """transformers' DVCLive callback without timings (the end-of-training ``train_runtime``,
    ``train_samples_per_second``, ...) and without the trainer's temporary ``output_dir`` in
    the logged params, so the curves under ``logs/`` are identical on every run."""

    def __init__(self, live: Live):
        super().__init__(live=live)

    def setup(self, args, state, model):
        self._initialized = True
        if state.is_world_process_zero:
            self.live.log_params(
                {k: v for k, v in args.to_dict().items() if k not in UNLOGGED_ARGS}
            )

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if not is_timing(k)}
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)


def training_arguments(cfg: SftConfig | RewardConfig, seed: int, output_dir: str) -> dict:
    """The ``TrainingArguments`` both stages train with: cosine schedule with a linear warm-up
    over ``cfg.warmup`` of the steps, batches of similar lengths, no checkpoints, no
    evaluation, bf16 only on CUDA, the first step logged, seeded model and data order."""
    return dict(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay,
        bf16=use_bf16(),
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def train_summary(result, log_history: list[dict]) -> dict:
    """The mean train loss, the first and the last logged loss (NaN when none) and the step
    count of a finished ``trainer.train()``."""
    losses = [log["loss"] for log in log_history if "loss" in log]
    return {
        "train_loss": float(result.training_loss),
        "first_train_loss": float(losses[0]) if losses else math.nan,
        "final_train_loss": float(losses[-1]) if losses else math.nan,
        "steps": int(result.global_step),
    }


def run_trainer(
    trainer_cls: type,
    args_cls: type,
    model,
    dataset,
    cfg: SftConfig | RewardConfig,
    *,
    seed: int,
    log_dir: Path | None,
    prefix: str,
    extra_args: dict[str, Any] | None = None,
    **trainer_kwargs,
) -> dict:
    """Train ``model`` in place on ``dataset`` with ``trainer_cls`` (transformers ``Trainer`` or
    trl ``SFTTrainer``) and ``args_cls(**training_arguments(...), **extra_args)`` in a temporary
    output folder; curves go to ``log_dir`` through :class:`TimelessDVCLive` (None: no curves).
    Returns :func:`train_summary`."""
    callbacks, live = [], None
    if log_dir is not None:
        live = open_live(log_dir)
        callbacks.append(TimelessDVCLive(live=live))
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-trainer-") as tmp:
        args = args_cls(**training_arguments(cfg, seed, tmp), **(extra_args or {}))
        trainer = trainer_cls(
            model=model, args=args, train_dataset=dataset, callbacks=callbacks, **trainer_kwargs
        )
        result = trainer.train()
    if live is not None:
        live.end()
    return train_summary(result, trainer.state.log_history)


def train_or_keep(
    cfg: SftConfig | RewardConfig, model, n_texts: int, log_dir: Path, train: Callable[[Path], dict]
) -> dict:
    """The training metrics of a stage: ``model``, ``epochs``, ``parameters``, ``train_texts``
    and, with ``cfg.epochs`` > 0, the summary of ``train(log_dir)``; with 0 epochs the model is
    kept as loaded and ``log_dir`` gets an empty but current DVCLive log."""
    metrics: dict = {
        "model": cfg.model,
        "epochs": cfg.epochs,
        "train_texts": 0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if cfg.epochs > 0:
        metrics.update(train(log_dir))
        metrics["train_texts"] = n_texts
    else:
        open_live(log_dir).end()  # the stage output exists even without training
    return metrics


def finish(
    stage: str, model, tokenizer, metrics: dict, out_dir: Path, *, started: float, trained: float
) -> dict[str, float]:
    """Save ``model`` and ``tokenizer`` into ``out_dir``, write ``metrics/<stage>.json`` and the
    wall times since ``started`` (``train_seconds`` up to ``trained``, ``wall_seconds`` up to
    now) into ``logs/timings/<stage>.json``; returns the timings."""
    save_pretrained(model, tokenizer, out_dir)
    timings = {
        "train_seconds": round(trained - started, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    write_json(paths.metrics_file(stage), metrics)
    write_timings(stage, timings)
    return timings


def train_and_save(
    stage: str,
    cfg: SftConfig | RewardConfig,
    model,
    tokenizer,
    n_texts: int,
    out_dir: Path,
    *,
    train: Callable[[Path], dict],
    evaluate: Callable[[], dict],
    started: float,
) -> tuple[dict, dict[str, float]]:
    """A training stage's tail: :func:`train_or_keep` (logs in ``logs/<stage>``), then the
    held-out metrics ``evaluate()`` adds, then :func:`finish`; returns (metrics, timings)."""
    metrics = train_or_keep(cfg, model, n_texts, paths.stage_logs(stage), train)
    trained = time.perf_counter()
    metrics.update(evaluate())
    timings = finish(stage, model, tokenizer, metrics, out_dir, started=started, trained=trained)
    return metrics, timings
