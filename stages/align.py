"""Align the SFT policy with one DPO-family variant and one run seed, offline, from scored
preference pairs.

    python -m stages align dpo --seed 1            # one variant of align.variants, one seed
    python -m stages align alpha-0_5               # --seed defaults to the first of `seeds`
    dvc repro align@dpo-1                          # through the pipeline: a matrix over
                                                   # align.variants x seeds, align@<variant>-<seed>
    dvc exp run -S align.variants.dpo.beta=0.2     # re-runs align@dpo-<s> for every seed only

The variant's settings are ``align.common`` overridden by ``align.variants.<name>``: the training
settings (:class:`stages.lib.align.TrainConfig`) and the pair loss
(:class:`stages.lib.variants.LossConfig`), read by :func:`stages.lib.variants.read_variant`. The
training seed (data order, everything random in training) is the run's seed, ``--seed`` (one of
``seeds`` under DVC), never a key of ``align.common`` or ``align.variants.<name>``: such a key is
refused. Everything is validated
before training: the settings (an error names the key where it was set, or where it belongs when
missing), the variant name (a DVC matrix key that also works inside dotted parameter paths:
letters, digits, ``_`` and ``-``, no dots), the preferences file and the reference log-probs (row
count, prompt ids, K, token counts under ``max_length``). Errors start with the run's stage name,
``align@<variant>-<seed>: ``.

The key ``pairs`` (null: the pairs of ``data/preferences.jsonl``) re-pairs every prompt's ranked
completions with a strategy of :data:`stages.lib.pairs.STRATEGIES`, seeded as the ``pairs`` stage
seeds it (global ``seed``), so pairwise losses can learn from all pairs of the ranking as listwise
ones do; refused for a listwise loss and for preferences built with ``pairs.strategy: rso``.

Reads ``models/sft/``, ``data/preferences.jsonl``, ``data/reference.jsonl``; writes
``models/aligned/<name>/seed-<s>/`` (model + tokenizer, atomically),
``metrics/align/<name>/seed-<s>.json`` and the DVCLive logs ``logs/align/<name>/seed-<s>/``
(curves under ``plots/metrics``, a DVC plots output of the stage); the run's wall times are
printed and written to ``logs/timings/align-<name>-<s>.json`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import typer

from stages.lib import paths
from stages.lib.align import (
    TRAIN_KEYS,
    PreferenceTrainer,
    PromptCollator,
    SaveCheckpoints,
    TrainConfig,
    build_items,
    check_checkpoints,
    curriculum_order,
    disable_dropout,
    optimizer_steps,
    training_arguments,
)
from stages.lib.common import atomic_path, seed_everything, write_json, write_timings
from stages.lib.config import load_params, read_mapping, read_seed, run_seed
from stages.lib.contracts import PREFERENCES, check_eos, read_reference, read_rows
from stages.lib.modeling import load_causal_lm
from stages.lib.variants import LossConfig, Variant, read_variant


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefix every user error (ValueError, FileNotFoundError) raised inside with
    ``align@<name>: `` (``name``: the variant, or the run ``<variant>-<seed>``)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        msg = str(err)
        raise type(err)(
            msg if msg.startswith(f"align@{name}:") else f"align@{name}: {msg}"
        ) from None


def variant_config(
    params: dict, name: str, seed: int | None = None
) -> tuple[TrainConfig, LossConfig]:
    """``align.common`` merged with ``align.variants.<name>`` (variant wins), read as the
    variant's training settings and pair loss, with the run's ``seed`` (default: the first of
    ``seeds``) as the training seed; errors name ``align.common.<key>`` or
    ``align.variants.<name>.<key>``, wherever the key was set (or belongs, when missing)."""
    return read_config(read_variant(params, name), run_seed(params, seed))


def read_config(variant: Variant, seed: int) -> tuple[TrainConfig, LossConfig]:
    """The training settings (training seed ``seed``) and pair loss of ``variant``."""
    variant.check_keys(TRAIN_KEYS)
    settings = {k: v for k, v in variant.settings.items() if k in TRAIN_KEYS}
    settings["seed"] = seed
    where = partial(variant.where, common_keys=TRAIN_KEYS)
    train = read_mapping(settings, "align.common", TrainConfig, where=where)
    return train, variant.loss()


def check_pairs(params: dict, cfg: TrainConfig, loss: LossConfig, key: str) -> int | None:
    """The global ``seed`` when ``cfg.pairs`` re-pairs the prompts (None when it does not).
    Refused (``key``: where ``pairs`` was set): a listwise loss, which learns from the full
    ranking, and preferences built with ``pairs.strategy: rso``, whose pairs are drawn among
    the completions rso selected (the rows do not record which: re-pairing them would pair the
    rejected ones too)."""
    if cfg.pairs is None:
        return None
    if loss.listwise:
        raise ValueError(
            f"params: {key}: not used by listwise loss {loss.loss!r}: it learns from the full "
            f"ranking of each prompt's completions, not from pairs: remove it, got {cfg.pairs!r}"
        )
    section = params.get("pairs")
    if not isinstance(section, dict) or "strategy" not in section:
        raise ValueError(
            f"params: pairs.strategy: is missing ({key} re-pairs data/preferences.jsonl and "
            "needs to know how it was paired)"
        )
    if section["strategy"] == "rso":
        raise ValueError(
            f"params: {key}: cannot re-pair preferences built with pairs.strategy 'rso': its "
            "pairs are drawn among the completions rso selected, which the rows do not record: "
            f"remove it or build the preferences with another strategy, got {cfg.pairs!r}"
        )
    return read_seed(params)


def check_inputs(prefs: list[dict], pref_path: Path) -> None:
    """Splits are train/val and the train split has at least one pair (the reference rows are
    matched to the preferences by :func:`stages.lib.contracts.read_reference`)."""
    for i, p in enumerate(prefs, start=1):
        if p["split"] not in ("train", "val"):
            raise ValueError(
                f"{pref_path}: row {i}: split must be 'train' or 'val', got {p['split']!r}"
            )
    if not any(p["pairs"] for p in prefs if p["split"] == "train"):
        raise ValueError(f"{pref_path}: no preference pairs in split 'train' (see pairs.*)")


def check_listwise(prefs: list[dict], pref_path: Path, loss: LossConfig, key: str) -> None:
    """A listwise loss ranks all completions of a prompt: every prompt needs K >= 2 (``key``:
    where the loss was set, for the message)."""
    if not loss.listwise:
        return
    for i, p in enumerate(prefs, start=1):
        if len(p["completions"]) < 2:
            raise ValueError(
                f"params: {key}: listwise loss {loss.loss!r} needs >= 2 completions per prompt, "
                f"{pref_path} row {i} has {len(p['completions'])} (see sample.n_per_prompt)"
            )


def check_token_counts(
    items: list[dict], refs_by_id: dict, collator, key: str = "align.common.max_length"
) -> None:
    """The policy must score exactly the reference's tokens: same counts under max_length
    (``key``: where max_length was set, for the message)."""
    for start in range(0, len(items), 256):
        chunk = items[start : start + 256]
        counts = collator(chunk)["completion_mask"][:, 1:].sum(-1).tolist()
        for item in chunk:
            k = len(item["completions"])
            ours, counts = counts[:k], counts[k:]
            theirs = refs_by_id[item["prompt_id"]]["n_tokens"]
            if ours != theirs:
                raise ValueError(
                    f"params: {key}={collator.max_length} gives token counts {ours} "
                    f"for prompt {item['prompt_id']!r}, the reference has {theirs} (use the reference "
                    "stage's max_length and tokenizer)"
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


def align(name: str, params: dict, seed: int | None = None) -> dict:
    """Validate, train variant ``name`` with run seed ``seed`` (default: the first of
    ``seeds``) from the SFT policy, write model, metrics and logs; returns the metrics. Paths
    are relative to the working directory (the repository root)."""
    start = time.time()
    with _naming(name):
        seed = run_seed(params, seed)
    run = f"{name}-{seed}"
    with _naming(run):
        variant = read_variant(params, name)
        cfg, loss_config = read_config(variant, seed)
        pairs_key = variant.where("pairs", TRAIN_KEYS)
        global_seed = check_pairs(params, cfg, loss_config, pairs_key)
        prefs = read_rows(paths.PREFERENCES, PREFERENCES)
        check_listwise(prefs, paths.PREFERENCES, loss_config, variant.where("loss"))
        check_inputs(prefs, paths.PREFERENCES)
        refs = read_reference(paths.REFERENCE, prefs)
        seed_everything(cfg.seed)  # before the model load, as always: same numbers
        model, tokenizer = load_causal_lm(paths.SFT_DIR, torch.device("cpu"))  # float32
        check_eos(prefs, paths.PREFERENCES, tokenizer)
        collator = PromptCollator(tokenizer, cfg.max_length)
        items = build_items(prefs, refs, cfg.pairs, global_seed)
        if cfg.pairs is not None and not any(i["split"] == "train" for i in items):
            raise ValueError(
                f"params: {pairs_key}: re-pairing with {cfg.pairs!r} leaves no pair in split "
                f"'train' of {paths.PREFERENCES} (every pair it draws is tied)"
            )
        key = variant.where("max_length", TRAIN_KEYS)
        check_token_counts(items, {r["prompt_id"]: r for r in refs}, collator, key)
    train = curriculum_order([i for i in items if i["split"] == "train"], cfg.curriculum, cfg.seed)
    val = [i for i in items if i["split"] == "val"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with _naming(run):
        check_checkpoints(
            cfg, optimizer_steps(len(train), cfg, world), variant.where("checkpoints", TRAIN_KEYS)
        )
    if not val:
        typer.echo(
            f"align@{run}: warning: no validation pairs (split 'val'); skipping evaluation",
            err=True,
        )

    disable_dropout(model)
    final = paths.aligned_model(name, seed)
    with staged_dir(final, is_main=int(os.environ.get("RANK", "0")) == 0) as staging:
        trainer = PreferenceTrainer(
            model=model,
            args=training_arguments(cfg, staging, run, bool(val)),
            train_dataset=train,
            eval_dataset=val or None,
            data_collator=collator,
            processing_class=tokenizer,
            loss_config=loss_config,
            variant=run,
            live_dir=str(paths.align_logs(name, seed)),
        )
        if cfg.checkpoints:
            trainer.add_callback(
                SaveCheckpoints(cfg.checkpoints, staging / paths.CHECKPOINTS, tokenizer)
            )
        result = trainer.train()
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        if val and (not evals or evals[-1]["step"] != trainer.state.global_step):
            trainer.evaluate()
            evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        trainer.raise_if_nonfinite()
        trainer.save_model(str(staging))
        trainer.accelerator.wait_for_everyone()
    metrics = summarize(
        cfg, loss_config, name, trainer.state.log_history, evals, train, val, result
    )
    if trainer.is_world_process_zero():
        write_json(paths.align_metrics(name, seed), metrics)
        timings = {
            "train_runtime_s": result.metrics.get("train_runtime", float("nan")),
            "wall_time_s": time.time() - start,
        }
        write_timings(f"align-{run}", timings)
        typer.echo(
            f"align@{run}: train {timings['train_runtime_s']:.2f} s, "
            f"wall {timings['wall_time_s']:.2f} s"
        )
    return metrics


def summarize(cfg: TrainConfig, loss: LossConfig, name, history, evals, train, val, result) -> dict:
    """Flat metrics of a finished run (what ``dvc metrics show`` compares; no timings). The
    loss's ``margin`` and ``sft_reduction`` are recorded only where they act (slic_hf; an SFT
    term), and ``pairs`` only where it re-pairs the prompts, so the metrics of the other
    variants keep their keys."""
    windows = [h for h in history if "train_loss" in h]
    last, final = (windows[-1] if windows else {}), (evals[-1] if evals else {})
    best = max(evals, key=lambda h: h["eval_accuracy"]) if evals else {}
    extra = {"margin": loss.margin} if loss.margin is not None else {}
    extra.update({"sft_reduction": loss.sft_reduction} if loss.sft_weight else {})
    repaired = {"pairs": cfg.pairs} if cfg.pairs is not None else {}
    return {
        "variant": name,
        "loss": loss.loss,
        "divergence": loss.divergence,
        "beta": loss.beta,
        "alpha": loss.alpha,
        "sft_weight": loss.sft_weight,
        "label_smoothing": loss.label_smoothing,
        **extra,
        "curriculum": cfg.curriculum,
        **repaired,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "steps": result.global_step,
        "train_prompts": len(train),
        "train_pairs": sum(len(i["pairs"]) for i in train),
        "val_prompts": len(val),
        "val_pairs": sum(len(i["pairs"]) for i in val),
        "train_loss": last.get("train_loss"),
        "train_loss_mean": result.training_loss,
        "train_accuracy": last.get("train_accuracy"),
        "train_margin": last.get("train_margin"),
        "val_loss": final.get("eval_loss"),
        "val_accuracy": final.get("eval_accuracy"),
        "val_margin": final.get("eval_margin"),
        "val_chosen_reward": final.get("eval_chosen_reward"),
        "val_rejected_reward": final.get("eval_rejected_reward"),
        "val_accuracy_best": best.get("eval_accuracy"),
        "val_accuracy_best_step": best.get("step"),
    }


def main(
    variant: str = typer.Argument(
        ...,
        help="Variant name: a key of align.variants in the params "
        "file (e.g. dpo, hinge, ipo, fkl, jsd, alpha-0_5).",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        min=0,
        help="Run seed: the training seed (data order, everything random in training) and the "
        "folder seed-<s> of the outputs. Default: the first of `seeds`.",
    ),
    params: Path = typer.Option(
        Path("params.yaml"),
        "--params",
        help="Parameters file to read (align.common merged with align.variants.<variant>).",
    ),
) -> None:
    """Train one preference-alignment variant from the SFT policy, with one run seed."""
    values = load_params(params)
    seed = run_seed(values, seed)
    metrics = align(variant, values, seed)
    typer.echo(
        f"align@{variant}-{seed}: {metrics['steps']} steps, val accuracy {metrics['val_accuracy']}, "
        f"val margin {metrics['val_margin']}"
    )
