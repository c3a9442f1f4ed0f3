"""Benchmarks, side by side in one run on one machine; writes reports/bench.{json,md}.

    dvc repro                                   # the demo outputs the benchmarks read
    python -m stages bench                      # items 1, 2, 3, 5 (about 5 minutes on 2 cores)
    python -m stages bench --sweep              # + item 4: `dvc repro` of a fresh clone, per stage
    python -m stages bench --only align,flops --threads 1

1. ``align``: our trainer vs trl's ``DPOTrainer`` (precompute_ref_log_probs=True), pairs/s at
   the original's 2 disjoint pairs per prompt and at all 6, same pairs, order, model, optimizer,
   pairs per step and steps; their per-step losses (:mod:`stages.bench.align`).
2. ``sample``: the ``sample`` stage's generation vs ``generate`` one prompt at a time and plain
   unsorted batches, generated tokens/s (:mod:`stages.bench.generate`).
3. ``eval``: seconds per 1,000 generated tokens of the ``evaluate`` compute.
4. ``sweep``: wall time of each stage of ``dvc repro`` in a fresh ``git clone`` of HEAD.
5. ``flops``: achieved FLOP/s of our alignment step on GPT-2 124M (random weights, dropout off
   as in ``align``) over the FLOP/s of a large float32 matmul, with ``align.common.optimizer``
   and with fused AdamW.

Benchmarks are not tests: nothing here asserts a time. Thread count, torch version and CPU are
recorded with the figures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import typer
from datasets.utils.logging import disable_progress_bar
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from stages.bench.align import SequentialOrder, align_throughput, quiet_trainer
from stages.bench.generate import evaluation_cost, sampling_throughput
from stages.lib import paths
from stages.lib.common import atomic_path, write_json
from stages.lib.config import (
    DataConfig,
    EvaluateConfig,
    RewardConfig,
    SampleConfig,
    load_params,
    read_mapping,
    read_section,
    read_seed,
)
from stages.lib.contracts import PREFERENCES, PROMPTS, SCORED, read_rows
from stages.lib.losses import LossConfig
from stages.lib.modeling import load_causal_lm
from stages.lib.trainer import (
    TRAIN_KEYS,
    PreferenceTrainer,
    PromptCollator,
    TrainConfig,
    build_items,
    disable_dropout,
)

ITEMS = ("align", "sample", "eval", "flops", "sweep")


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul (best of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(config, batch_seqs: int, seq_len: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 x forward) of a GPT-2 model on
    a [batch_seqs, seq_len] batch: 2 per multiply-add, attention scores and values included."""
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    tokens = batch_seqs * seq_len
    per_token = layers * (12 * d * d) + vocab * d  # qkv 3d², out d², mlp 8d²; LM head
    attention = layers * 2 * batch_seqs * seq_len * seq_len * d  # QKᵀ and AV
    return 3 * (2 * tokens * per_token + 2 * attention)


def alignment_flops(
    items: list[dict],
    tokenizer,
    *,
    optimizer: str = "adamw_torch",
    batch_prompts: int = 4,
    steps: int = 3,
    max_length: int = 64,
    config=None,
) -> dict:
    """Achieved FLOP/s of :class:`stages.lib.trainer.PreferenceTrainer` steps on GPT-2 124M
    (``GPT2Config()``, random weights, dropout off as in ``align``) with the transformers
    ``optimizer``; the first step is a warm-up and is not timed. ``config``: another
    ``GPT2Config`` (tests use a tiny one)."""
    config = config or GPT2Config()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    disable_dropout(model)
    collator = PromptCollator(tokenizer, max_length)
    shapes = [
        tuple(collator(items[s : s + batch_prompts])["input_ids"].shape)
        for s in range(0, batch_prompts * (steps + 1), batch_prompts)
    ]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    clock = Clock()
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
        )
        quiet_trainer(trainer)
        trainer.train()
    flops = sum(step_flops(config, b, t) for b, t in shapes[1:])
    seconds = sum(clock.times[1:])
    achieved, peak = flops / seconds, matmul_flops()
    size = sum(p.numel() for p in model.parameters())
    name = f"GPT-2 {size / 1e6:.1f}M (random weights)"
    return {
        "model": name,
        "optimizer": optimizer,
        "params": size,
        "batch_shapes": shapes[1:],
        "timed_steps": steps,
        "step_s": seconds / steps,
        "step_flops": flops / steps,
        "achieved_flops": achieved,
        "matmul_flops": peak,
        "ratio": achieved / peak,
    }


def repro_sweep(repo: Path) -> dict:
    """``git clone`` HEAD of ``repo`` into a temporary folder, run ``dvc repro`` there and time
    each stage (from one 'Running stage' line to the next)."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(repo.resolve()), str(clone)], check=True)
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=clone,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        marks, tail = [], []
        for line in proc.stdout:
            m = re.match(r"Running stage '([^']+)'", line.strip())
            if m:
                marks.append((m.group(1), time.perf_counter() - start))
            tail = (tail + [line])[-20:]
        total = time.perf_counter() - start
        if proc.wait() != 0:
            raise ValueError(f"bench --sweep: dvc repro failed in the clone:\n{''.join(tail)}")
    ends = [t for _, t in marks[1:]] + [total]
    stages = {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends)}
    return {"commit": head, "stages": stages, "total_s": round(total, 1)}


def machine(threads: int) -> dict:
    """The CPU, its cores, the torch threads and the versions the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def align_optimizer(params: dict) -> str:
    """``align.common.optimizer`` (the training settings of ``align.common``, typed)."""
    if "align" not in params:
        raise ValueError("params: section 'align' is missing")
    common = (params["align"] or {}).get("common")
    if not isinstance(common, dict):
        raise ValueError(f"params: align.common: must be a mapping, got {common!r}")
    train = {k: v for k, v in common.items() if k in TRAIN_KEYS}  # loss keys may sit there too
    return read_mapping(train, "align.common", TrainConfig).optimizer


def run(
    items: list[str],
    params: dict,
    *,
    threads: int,
    align_prompts_per_step: int,
    align_steps: int,
    sample_prompts: int,
    eval_prompts: int,
) -> dict:
    """Run the chosen benchmark items; returns the ``reports/bench.json`` dict."""
    torch.set_num_threads(threads)
    needs = {
        "align": [paths.SFT_DIR, paths.SCORED],
        "sample": [paths.SFT_DIR, paths.TRAIN_PROMPTS],
        "eval": [paths.SFT_DIR, paths.REWARD_DIR, paths.EVAL_PROMPTS],
        "flops": [paths.SFT_DIR, paths.PREFERENCES],
    }
    for item in items:
        for path in needs.get(item, []):
            if not path.exists():
                raise FileNotFoundError(f"bench {item}: {path} not found (run `dvc repro` first)")
    out: dict = {"machine": machine(threads), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "align" in items:
        rows = read_rows(paths.SCORED, SCORED)
        out["align"] = [
            align_throughput(
                paths.SFT_DIR,
                rows,
                pairing=p,
                prompts_per_step=align_prompts_per_step,
                steps=align_steps,
            )
            for p in ("disjoint", "all")
        ]
        for r in out["align"]:
            print(
                f"align {r['pairing']}: ours {r['ours']['pairs_per_s']:.0f} pairs/s, trl "
                f"{r['trl']['pairs_per_s']:.0f} pairs/s ({r['speedup_pairs_per_s']:.2f}x), "
                f"max |loss diff| {r['max_abs_loss_diff']:.1e}",
                file=sys.stderr,
            )
    if "sample" in items:
        s = read_section(params, "sample", SampleConfig)
        model, tokenizer = load_causal_lm(paths.SFT_DIR)
        prompts = [r["prompt"] for r in read_rows(paths.TRAIN_PROMPTS, PROMPTS)[:sample_prompts]]
        out["sample"] = sampling_throughput(
            model,
            tokenizer,
            prompts,
            k=s.n_per_prompt,
            temperature=s.temperature,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            seed=0,
        )
        print(
            f"sample: {out['sample']['sample']['tokens_per_s']:.0f} tokens/s, "
            f"{out['sample']['speedup_vs_one_prompt']:.1f}x one prompt at a time",
            file=sys.stderr,
        )
    if "eval" in items:
        cfg, seed = read_section(params, "evaluate", EvaluateConfig), read_seed(params)
        score = read_section(params, "reward", RewardConfig).score
        source = read_section(params, "data", DataConfig).source
        dpo = paths.aligned_model("dpo")
        policies = [paths.SFT_DIR] + [p for p in [dpo] if p.is_dir()]
        out["eval"] = [
            evaluation_cost(cfg, p, eval_prompts, seed=seed, score=score, source=source)
            for p in policies
        ]
        for e in out["eval"]:
            print(
                f"eval {e['policy']}: {e['s_per_1k_tokens']:.2f} s per 1,000 tokens",
                file=sys.stderr,
            )
    if "flops" in items:
        configured = align_optimizer(params)
        prefs = read_rows(paths.PREFERENCES, PREFERENCES)
        refs = [{"logps": [-100.0] * len(p["completions"])} for p in prefs]  # any fixed values
        tokenizer = AutoTokenizer.from_pretrained(paths.SFT_DIR)
        out["flops"] = [
            alignment_flops(build_items(prefs, refs), tokenizer, optimizer=o)
            for o in dict.fromkeys([configured, "adamw_torch_fused"])
        ]
        for f in out["flops"]:
            print(
                f"flops ({f['optimizer']}): {f['achieved_flops'] / 1e9:.1f} GFLOP/s vs matmul "
                f"{f['matmul_flops'] / 1e9:.1f} GFLOP/s = {f['ratio']:.2f}",
                file=sys.stderr,
            )
    if "sweep" in items:
        out["sweep"] = repro_sweep(Path("."))
        print(f"sweep: dvc repro {out['sweep']['total_s']:.0f} s", file=sys.stderr)
    return out


def markdown(b: dict) -> str:
    """The Markdown tables of a ``reports/bench.json`` dict."""
    m = b["machine"]
    lines = [
        f"Measured {b['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
        f"threads, torch {m['torch']}); `python -m stages bench`.",
        "",
    ]
    if "align" in b:
        lines += [
            "| Alignment (demo SFT model) | pairs/step x steps | ours pairs/s | trl pairs/s | "
            "speedup | final loss ours / trl | max abs loss diff | 10-variant sweep ours / trl (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in b["align"]:
            o, t = r["ours"], r["trl"]
            lines.append(
                f"| {r['pairs_per_prompt']} pairs/prompt ({r['pairing']}) | {r['pairs_per_step']} x "
                f"{r['steps']} | {o['pairs_per_s']:.0f} | {t['pairs_per_s']:.0f} | "
                f"{r['speedup_pairs_per_s']:.2f}x | {o['final_loss']:.4f} / {t['final_loss']:.4f} "
                f"| {r['max_abs_loss_diff']:.1e} | {r['sweep_ours_s']:.0f} / {r['sweep_trl_s']:.0f} "
                f"({r['speedup_sweep']:.2f}x) |"
            )
        lines.append("")
    if "sample" in b:
        s = b["sample"]
        lines += [
            f"| Sampling ({s['prompts']} prompts x {s['k']}, {s['max_new_tokens']} new tokens, "
            f"batch {s['batch_size']}) | tokens | seconds | tokens/s | `sample` speedup |",
            "|---|---|---|---|---|",
        ]
        for name, label in (
            ("sample", "`sample` stage (length-sorted batches)"),
            ("one_prompt", "`generate`, one prompt at a time"),
            ("unsorted", "`generate`, unsorted batches"),
        ):
            speed = s["sample"]["tokens_per_s"] / s[name]["tokens_per_s"]
            lines.append(
                f"| {label} | {s[name]['tokens']} | {s[name]['seconds']:.1f} | "
                f"{s[name]['tokens_per_s']:.0f} | {speed:.2f}x |"
            )
        lines.append("")
    if "eval" in b:
        lines += [
            "| Evaluation | tokens | s / 1k tokens | generate | log-prob + entropy (+ SFT pass) | reward |",
            "|---|---|---|---|---|---|",
        ]
        for e in b["eval"]:
            lines.append(
                f"| {e['policy']} ({e['prompts']} prompts x {e['samples']}) | {e['tokens']} | "
                f"{e['s_per_1k_tokens']:.2f} | {e['generate_s_per_1k_tokens']:.2f} | "
                f"{e['logprob_entropy_s_per_1k_tokens']:.2f} | {e['reward_s_per_1k_tokens']:.2f} |"
            )
        lines.append("")
    if "flops" in b:
        lines += [
            "| Training efficiency | optimizer | step (s) | GFLOP/step | achieved GFLOP/s | "
            "fp32 matmul GFLOP/s | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in b["flops"]:
            lines.append(
                f"| {f['model']}, batch {f['batch_shapes'][0][0]} seqs | `{f['optimizer']}` | "
                f"{f['step_s']:.2f} | {f['step_flops'] / 1e9:.0f} | {f['achieved_flops'] / 1e9:.1f} "
                f"| {f['matmul_flops'] / 1e9:.1f} | {f['ratio']:.2f} |"
            )
        lines.append("")
    if "sweep" in b:
        w = b["sweep"]
        lines += [
            f"`dvc repro` of a fresh clone of {w['commit']}: {w['total_s']:.0f} s in total.",
            "",
            "| Stage | wall (s) |",
            "|---|---|",
        ]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in w["stages"].items()]
        lines.append("")
    return "\n".join(lines)


def main(
    only: str = typer.Option(
        ",".join(i for i in ITEMS if i != "sweep"),
        help=f"Comma-separated items of {', '.join(ITEMS)}.",
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="Also time `dvc repro` of a fresh clone (~10 min)."
    ),
    threads: int = typer.Option(os.cpu_count() or 1, help="torch threads for every item."),
    align_prompts_per_step: int = typer.Option(
        16, help="Prompts per alignment step (x pairs per prompt)."
    ),
    align_steps: int = typer.Option(20, help="Alignment steps (one epoch over that many batches)."),
    sample_prompts: int = typer.Option(128, help="Train prompts for the sampling benchmark."),
    eval_prompts: int = typer.Option(100, help="Eval prompts for the evaluation benchmark."),
    out: Path = typer.Option(Path("reports/bench.json"), help="JSON output; Markdown beside it."),
    params: Path = typer.Option(
        Path("params.yaml"), help="Params file (sample and evaluate settings)."
    ),
) -> None:
    """Benchmark training, sampling, evaluation and the sweep; write reports/bench.{json,md}."""
    items = [i.strip() for i in only.split(",") if i.strip()] + (["sweep"] if sweep else [])
    unknown = [i for i in items if i not in ITEMS]
    if unknown:
        raise ValueError(f"--only: unknown item {unknown[0]!r} (items: {', '.join(ITEMS)})")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    disable_progress_bar()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")  # trl's precompute and our generation bars
    warnings.filterwarnings("ignore")
    result = run(
        items,
        load_params(params),
        threads=threads,
        align_prompts_per_step=align_prompts_per_step,
        align_steps=align_steps,
        sample_prompts=sample_prompts,
        eval_prompts=eval_prompts,
    )
    write_json(out, result)
    md = markdown(result)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(md + "\n")
    typer.echo(md)
