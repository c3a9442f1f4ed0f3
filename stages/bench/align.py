"""Benchmark: our preference trainer against trl's ``DPOTrainer`` on the same pairs.

Both train the same model (a fresh load of the SFT policy) on the same pairs, in the same order
(sequential sampling on both sides, so step ``i`` of ours and of trl sees the same pairs), with
the same optimizer, learning rate, β and number of pairs per step, for one epoch over the bench
prompts; trl runs with ``precompute_ref_log_probs=True``. Both score exactly the same tokens,
so their per-step losses agree to float tolerance: trl tokenises the completion *text* itself
and appends EOS to every completion, so ours is given exactly those ids as its
``completion_ids`` (:func:`trl_completion_ids`: the text's tokens + EOS) instead of the sampled
ids the pipeline trains on (which differ where a completion was cut at ``max_new_tokens``, with
no EOS, or where the text does not re-tokenise to the sampled ids). Prompts whose last token
would merge with a completion's first are left out (:func:`clean_boundary`): trl moves the
boundary there::

    from stages.bench.align import align_throughput
    result = align_throughput("models/sft", scored_rows, pairing="all", prompts_per_step=8, steps=12)
    result["ours"]["pairs_per_s"] / result["trl"]["pairs_per_s"]

Timed: trl's reference precompute (in its ``__init__``) and ours
(:func:`stages.lib.sequences.reference_rows`, the ``reference`` stage's function, over the K completions of each prompt); ``trainer.train()``
for both. The ten-variant sweep estimate is ``ref + 10 x train`` for ours (one shared
reference pass) and ``10 x (precompute + train)`` for trl (one precompute per run).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from stages.lib.align import PreferenceTrainer, PromptCollator, build_items, disable_dropout
from stages.lib.pairs import all_pairs, first_round_pairs
from stages.lib.sequences import reference_rows
from stages.lib.variants import LossConfig

PAIRINGS = {"disjoint": (first_round_pairs, 2), "all": (all_pairs, 6)}


def clean_boundary(tokenizer, prompt: str, completions: list[str]) -> bool:
    """True when tokenising prompt + completion gives the prompt's tokens then the completion's
    for every completion: trl tokenises the joined text and moves the boundary where tokens
    merge across it, ours tokenises the parts separately (:mod:`stages.lib.sequences`)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cs = tokenizer(completions, add_special_tokens=False)["input_ids"]
    joined = tokenizer([prompt + c for c in completions], add_special_tokens=False)["input_ids"]
    return all(j == p + c for j, c in zip(joined, cs))


def trl_completion_ids(tokenizer, completions: list[str]) -> list[list[int]]:
    """The completion tokens trl's DPOTrainer scores: the text tokenised on its own + EOS."""
    ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [c + [tokenizer.eos_token_id] for c in ids]


def bench_rows(
    scored_rows: list[dict], pairing: str, n_prompts: int, seed: int, tokenizer=None
) -> list[dict]:
    """The first ``n_prompts`` scored rows with 4 completions whose pairing gives its full pair
    count (2 disjoint pairs or all 6; prompts with tied rewards are skipped) and, given a
    tokenizer, a clean prompt/completion token boundary (:func:`clean_boundary`), with ``pairs``."""
    make, want = PAIRINGS[pairing]
    rng, out = random.Random(seed), []
    for row in scored_rows:
        if len(row["completions"]) != 4:
            continue
        pairs = make(row["rewards"], rng)
        if len(pairs) != want:
            continue
        if tokenizer is not None and not clean_boundary(
            tokenizer, row["prompt"], row["completions"]
        ):
            continue
        out.append({**row, "pairs": [list(p) for p in pairs], "split": "train"})
        if len(out) == n_prompts:
            return out
    raise ValueError(
        f"only {len(out)} of the scored rows have {want} untied {pairing} pairs"
        f"{' and a clean token boundary' if tokenizer is not None else ''}; "
        f"{n_prompts} needed"
    )


class _StepLosses(TrainerCallback):
    """Collects the loss that each logging step reports (``train_loss`` ours, ``loss`` trl's)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("train_loss", "loss"):
            if logs and key in logs and "train_runtime" not in logs:
                self.losses.append(float(logs[key]))
                return


class SequentialOrder:
    """Trainer mixin: batches in dataset order (no shuffling), so two trainers given the same
    rows in the same order see the same batches at every step."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


def quiet_trainer(trainer) -> None:
    """Drop the console printer and progress bar callbacks (the benchmark prints its own)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _common_args(out_dir: str, batch: int, steps: int, lr: float, seed: int) -> dict:
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )


def _ours(
    sft_dir: str,
    rows: list[dict],
    batch_prompts: int,
    steps: int,
    lr: float,
    beta: float,
    max_length: int,
    seed: int,
) -> dict:
    class Sequential(SequentialOrder, PreferenceTrainer):
        pass

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    disable_dropout(model)
    rows = [
        {
            **r,
            "completion_ids": trl_completion_ids(tokenizer, r["completions"]),
            "finished": [True] * len(r["completions"]),
        }
        for r in rows
    ]
    start = time.perf_counter()
    refs = reference_rows(
        model, tokenizer, rows, batch_size=128, max_length=max_length, progress=False
    )
    ref_s = time.perf_counter() - start
    losses = _StepLosses()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(**_common_args(tmp, batch_prompts, steps, lr, seed))
        trainer = Sequential(
            model=model,
            args=args,
            train_dataset=build_items(rows, refs),
            data_collator=PromptCollator(tokenizer, max_length),
            processing_class=tokenizer,
            callbacks=[losses],
            loss_config=LossConfig("sigmoid", "reverse_kl", beta),
            variant="bench",
        )
        quiet_trainer(trainer)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    return {
        "reference_s": ref_s,
        "reference_sequences": sum(len(r["logps"]) for r in refs),
        "train_s": train_s,
        "losses": losses.losses,
    }


def _trl(
    sft_dir: str,
    rows: list[dict],
    batch_pairs: int,
    steps: int,
    lr: float,
    beta: float,
    max_length: int,
    seed: int,
) -> dict:
    from datasets import Dataset  # here: trl takes seconds to import, only this side uses it
    from trl import DPOConfig, DPOTrainer

    timing = {}

    class Sequential(SequentialOrder, DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            timing[name] = time.perf_counter() - start
            return out

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    pairs = Dataset.from_list(
        [
            {"prompt": r["prompt"], "chosen": r["completions"][w], "rejected": r["completions"][l]}
            for r in rows
            for w, l in r["pairs"]
        ]
    )
    losses = _StepLosses()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            **_common_args(tmp, batch_pairs, steps, lr, seed),
            beta=beta,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=True,
            precompute_ref_batch_size=64,
            max_length=max_length,
            disable_dropout=True,
            bf16=False,
        )
        trainer = Sequential(
            model=model,
            args=config,
            train_dataset=pairs,
            processing_class=tokenizer,
            callbacks=[losses],
        )
        quiet_trainer(trainer)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    return {
        "reference_s": timing.get("train", float("nan")),
        "reference_sequences": 2 * len(pairs),
        "train_s": train_s,
        "losses": losses.losses,
    }


def align_throughput(
    sft_dir: str | Path,
    scored_rows: list[dict],
    *,
    pairing: str,
    prompts_per_step: int,
    steps: int,
    lr: float = 5e-4,
    beta: float = 0.1,
    max_length: int = 128,
    seed: int = 0,
    variants: int = 10,
) -> dict:
    """Ours vs trl for one epoch of ``steps`` steps over ``prompts_per_step * steps`` prompts."""
    _, per_prompt = PAIRINGS[pairing]
    rows = bench_rows(
        scored_rows,
        pairing,
        prompts_per_step * steps,
        seed,
        tokenizer=AutoTokenizer.from_pretrained(str(sft_dir)),
    )
    n_pairs = per_prompt * len(rows)
    ours = _ours(str(sft_dir), rows, prompts_per_step, steps, lr, beta, max_length, seed)
    theirs = _trl(
        str(sft_dir), rows, prompts_per_step * per_prompt, steps, lr, beta, max_length, seed
    )
    for side in (ours, theirs):
        side["pairs_per_s"] = n_pairs / side["train_s"]
        side["step_s"] = side["train_s"] / steps
        side["final_loss"] = side["losses"][-1] if side["losses"] else float("nan")
    sweep_ours = ours["reference_s"] + variants * ours["train_s"]
    sweep_trl = variants * (theirs["reference_s"] + theirs["train_s"])
    diffs = [abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])]
    return {
        "pairing": pairing,
        "pairs_per_prompt": per_prompt,
        "prompts": len(rows),
        "pairs": n_pairs,
        "pairs_per_step": prompts_per_step * per_prompt,
        "steps": steps,
        "ours": ours,
        "trl": theirs,
        "speedup_pairs_per_s": ours["pairs_per_s"] / theirs["pairs_per_s"],
        "max_abs_loss_diff": max(diffs) if diffs else float("nan"),
        "sweep_variants": variants,
        "sweep_ours_s": sweep_ours,
        "sweep_trl_s": sweep_trl,
        "speedup_sweep": sweep_trl / sweep_ours,
    }
