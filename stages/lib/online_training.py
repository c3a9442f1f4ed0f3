"""One on-policy round's trainer: the offline :class:`stages.lib.align.PreferenceTrainer` on
the round's prompt items (its own module, so that reading ``online.*`` — :mod:`stages.lib.online`,
which ``report`` and ``frontier`` import — does not pull in the trainer)."""

from __future__ import annotations

from pathlib import Path

from stages.lib.align import (
    PreferenceTrainer,
    PromptCollator,
    TrainConfig,
    curriculum_order,
    disable_dropout,
    training_arguments,
)
from stages.lib.variants import LossConfig


def round_trainer(
    model,
    tokenizer,
    items: list[dict],
    cfg: TrainConfig,
    loss: LossConfig,
    output_dir: Path,
    run: str,
    live_dir: Path,
) -> PreferenceTrainer:
    """The offline trainer (:class:`stages.lib.align.PreferenceTrainer`) on a round's prompt
    items (:func:`stages.lib.align.build_items`), dropout off, evaluating on the ``val`` items."""
    train = curriculum_order([i for i in items if i["split"] == "train"], cfg.curriculum, cfg.seed)
    val = [i for i in items if i["split"] == "val"]
    disable_dropout(model)
    return PreferenceTrainer(
        model=model,
        args=training_arguments(cfg, output_dir, run, bool(val)),
        train_dataset=train,
        eval_dataset=val or None,
        data_collator=PromptCollator(tokenizer, cfg.max_length),
        processing_class=tokenizer,
        loss_config=loss,
        variant=run,
        live_dir=str(live_dir),
    )
