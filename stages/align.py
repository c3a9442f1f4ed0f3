"""Align the SFT policy with one DPO-family variant, offline, from scored preference pairs.

    python -m stages align dpo                     # one variant of params.yaml's align.variants
    python -m stages align alpha-0_5 --params params.yaml
    dvc repro align@dpo                            # through the pipeline (foreach over variants)
    dvc exp run -S align.variants.dpo.beta=0.2     # re-runs align@dpo only

The variant's settings are ``align.common`` overridden by ``align.variants.<name>``. Everything
is validated before training: the settings, the variant name (a DVC foreach key that also works
inside dotted parameter paths: letters, digits, ``_`` and ``-``, no dots), the preferences file
and the reference log-probs (row count, prompt ids, K, token counts under ``max_length``).

Reads ``models/sft/``, ``data/preferences.jsonl``, ``data/reference.jsonl``; writes
``models/aligned/<name>/`` (model + tokenizer, atomically), ``metrics/align/<name>.json`` and
the DVCLive logs ``logs/align/<name>/`` (curves under ``plots/metrics``).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import typer

from stages.common import StageError, atomic_path, load_params, param, write_json
from stages.contracts import PREFERENCES, read_rows
from stages.reference import read_reference

SFT_DIR = Path("models/sft")
PREFERENCES_FILE = Path("data/preferences.jsonl")
REFERENCE_FILE = Path("data/reference.jsonl")
MODELS_DIR, METRICS_DIR, LOGS_DIR = Path("models/aligned"), Path("metrics/align"), Path("logs/align")

#: DVC stage-name characters (``dvc.stage.utils.is_valid_name``) minus the dot, which would split
#: the key in the dotted parameter path ``align.variants.<name>`` that dvc.yaml lists.
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
VARIANT_KEYS = ("loss", "divergence", "beta", "alpha")


def _common_spec() -> dict:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    optims = sorted(o.value for o in OptimizerNames)
    scheds = sorted(s.value for s in SchedulerType)
    pos, nonneg = (lambda v: v > 0), (lambda v: v >= 0)
    return {  # key: (type, check, what it must be)
        "optimizer": (str, lambda v: v in optims, f"must be one of {', '.join(optims)}"),
        "learning_rate": (float, lambda v: 0 < v < math.inf, "must be > 0"),
        "lr_scheduler": (str, lambda v: v in scheds, f"must be one of {', '.join(scheds)}"),
        "warmup_ratio": (float, lambda v: 0 <= v < 1, "must lie in [0, 1)"),
        "weight_decay": (float, nonneg, "must be >= 0"),
        "epochs": (float, lambda v: 0 < v < math.inf, "must be > 0"),
        "batch_prompts": (int, pos, "must be >= 1"),
        "eval_batch_prompts": (int, pos, "must be >= 1"),
        "grad_accum_steps": (int, pos, "must be >= 1"),
        "max_grad_norm": (float, nonneg, "must be >= 0 (0 = no clipping)"),
        "max_length": (int, lambda v: v >= 2, "must be >= 2"),
        "logging_steps": (int, pos, "must be >= 1"),
        "eval_steps": (int, pos, "must be >= 1"),
        "seed": (int, nonneg, "must be >= 0"),
    }


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefix every StageError raised inside with ``align@<name>: ``."""
    try:
        yield
    except StageError as err:
        msg = str(err)
        raise StageError(msg if msg.startswith(f"align@{name}:") else f"align@{name}: {msg}") from None


def variant_config(params: dict, name: str) -> dict:
    """``align.common`` merged with ``align.variants.<name>`` (variant wins), fully validated."""
    from stages.losses import validate_config

    if not VARIANT_NAME.match(name):
        hint = f" (try {name.replace('.', '_')!r})" if "." in name else ""
        raise StageError(f"variant name {name!r} must match {VARIANT_NAME.pattern}: it is a DVC "
                         f"foreach key inside the parameter path align.variants.<name>{hint}")
    align = params.get("align")
    if not isinstance(align, dict) or not isinstance(align.get("common"), dict) \
            or not isinstance(align.get("variants"), dict):
        raise StageError("params: align.common and align.variants must be mappings")
    variants = align["variants"]
    if name not in variants:
        known = ", ".join(map(str, variants))
        raise StageError(f"params: align.variants.{name} is missing (variants: {known})")
    variant = variants[name] or {}
    if not isinstance(variant, dict):
        raise StageError(f"params: align.variants.{name} must be a mapping")
    spec, common = _common_spec(), align["common"]

    def source(key: str) -> str:  # where a key is set, or where it belongs when missing
        if key in variant or (key not in common and key not in spec):
            return f"align.variants.{name}"
        return "align.common"

    for key in {**common, **variant}:
        if key not in spec and key not in VARIANT_KEYS:
            raise StageError(f"params: {source(key)}.{key} is not a known key "
                             f"(known: {', '.join([*spec, *VARIANT_KEYS])})")
    cfg = {}
    for key, (kind, check, what) in spec.items():
        cfg[key] = param(align, f"{source(key)}.{key}", kind, check, what)
    for key in ("loss", "divergence"):
        cfg[key] = param(align, f"{source(key)}.{key}", str)
    cfg["beta"] = param(align, f"{source('beta')}.beta", float)
    has_alpha = variant.get("alpha", common.get("alpha")) is not None
    cfg["alpha"] = param(align, f"{source('alpha')}.alpha", float) if has_alpha else None
    if cfg["alpha"] is not None and cfg["divergence"] != "alpha":
        raise StageError(f"params: {source('alpha')}.alpha is only used by divergence 'alpha', "
                         f"not {cfg['divergence']!r}: remove it")
    try:
        validate_config(cfg["loss"], cfg["divergence"], cfg["beta"], cfg["alpha"])
    except ValueError as err:
        key, _, rest = str(err).partition(":")
        raise StageError(f"params: {source(key)}.{key}:{rest}") from None
    return cfg


def check_inputs(prefs: list[dict], pref_path: Path) -> None:
    """Splits are train/val and the train split has at least one pair (the reference rows are
    matched to the preferences by :func:`stages.reference.read_reference`)."""
    for i, p in enumerate(prefs, start=1):
        if p["split"] not in ("train", "val"):
            raise StageError(f"{pref_path}: row {i}: split must be 'train' or 'val', got {p['split']!r}")
    if not any(p["pairs"] for p in prefs if p["split"] == "train"):
        raise StageError(f"{pref_path}: no preference pairs in split 'train' (see pairs.*)")


def check_token_counts(items: list[dict], refs_by_id: dict, collator) -> None:
    """The policy must score exactly the reference's tokens: same counts under max_length."""
    for start in range(0, len(items), 256):
        chunk = items[start: start + 256]
        counts = collator(chunk)["completion_mask"][:, 1:].sum(-1).tolist()
        for item in chunk:
            k = len(item["completions"])
            ours, counts = counts[:k], counts[k:]
            theirs = refs_by_id[item["prompt_id"]]["n_tokens"]
            if ours != theirs:
                raise StageError(
                    f"params: align.common.max_length={collator.max_length} gives token counts {ours} "
                    f"for prompt {item['prompt_id']!r}, the reference has {theirs} (use the reference "
                    "stage's max_length and tokenizer)")


def training_arguments(cfg: dict, output_dir: Path, name: str, has_eval: bool):
    """TrainingArguments of a variant: Trainer's own bf16 autocast on a capable GPU, no checkpoints."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), run_name=name, report_to="none", save_strategy="no",
        optim=cfg["optimizer"], learning_rate=cfg["learning_rate"], lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=cfg["warmup_ratio"], weight_decay=cfg["weight_decay"],
        num_train_epochs=cfg["epochs"], per_device_train_batch_size=cfg["batch_prompts"],
        per_device_eval_batch_size=cfg["eval_batch_prompts"],
        gradient_accumulation_steps=cfg["grad_accum_steps"], max_grad_norm=cfg["max_grad_norm"],
        logging_strategy="steps", logging_steps=cfg["logging_steps"], logging_first_step=True,
        logging_nan_inf_filter=False, eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg["eval_steps"] if has_eval else None, seed=cfg["seed"], data_seed=cfg["seed"],
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False, label_names=[], dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


@contextlib.contextmanager
def staged_dir(final: Path, is_main: bool) -> Iterator[Path]:
    """A staging folder shared by every process; on success the main process moves it to
    ``final`` atomically, on error it is removed (no partial model is ever left behind)."""
    staging = final.with_name(f".{final.name}.staging")
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if is_main:
            with atomic_path(final) as tmp:
                os.replace(staging, tmp)
    finally:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)


def align(name: str, params: dict) -> dict:
    """Validate, train variant ``name`` from the SFT policy, write model, metrics and logs;
    returns the metrics. Paths are relative to the working directory (the repository root)."""
    start = time.time()
    with _naming(name):
        cfg = variant_config(params, name)
        prefs = read_rows(PREFERENCES_FILE, PREFERENCES)
        check_inputs(prefs, PREFERENCES_FILE)
        refs = read_reference(REFERENCE_FILE, prefs)
        if not (SFT_DIR / "config.json").is_file():
            raise StageError(f"{SFT_DIR}: no model found (run the sft stage)")

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from stages.common import seed_everything
        from stages.trainer import (LossConfig, PreferenceTrainer, PromptCollator, build_items,
                                    disable_dropout)

        tokenizer = AutoTokenizer.from_pretrained(SFT_DIR)
        collator = PromptCollator(tokenizer, cfg["max_length"])
        items = build_items(prefs, refs)
        check_token_counts(items, {r["prompt_id"]: r for r in refs}, collator)
    train = [i for i in items if i["split"] == "train"]
    val = [i for i in items if i["split"] == "val"]
    if not val:
        typer.echo(f"align@{name}: warning: no validation pairs (split 'val'); skipping evaluation", err=True)

    seed_everything(cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(SFT_DIR, dtype=torch.float32)
    disable_dropout(model)
    loss_config = LossConfig(cfg["loss"], cfg["divergence"], cfg["beta"], cfg["alpha"])
    final = MODELS_DIR / name
    with staged_dir(final, is_main=int(os.environ.get("RANK", "0")) == 0) as staging:
        trainer = PreferenceTrainer(
            model=model, args=training_arguments(cfg, staging, name, bool(val)),
            train_dataset=train, eval_dataset=val or None, data_collator=collator,
            processing_class=tokenizer, loss_config=loss_config, variant=name,
            live_dir=str(LOGS_DIR / name))
        result = trainer.train()
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        if val and (not evals or evals[-1]["step"] != trainer.state.global_step):
            trainer.evaluate()
            evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        trainer.raise_if_nonfinite()
        trainer.save_model(str(staging))
        trainer.accelerator.wait_for_everyone()
    metrics = summarize(cfg, name, trainer.state.log_history, evals, train, val, result, start)
    if trainer.is_world_process_zero():
        write_json(METRICS_DIR / f"{name}.json", metrics)
    return metrics


def summarize(cfg, name, history, evals, train, val, result, start) -> dict:
    """Flat metrics of a finished run (what ``dvc metrics show`` compares)."""
    windows = [h for h in history if "train_loss" in h]
    last, final = (windows[-1] if windows else {}), (evals[-1] if evals else {})
    best = max(evals, key=lambda h: h["eval_accuracy"]) if evals else {}
    return {
        "variant": name, "loss": cfg["loss"], "divergence": cfg["divergence"], "beta": cfg["beta"],
        "alpha": cfg["alpha"], "learning_rate": cfg["learning_rate"], "epochs": cfg["epochs"],
        "steps": result.global_step, "train_prompts": len(train),
        "train_pairs": sum(len(i["pairs"]) for i in train), "val_prompts": len(val),
        "val_pairs": sum(len(i["pairs"]) for i in val),
        "train_loss": last.get("train_loss"), "train_loss_mean": result.training_loss,
        "train_accuracy": last.get("train_accuracy"), "train_margin": last.get("train_margin"),
        "val_loss": final.get("eval_loss"), "val_accuracy": final.get("eval_accuracy"),
        "val_margin": final.get("eval_margin"), "val_chosen_reward": final.get("eval_chosen_reward"),
        "val_rejected_reward": final.get("eval_rejected_reward"),
        "val_accuracy_best": best.get("eval_accuracy"), "val_accuracy_best_step": best.get("step"),
        "train_runtime_s": round(result.metrics.get("train_runtime", float("nan")), 2),
        "wall_time_s": round(time.time() - start, 2),
    }


def main(
    variant: str = typer.Argument(..., help="Variant name: a key of align.variants in the params "
                                  "file (e.g. dpo, hinge, ipo, fkl, jsd, alpha-0_5)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file to read "
                                "(align.common merged with align.variants.<variant>)."),
) -> None:
    """Train one preference-alignment variant from the SFT policy."""
    metrics = align(variant, load_params(params))
    typer.echo(f"align@{variant}: {metrics['steps']} steps, val accuracy {metrics['val_accuracy']}, "
               f"val margin {metrics['val_margin']}, {metrics['wall_time_s']} s")
