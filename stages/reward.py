"""``reward``: the sentiment reward model, a two-label sequence classifier (1 = positive).

Reads ``seed`` and ``reward.*`` from params.yaml and ``data/prepared/{train,test}.jsonl``;
writes ``models/reward/`` (``save_pretrained`` classifier + tokenizer), ``metrics/reward.json``
(test accuracy, wall time) and training curves under ``logs/reward`` (DVCLive)::

    python -m stages reward             # or: dvc repro reward

``reward.model`` is ``tiny`` (a small mean-pooled ModernBERT-style encoder with its own
byte-level BPE tokenizer, trained from scratch; see :func:`stages.modeling.tiny_classifier`),
a hub id (``lvwerra/distilbert-imdb``) or a local folder (fine-tuned, or copied as is with
``reward.epochs: 0``).

Every later stage turns texts into rewards with the same two functions::

    from stages.reward import load_reward_model, score_texts
    model, tokenizer = load_reward_model("models/reward")
    rewards = score_texts(model, tokenizer, texts, score="logit")   # params: reward.score
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
import typer

from stages.common import StageError, load_params, param, seed_everything, write_json
from stages.contracts import PREPARED, read_rows
from stages.modeling import (CLASSIFIER_KEYS, TINY, context_length, load_pretrained, open_live,
                             pick_device, save_pretrained, tiny_classifier, tiny_config,
                             train_bpe_tokenizer, use_bf16)

TRAIN, TEST = Path("data/prepared/train.jsonl"), Path("data/prepared/test.jsonl")
OUT_DIR, METRICS, LOG_DIR = Path("models/reward"), Path("metrics/reward.json"), Path("logs/reward")
SCORES = ("logit", "margin", "prob")


def read_config(params: dict) -> dict:
    """Validated ``seed`` and the ``reward.*`` keys this stage reads (not ``reward.score``,
    which only the scoring stages read)."""
    rw = params.get("reward")
    if not isinstance(rw, dict):
        raise StageError("params: section 'reward' is missing")
    pos = (lambda v: v >= 1, "must be >= 1")
    cfg = {
        "seed": param(params, "params.seed", int),
        "model": param(rw, "reward.model", str, lambda v: v.strip() != "", "must not be empty"),
        "epochs": param(rw, "reward.epochs", int, lambda v: v >= 0, "must be >= 0"),
        "max_length": param(rw, "reward.max_length", int, lambda v: v >= 2, "must be >= 2"),
        "max_train_texts": param(rw, "reward.max_train_texts", (int, type(None)),
                                 lambda v: v is None or v >= 1, "must be null or >= 1"),
        "batch_size": param(rw, "reward.batch_size", int, *pos),
        "learning_rate": param(rw, "reward.learning_rate", float, lambda v: v > 0, "must be > 0"),
        "warmup": param(rw, "reward.warmup", float, lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": param(rw, "reward.weight_decay", float, lambda v: v >= 0,
                              "must be >= 0"),
        "logging_steps": param(rw, "reward.logging_steps", int, *pos),
        "eval_texts": param(rw, "reward.eval_texts", int, *pos),
    }
    if cfg["model"] == TINY:
        cfg["tiny"] = tiny_config(rw, "reward.tiny", CLASSIFIER_KEYS)
        if cfg["epochs"] == 0:
            raise StageError("params: reward.epochs is 0 but reward.model is 'tiny' (an "
                             "untrained model); train it (epochs >= 1) or name a trained model")
    return cfg


def check_head(model, parameter: str = "reward.model") -> None:
    """The classifier must have two labels with 1 = positive."""
    n = model.config.num_labels
    if n != 2:
        raise StageError(f"{parameter}: the classifier head has {n} labels; need 2 "
                         f"(0 = negative, 1 = positive)")
    names = {i: str((model.config.id2label or {}).get(i, "")).lower() for i in (0, 1)}
    if names[1].startswith("neg") or names[0].startswith("pos"):
        raise StageError(f"{parameter}: label 1 must be the positive class, got id2label "
                         f"{model.config.id2label}")


def check_context(model, max_length: int) -> None:
    """The classifier must attend over ``reward.max_length`` positions."""
    ctx = context_length(model)
    if ctx is not None and ctx < max_length:
        raise StageError(f"params: reward.max_length={max_length} exceeds the model's context of "
                         f"{ctx} positions (reward.tiny.max_position_embeddings for a tiny model)")


def load_reward_model(path_or_id: str, parameter: str = "reward.model"):
    """``(model, tokenizer)`` of a two-label classifier folder or hub id, in eval mode on the
    default device (CUDA if available)."""
    model, tokenizer = load_pretrained(str(path_or_id), "classifier", parameter)
    check_head(model, parameter)
    return model.to(pick_device()).eval(), tokenizer


def _max_length(model, tokenizer, max_length: int | None) -> int:
    limits = [n for n in (max_length, context_length(model), tokenizer.model_max_length)
              if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else 512


@torch.no_grad()
def classifier_logits(model, tokenizer, texts: list[str], *, batch_size: int = 64,
                      max_length: int | None = None, desc: str | None = None) -> torch.Tensor:
    """Logits ``[len(texts), num_labels]`` (float32, CPU) of a sequence classifier.

    Texts are sorted by length into batches (little padding), right-padded with an attention
    mask and cut at ``max_length`` tokens (default: the model's context), so a text's logits do
    not depend on which other texts share its batch."""
    from tqdm.auto import tqdm

    if not texts:
        return torch.zeros((0, model.config.num_labels))
    limit = _max_length(model, tokenizer, max_length)
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    try:
        ids = tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
        filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        ids = [row or [filler] for row in ids]  # an empty text still gets one token to pool
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty((len(ids), model.config.num_labels), dtype=torch.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            out[idx] = logits.float().cpu()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def score_texts(model, tokenizer, texts: list[str], *, score: str = "logit", batch_size: int = 64,
                max_length: int | None = None) -> list[float]:
    """One reward per text. ``score``: ``logit`` = raw logit of the positive class (label 1, the
    original experiment's reward), ``margin`` = positive minus negative logit, ``prob`` = softmax
    probability of the positive class."""
    if score not in SCORES:
        raise StageError(f"params: reward.score must be one of {', '.join(SCORES)}, got {score!r}")
    logits = classifier_logits(model, tokenizer, texts, batch_size=batch_size,
                               max_length=max_length, desc="reward" if len(texts) > batch_size
                               else None)
    if score == "logit":
        values = logits[:, 1]
    elif score == "margin":
        values = logits[:, 1] - logits[:, 0]
    else:
        values = torch.softmax(logits, dim=-1)[:, 1]
    return [float(v) for v in values]


def accuracy(model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 64) -> float:
    """Share of rows whose arg-max label equals ``row["label"]``."""
    logits = classifier_logits(model, tokenizer, [r["text"] for r in rows], batch_size=batch_size,
                               max_length=max_length, desc="accuracy")
    predicted = logits.argmax(-1).tolist()
    return sum(int(p == r["label"]) for p, r in zip(predicted, rows)) / len(rows)


def build_model(cfg: dict, texts: list[str]):
    """``(model, tokenizer)``: a fresh tiny mean-pooled encoder with its own BPE tokenizer, or a
    loaded classifier (whose head must have two labels)."""
    if cfg["model"] != TINY:
        model, tokenizer = load_pretrained(cfg["model"], "classifier", "reward.model",
                                           strict_head=cfg["epochs"] == 0)
        check_head(model)
        return model, tokenizer
    tiny = cfg["tiny"]
    tokenizer = train_bpe_tokenizer(texts, tiny["vocab_size"],
                                    model_max_length=tiny["max_position_embeddings"])
    seed_everything(cfg["seed"])
    return tiny_classifier(tokenizer, tiny, "reward.tiny"), tokenizer


def train_classifier(model, tokenizer, rows: list[dict], cfg: dict, log_dir: Path | None) -> dict:
    """Fine-tune in place with transformers' ``Trainer`` (cross-entropy on the labels, texts cut
    at ``max_length``); returns the mean train loss, the first and the last logged loss, and the
    step count."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    datasets.disable_progress_bars()
    limit = _max_length(model, tokenizer, cfg["max_length"])
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=limit)
    dataset = datasets.Dataset.from_dict({"input_ids": enc["input_ids"],
                                          "attention_mask": enc["attention_mask"],
                                          "labels": [r["label"] for r in rows]})
    callbacks, live = [], None
    if log_dir is not None:
        from transformers.integrations import DVCLiveCallback

        live = open_live(log_dir)
        callbacks.append(DVCLiveCallback(live=live))
    tokenizer.padding_side = "right"
    with tempfile.TemporaryDirectory(prefix="reward-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=cfg["epochs"], learning_rate=cfg["learning_rate"],
            per_device_train_batch_size=cfg["batch_size"], lr_scheduler_type="cosine",
            warmup_steps=cfg["warmup"], weight_decay=cfg["weight_decay"], bf16=use_bf16(),
            train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no",
            logging_steps=cfg["logging_steps"], logging_first_step=True, report_to="none",
            disable_tqdm=False, seed=cfg["seed"], data_seed=cfg["seed"],
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks,
                          data_collator=DataCollatorWithPadding(tokenizer))
        result = trainer.train()
    if live is not None:
        live.end()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {"train_loss": float(result.training_loss),
            "first_train_loss": float(losses[0]) if losses else float("nan"),
            "final_train_loss": float(losses[-1]) if losses else float("nan"),
            "steps": int(result.global_step)}


def run_reward(params: dict) -> dict:
    """Run the stage on a params mapping (paths relative to the cwd); returns its metrics."""
    cfg = read_config(params)
    seed_everything(cfg["seed"])
    started = time.perf_counter()
    train = read_rows(TRAIN, PREPARED)
    test = read_rows(TEST, PREPARED)[: cfg["eval_texts"]]
    rows = train
    if cfg["max_train_texts"] is not None and cfg["max_train_texts"] < len(train):
        keep = random.Random(f"{cfg['seed']}-reward-texts").sample(range(len(train)),
                                                                   cfg["max_train_texts"])
        rows = [train[i] for i in sorted(keep)]
    model, tokenizer = build_model(cfg, [r["text"] for r in train])
    check_context(model, cfg["max_length"])
    metrics: dict = {"model": cfg["model"], "epochs": cfg["epochs"], "train_texts": 0,
                     "parameters": sum(p.numel() for p in model.parameters())}
    if cfg["epochs"] > 0:
        metrics.update(train_classifier(model, tokenizer, rows, cfg, LOG_DIR))
        metrics["train_texts"] = len(rows)
    else:
        open_live(LOG_DIR).end()  # an empty but current log: the stage output exists
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    model.to(pick_device())
    metrics["eval_texts"] = len(test)
    metrics["accuracy"] = accuracy(model, tokenizer, test, cfg["max_length"],
                                   batch_size=max(cfg["batch_size"], 64))
    save_pretrained(model, tokenizer, OUT_DIR)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_json(METRICS, metrics)
    return metrics


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Train (or copy) the reward model into models/reward."""
    m = run_reward(load_params(params))
    typer.echo(f"reward: {m['model']} -> {OUT_DIR}, test accuracy {m['accuracy']:.4f} "
               f"on {m['eval_texts']} reviews ({m['wall_seconds']:.0f}s)")
