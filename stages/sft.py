"""``sft``: the SFT policy, a causal LM trained on the prepared train reviews.

Reads ``seed`` and ``sft.*`` from params.yaml and ``data/prepared/{train,test}.jsonl``; writes
``models/sft/`` (``save_pretrained`` model + tokenizer), ``metrics/sft.json`` (held-out
perplexity, train loss, wall time) and training curves under ``logs/sft`` (DVCLive)::

    python -m stages sft                # or: dvc repro sft

``sft.model`` is ``tiny`` (a GPT-2 from the ``sft.tiny`` config with a byte-level BPE tokenizer
trained on the corpus, trained from scratch), a hub id (``gpt2``, ``lvwerra/gpt2-imdb``) or a
local folder (fine-tuned). With ``sft.epochs: 0`` a pretrained model is only copied into
``models/sft/``. Training runs through trl's ``SFTTrainer`` (EOS appended to every review so
the policy learns to stop), on CPU or unchanged on a GPU (bf16 where CUDA supports it).
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import torch
import typer

from stages.common import StageError, load_params, param, seed_everything, write_json
from stages.contracts import PREPARED, read_rows
from stages.modeling import (GPT2_KEYS, TINY, context_length, load_pretrained, open_live,
                             pick_device, save_pretrained, tiny_config, tiny_gpt2,
                             train_bpe_tokenizer, use_bf16)
from stages.sequences import token_logprobs

TRAIN, TEST = Path("data/prepared/train.jsonl"), Path("data/prepared/test.jsonl")
OUT_DIR, METRICS, LOG_DIR = Path("models/sft"), Path("metrics/sft.json"), Path("logs/sft")


def read_config(params: dict) -> dict:
    """Validated ``seed`` and ``sft.*`` values (one-line StageError naming a bad key)."""
    sft = params.get("sft")
    if not isinstance(sft, dict):
        raise StageError("params: section 'sft' is missing")
    pos = (lambda v: v >= 1, "must be >= 1")
    cfg = {
        "seed": param(params, "params.seed", int),
        "model": param(sft, "sft.model", str, lambda v: v.strip() != "", "must not be empty"),
        "epochs": param(sft, "sft.epochs", int, lambda v: v >= 0, "must be >= 0"),
        "max_length": param(sft, "sft.max_length", int, *pos),
        "max_train_texts": param(sft, "sft.max_train_texts", (int, type(None)),
                                 lambda v: v is None or v >= 1, "must be null or >= 1"),
        "batch_size": param(sft, "sft.batch_size", int, *pos),
        "learning_rate": param(sft, "sft.learning_rate", float, lambda v: v > 0, "must be > 0"),
        "warmup": param(sft, "sft.warmup", float, lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": param(sft, "sft.weight_decay", float, lambda v: v >= 0, "must be >= 0"),
        "logging_steps": param(sft, "sft.logging_steps", int, *pos),
        "eval_texts": param(sft, "sft.eval_texts", int, *pos),
    }
    if cfg["model"] == TINY:
        cfg["tiny"] = tiny_config(sft, "sft.tiny", GPT2_KEYS)
        if cfg["epochs"] == 0:
            raise StageError("params: sft.epochs is 0 but sft.model is 'tiny' (an untrained "
                             "model); train it (epochs >= 1) or name a pretrained model")
    return cfg


def check_context(model, max_length: int) -> None:
    """The model must attend over ``sft.max_length`` positions."""
    ctx = context_length(model)
    if ctx is not None and ctx < max_length:
        raise StageError(f"params: sft.max_length={max_length} exceeds the model's context of "
                         f"{ctx} positions (sft.tiny.n_positions for a tiny model)")


def build_model(cfg: dict, texts: list[str]):
    """``(model, tokenizer)``: a fresh tiny GPT-2 with its own BPE tokenizer, or a loaded one."""
    if cfg["model"] != TINY:
        return load_pretrained(cfg["model"], "causal", "sft.model")
    tiny = cfg["tiny"]
    tokenizer = train_bpe_tokenizer(texts, tiny["vocab_size"], model_max_length=tiny["n_positions"])
    seed_everything(cfg["seed"])
    return tiny_gpt2(tokenizer, tiny, "sft.tiny"), tokenizer


def train_causal_lm(model, tokenizer, texts: list[str], cfg: dict, log_dir: Path | None) -> dict:
    """Train in place with trl's ``SFTTrainer`` (EOS appended, truncation at ``max_length``);
    returns the mean train loss, the first and the last logged loss, and the step count."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    callbacks, live = [], None
    if log_dir is not None:
        from transformers.integrations import DVCLiveCallback

        live = open_live(log_dir)
        callbacks.append(DVCLiveCallback(live=live))
    with tempfile.TemporaryDirectory(prefix="sft-trainer-") as tmp:
        args = SFTConfig(
            output_dir=tmp, num_train_epochs=cfg["epochs"], learning_rate=cfg["learning_rate"],
            per_device_train_batch_size=cfg["batch_size"], lr_scheduler_type="cosine",
            warmup_steps=cfg["warmup"], weight_decay=cfg["weight_decay"],
            max_length=cfg["max_length"], dataset_text_field="text", packing=False,
            activation_checkpointing=False, bf16=use_bf16(), fp16=False,
            train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no",
            logging_steps=cfg["logging_steps"], logging_first_step=True, report_to="none",
            disable_tqdm=False, seed=cfg["seed"], data_seed=cfg["seed"],
            dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_dict({"text": texts}),
                             callbacks=callbacks)
        result = trainer.train()
    if live is not None:
        live.end()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {"train_loss": float(result.training_loss),
            "first_train_loss": float(losses[0]) if losses else float("nan"),
            "final_train_loss": float(losses[-1]) if losses else float("nan"),
            "steps": int(result.global_step)}


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (each + EOS, cut at ``max_length`` tokens), i.e.
    exp of the mean NLL over every predicted token, as in training."""
    from tqdm.auto import tqdm

    device = pick_device()
    model.to(device).eval()
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    ids = [(row + [eos])[:max_length] for row in encoded["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    nll, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="perplexity", leave=False):
        rows = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        logps = token_logprobs(logits, input_ids) * mask[:, 1:]
        nll -= float(logps.sum())
        count += int(mask[:, 1:].sum())
    if count == 0:
        raise StageError("sft: no held-out tokens to compute perplexity on")
    return math.exp(nll / count)


def run_sft(params: dict) -> dict:
    """Run the stage on a params mapping (paths relative to the cwd); returns its metrics."""
    cfg = read_config(params)
    seed_everything(cfg["seed"])
    started = time.perf_counter()
    train = [row["text"] for row in read_rows(TRAIN, PREPARED)]
    test = [row["text"] for row in read_rows(TEST, PREPARED)][: cfg["eval_texts"]]
    texts = train
    if cfg["max_train_texts"] is not None and cfg["max_train_texts"] < len(train):
        keep = random.Random(f"{cfg['seed']}-sft-texts").sample(range(len(train)),
                                                                cfg["max_train_texts"])
        texts = [train[i] for i in sorted(keep)]
    model, tokenizer = build_model(cfg, train)
    check_context(model, cfg["max_length"])
    metrics: dict = {"model": cfg["model"], "epochs": cfg["epochs"], "train_texts": 0,
                     "parameters": sum(p.numel() for p in model.parameters())}
    if cfg["epochs"] > 0:
        metrics.update(train_causal_lm(model, tokenizer, texts, cfg, LOG_DIR))
        metrics["train_texts"] = len(texts)
    else:
        open_live(LOG_DIR).end()  # an empty but current log: the stage output exists
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics["eval_texts"] = len(test)
    metrics["perplexity"] = perplexity(model, tokenizer, test, cfg["max_length"],
                                       cfg["batch_size"])
    save_pretrained(model, tokenizer, OUT_DIR)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_json(METRICS, metrics)
    return metrics


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Train (or copy) the SFT policy into models/sft."""
    m = run_sft(load_params(params))
    typer.echo(f"sft: {m['model']} -> {OUT_DIR}, held-out perplexity {m['perplexity']:.2f} "
               f"({m['wall_seconds']:.0f}s)")
