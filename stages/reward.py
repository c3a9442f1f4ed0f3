"""``reward``: the sentiment reward model, a two-label sequence classifier (1 = positive).

Reads ``seed`` and ``reward.*`` from params.yaml and ``data/prepared/{train,test}.jsonl``;
writes ``models/reward/`` (``save_pretrained`` classifier + tokenizer), ``metrics/reward.json``
(test accuracy, train loss), training curves under ``logs/reward`` (DVCLive) and its wall times
under ``logs/timings/reward.json`` (git-ignored)::

    python -m stages reward             # or: dvc repro reward

``reward.model`` is ``tiny`` (a small mean-pooled ModernBERT-style encoder with its own
byte-level BPE tokenizer, trained from scratch; see :func:`stages.lib.modeling.tiny_classifier`),
a hub id (``lvwerra/distilbert-imdb``) or a local folder (fine-tuned, or copied as is with
``reward.epochs: 0``). Later stages turn texts into rewards with :mod:`stages.lib.scoring`.
"""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import typer
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from stages.lib import paths
from stages.lib.common import seed_everything, seeded_subset
from stages.lib.config import RewardConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREPARED, read_rows
from stages.lib.modeling import build_model, check_context, pick_device
from stages.lib.scoring import check_head, classifier_logits, max_text_length
from stages.lib.training import run_trainer, train_and_save


def accuracy(model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 64) -> float:
    """Share of rows whose arg-max label equals ``row["label"]``."""
    logits = classifier_logits(
        model,
        tokenizer,
        [r["text"] for r in rows],
        batch_size=batch_size,
        max_length=max_length,
        desc="accuracy",
    )
    predicted = logits.argmax(-1).tolist()
    return sum(int(p == r["label"]) for p, r in zip(predicted, rows)) / len(rows)


def train_classifier(
    model, tokenizer, rows: list[dict], cfg: RewardConfig, seed: int, log_dir: Path | None
) -> dict:
    """Fine-tune in place with transformers' ``Trainer`` (cross-entropy on the labels, texts cut
    at ``max_length``); returns the mean train loss, the first and the last logged loss, and the
    step count."""
    datasets.disable_progress_bars()
    limit = max_text_length(model, tokenizer, cfg.max_length)
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=limit)
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [r["label"] for r in rows],
        }
    )
    tokenizer.padding_side = "right"
    return run_trainer(
        Trainer,
        TrainingArguments,
        model,
        dataset,
        cfg,
        seed=seed,
        log_dir=log_dir,
        prefix="reward",
        data_collator=DataCollatorWithPadding(tokenizer),
    )


def run_reward(params: dict) -> tuple[dict, dict]:
    """Run the stage on a params mapping (paths relative to the cwd); returns its metrics (as
    written to ``metrics/reward.json``) and its wall times (``logs/timings/reward.json``)."""
    cfg, seed = read_section(params, "reward", RewardConfig), read_seed(params)
    seed_everything(seed)
    started = time.perf_counter()
    train = read_rows(paths.PREPARED_TRAIN, PREPARED)
    test = read_rows(paths.PREPARED_TEST, PREPARED)[: cfg.eval_texts]
    rows = seeded_subset(train, cfg.max_train_texts, f"{seed}-reward-texts")
    model, tokenizer = build_model(
        cfg.model,
        "classifier",
        "reward.model",
        texts=[r["text"] for r in train],
        tiny=cfg.tiny,
        seed=seed,
        strict_head=cfg.epochs == 0,
    )
    check_head(model)
    check_context(model, cfg.max_length, "reward.max_length", "reward.tiny.max_position_embeddings")

    def held_out() -> dict:
        model.to(pick_device())
        batch_size = max(cfg.batch_size, 64)
        return {
            "eval_texts": len(test),
            "accuracy": accuracy(model, tokenizer, test, cfg.max_length, batch_size=batch_size),
        }

    return train_and_save(
        "reward",
        cfg,
        model,
        tokenizer,
        len(rows),
        paths.REWARD_DIR,
        train=lambda log_dir: train_classifier(model, tokenizer, rows, cfg, seed, log_dir),
        evaluate=held_out,
        started=started,
    )


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Train (or copy) the reward model into models/reward."""
    m, timings = run_reward(load_params(params))
    typer.echo(
        f"reward: {m['model']} -> {paths.REWARD_DIR}, test accuracy {m['accuracy']:.4f} "
        f"on {m['eval_texts']} reviews ({timings['wall_seconds']:.0f}s)"
    )
