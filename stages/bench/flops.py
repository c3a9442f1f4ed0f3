"""Benchmark: achieved FLOP/s of the alignment step over the float32 matmul peak of this machine.

One step of :class:`stages.lib.align.PreferenceTrainer` is timed on real batches (the first
step is a warm-up); its FLOPs are counted analytically over the padded batch shapes (the 6NT
rule of a GPT-2 plus attention), and divided by the FLOP/s of a large float32 matmul measured
in the same run::

    from stages.bench.flops import alignment_flops
    fast = alignment_flops(items, tokenizer, model_dir="models/sft", optimizer="adamw_torch_fused")
    plain = alignment_flops(items, tokenizer, model_dir="models/sft", fast=False)
    fast["ratio"], fast["step_s"] / plain["step_s"]
    rows = step_scaling(items, tokenizer, model_dir="models/sft", optimizer="adamw_torch_fused",
                        batch_prompts=16, threads=2)

``fast=True`` is what ``align`` runs: GPT-2's tanh GELU as one fused kernel
(:func:`stages.lib.modeling.fuse_activations`) and the LM head on the completion positions only
(``packed``, :func:`stages.lib.sequences.completion_logprobs`). ``fast=False`` is the plain path
of the commit before (seven-kernel GELU, head over every position), kept so that the two are
timed side by side. ``ratio`` counts the FLOPs of the padded shapes as if the head ran on every
position (the same numerator for both paths); ``useful_ratio`` counts the head on the completion
positions only, the work the fast path does.

:func:`step_scaling` times the same fast step at twice the batch (the issue's "fewer and larger
steps") and on one thread at the batch and at half of it, alternating, best of two. The last is
the step of one rank of a two-process data-parallel run with one thread each, so the configured
step's time over it bounds what splitting each step over the two cores could gain (before the
gradient all-reduce).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    TrainerCallback,
    TrainingArguments,
)

from stages.bench import best_seconds
from stages.bench.align import SequentialOrder, quiet_trainer
from stages.lib.align import PreferenceTrainer, PromptCollator, disable_dropout
from stages.lib.modeling import fuse_activations
from stages.lib.variants import LossConfig


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul (best of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), repeats)


def step_flops(config, batch_seqs: int, seq_len: int, head_tokens: int | None = None) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 x forward) of a GPT-2 model on
    a [batch_seqs, seq_len] batch: 2 per multiply-add, attention scores and values included;
    ``head_tokens``: positions the LM head runs on (default: all of them)."""
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    tokens = batch_seqs * seq_len
    head_tokens = tokens if head_tokens is None else head_tokens
    blocks = tokens * layers * (12 * d * d)  # qkv 3d², out d², mlp 8d²
    attention = layers * 2 * batch_seqs * seq_len * seq_len * d  # QKᵀ and AV, multiply-adds
    return 3 * 2 * (blocks + head_tokens * vocab * d + attention)


class _Clock(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()

    def on_step_end(self, *a, **k):
        self.times.append(time.perf_counter() - self.t)


def _policy(model_dir: str | Path | None, config) -> torch.nn.Module:
    if model_dir is not None:  # as saved: the plain GELU until fuse_activations
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    torch.manual_seed(0)
    return GPT2LMHeadModel(copy.deepcopy(config or GPT2Config()))


def alignment_flops(
    items: list[dict],
    tokenizer,
    *,
    optimizer: str = "adamw_torch",
    batch_prompts: int = 4,
    steps: int = 3,
    max_length: int = 64,
    config=None,
    model_dir: str | Path | None = None,
    fast: bool = True,
    peak: float | None = None,
) -> dict:
    """Achieved FLOP/s of ``steps`` timed :class:`PreferenceTrainer` steps (after one warm-up
    step) with the transformers ``optimizer``, dropout off as in ``align``, on the policy in
    ``model_dir`` or else a GPT-2 of ``config`` (default ``GPT2Config()``, 124M) with random
    weights; ``fast``: see the module docstring. ``peak``: the matmul FLOP/s (measured here
    when None)."""
    model = _policy(model_dir, config)
    config = model.config
    disable_dropout(model)
    if fast:
        fuse_activations(model)
    collator = PromptCollator(tokenizer, max_length)
    batches = [
        collator(items[s : s + batch_prompts])
        for s in range(0, batch_prompts * (steps + 1), batch_prompts)
    ]
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    head_tokens = [int(b["completion_mask"][:, 1:].sum()) for b in batches]
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_prompts,
            max_steps=steps + 1,
            learning_rate=1e-5,
            optim=optimizer,
            max_grad_norm=1.0,
            report_to="none",
            save_strategy="no",
            logging_steps=steps + 1,
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )

        class Sequential(SequentialOrder, PreferenceTrainer):
            pass

        trainer = Sequential(
            model=model,
            args=args,
            train_dataset=items[: batch_prompts * (steps + 1)],
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[clock],
            loss_config=LossConfig("sigmoid", "reverse_kl", 0.1),
            variant="flops",
            packed=fast,
        )
        quiet_trainer(trainer)
        trainer.train()
    timed = list(zip(shapes, head_tokens))[1:]
    flops = sum(step_flops(config, b, t) for (b, t), _ in timed)
    useful = sum(step_flops(config, b, t, head if fast else None) for (b, t), head in timed)
    seconds = sum(clock.times[1:])
    peak = matmul_flops() if peak is None else peak
    size = sum(p.numel() for p in model.parameters())
    name = f"GPT-2 {size / 1e6:.1f}M" + (" (demo SFT policy)" if model_dir else " (random weights)")
    return {
        "model": name,
        "path": "fast" if fast else "plain",
        "optimizer": optimizer,
        "params": size,
        "batch_shapes": shapes[1:],
        "timed_steps": steps,
        "step_s": seconds / steps,
        "step_flops": flops / steps,
        "achieved_flops": flops / seconds,
        "useful_flops": useful / seconds,
        "matmul_flops": peak,
        "ratio": flops / seconds / peak,
        "useful_ratio": useful / seconds / peak,
    }


def step_scaling(
    items: list[dict],
    tokenizer,
    *,
    model_dir: str | Path,
    optimizer: str,
    batch_prompts: int,
    threads: int,
    steps: int = 10,
    peak: float | None = None,
    repeats: int = 2,
) -> list[dict]:
    """The fast step (:func:`alignment_flops`) at (``threads``, ``batch_prompts``), twice the
    batch, and one thread at the batch and half of it, each timed ``repeats`` times in turn (the
    shapes alternate, so a slow spell of the machine hits them alike) and kept at its fastest;
    each row adds ``threads``, ``batch_prompts``, ``ms_per_seq`` and ``vs_configured`` (the
    configured step's time per sequence over the row's: above 1 is faster per sequence). A
    shape needing more than the ``len(items)`` prompts of ``steps`` + 1 full batches is skipped
    (the configured one never)."""
    shapes = [(threads, batch_prompts), (threads, 2 * batch_prompts), (1, batch_prompts)]
    shapes.append((1, max(1, batch_prompts // 2)))
    fits = [s for s in shapes[1:] if s[1] * (steps + 1) <= len(items)]
    shapes = list(dict.fromkeys([shapes[0], *fits]))
    before, best = torch.get_num_threads(), {}
    for _ in range(repeats):
        for t, b in shapes:
            torch.set_num_threads(t)
            try:
                row = alignment_flops(
                    items,
                    tokenizer,
                    optimizer=optimizer,
                    model_dir=model_dir,
                    batch_prompts=b,
                    steps=steps,
                    peak=peak,
                )
            finally:
                torch.set_num_threads(before)
            if (t, b) not in best or row["step_s"] < best[t, b]["step_s"]:
                best[t, b] = row
    rows = []
    for t, b in shapes:
        row = best[t, b]
        seqs = sum(s[0] for s in row["batch_shapes"]) / len(row["batch_shapes"])
        ms = row["step_s"] / seqs * 1e3
        rows.append(row | {"threads": t, "batch_prompts": b, "ms_per_seq": ms, "repeats": repeats})
    for row in rows:
        row["vs_configured"] = rows[0]["ms_per_seq"] / row["ms_per_seq"]
    return rows
