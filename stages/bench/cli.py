"""Benchmarks, side by side in one run on one machine; writes reports/bench.{json,md}.

    dvc repro                                   # the demo outputs the benchmarks read
    python -m stages bench                      # items 1, 2, 3, 5, 6, 8 (about 10 minutes on 2 cores)
    python -m stages bench --baseline 05687a1   # item 6 also runs that commit's code, side by side
    python -m stages bench --sweep              # + item 4: `dvc repro` of a fresh clone, per stage
    python -m stages bench --only paper         # item 7: the paper profile's dress rehearsal
    python -m stages bench --only align,flops --threads 1

1. ``align``: our trainer vs trl's ``DPOTrainer`` (precompute_ref_log_probs=True), pairs/s at
   the original's 2 disjoint pairs per prompt and at all 6, same pairs, order, model, optimizer,
   pairs per step and steps; their per-step losses (:mod:`stages.bench.align`).
2. ``sample``: the ``sample`` stage's generation vs ``generate`` one prompt at a time and plain
   unsorted batches, generated tokens/s (:mod:`stages.bench.generate`).
3. ``eval``: seconds per 1,000 generated tokens of the ``evaluate`` compute.
4. ``sweep``: wall time of each stage of ``dvc repro`` in a fresh ``git clone`` of HEAD.
5. ``flops``: achieved FLOP/s of our alignment step over the FLOP/s of a large float32 matmul
   measured in the same run (:mod:`stages.bench.flops`), on the demo SFT policy with the demo's
   batch (``align.common.batch_prompts`` prompts x K completions) and on GPT-2 124M (random
   weights), each with the plain path and unfused AdamW (the code before the performance work)
   and with the fast path and ``align.common.optimizer`` (and fused AdamW); and the demo's fast
   step at twice the batch and on one thread at the batch and half of it (time per sequence).
6. ``runs``: wall time of one demo run, ``align`` + ``evaluate`` of one variant and seed, each
   process from start to metrics written, of this tree, of this tree under ``STAGES_WARM=1``
   (forked from a warm server, :mod:`stages.warm`) and of ``--baseline``'s code, and of two
   runs side by side with one thread each (:mod:`stages.bench.runs`).
7. ``paper``: the ``paper`` profile end to end through ``dvc repro`` with local stand-ins for
   its hub data and models, cut to a few prompts and steps: wall time and peak memory per stage
   (:mod:`stages.bench.rehearsal`).
8. ``dvc``: what DVC spends around every stage on this repo's ``dvc.lock``: its load with
   ruamel's C and pure-Python loaders side by side, its round-trip rewrite after a stage, and
   ``dvc status`` (:mod:`stages.bench.lockfile`).
9. ``online``: one on-policy round (sample, score, pairs, reference, train), a short RLOO run and
   one offline align run on the same ``--online-prompts`` prompts, their ratios, and the round
   sampler against ``generate`` one prompt at a time (:mod:`stages.bench.online`; about a
   minute on the demo's models: ``--only online``).

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
)
from transformers.utils import logging as hf_logging

from stages.bench.align import align_throughput
from stages.bench.flops import alignment_flops, matmul_flops, step_scaling
from stages.bench.generate import evaluation_cost, sampling_throughput
from stages.bench.lockfile import lockfile_cost, status_seconds
from stages.bench.online import online_costs, online_markdown
from stages.bench.rehearsal import rehearse
from stages.bench.runs import run_wall_times
from stages.lib import paths
from stages.lib.align import (
    TRAIN_KEYS,
    TrainConfig,
    build_items,
)
from stages.lib.common import atomic_path, write_json
from stages.lib.config import (
    DataConfig,
    EvaluateConfig,
    RewardConfig,
    SampleConfig,
    load_params,
    read_mapping,
    read_section,
    run_seed,
)
from stages.lib.contracts import PREFERENCES, PROMPTS, SCORED, read_rows
from stages.lib.modeling import load_causal_lm

ITEMS = ("align", "sample", "eval", "flops", "runs", "sweep", "paper", "dvc", "online")
#: Items run by default (``sweep`` and ``paper`` take minutes of their own: ask for them).
DEFAULT_ITEMS = ("align", "sample", "eval", "flops", "runs", "dvc")


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
            "STAGES_WARM": "0",  # the default dvc repro: every stage in its own fresh process
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


def align_common(params: dict) -> TrainConfig:
    """The training settings of ``align.common``, typed (its loss keys left aside)."""
    if "align" not in params:
        raise ValueError("params: section 'align' is missing")
    common = (params["align"] or {}).get("common")
    if not isinstance(common, dict):
        raise ValueError(f"params: align.common: must be a mapping, got {common!r}")
    train = {k: v for k, v in common.items() if k in TRAIN_KEYS}  # loss keys may sit there too
    return read_mapping(train, "align.common", TrainConfig)


def align_optimizer(params: dict) -> str:
    """``align.common.optimizer`` (:func:`align_common`)."""
    return align_common(params).optimizer


def run(
    items: list[str],
    params: dict,
    *,
    threads: int,
    align_prompts_per_step: int,
    align_steps: int,
    sample_prompts: int,
    eval_prompts: int,
    baseline: str | None = None,
    run_variant: str = "dpo",
    imdb: Path = Path("../shared/data/imdb"),
    online_prompts: int = 64,
    rl_steps: int = 8,
) -> dict:
    """Run the chosen benchmark items; returns the ``reports/bench.json`` dict."""
    torch.set_num_threads(threads)
    needs = {
        "align": [paths.SFT_DIR, paths.SCORED],
        "sample": [paths.SFT_DIR, paths.TRAIN_PROMPTS],
        "eval": [paths.SFT_DIR, paths.REWARD_DIR, paths.EVAL_PROMPTS],
        "flops": [paths.SFT_DIR, paths.PREFERENCES],
        "runs": [paths.SFT_DIR, paths.REWARD_DIR, paths.PREFERENCES, paths.REFERENCE],
        "dvc": [Path("dvc.lock")],
        "online": [paths.SFT_DIR, paths.REWARD_DIR, paths.TRAIN_PROMPTS],
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
        cfg, seed = read_section(params, "evaluate", EvaluateConfig), run_seed(params, None)
        score = read_section(params, "reward", RewardConfig).score
        source = read_section(params, "data", DataConfig).source
        dpo = paths.aligned_model("dpo", seed)  # the first run seed's dpo policy
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
        common = align_common(params)
        configured, batch = common.optimizer, common.batch_prompts
        prefs = read_rows(paths.PREFERENCES, PREFERENCES)
        refs = [{"logps": [-100.0] * len(p["completions"])} for p in prefs]  # any fixed values
        items_ = [i for i in build_items(prefs, refs) if i["split"] == "train"]
        tokenizer = AutoTokenizer.from_pretrained(paths.SFT_DIR)
        peak = matmul_flops()
        demo = dict(model_dir=paths.SFT_DIR, batch_prompts=batch, steps=align_steps, peak=peak)
        out["flops"] = [
            # the demo policy, as align trains it: the commit before (plain path, unfused AdamW)
            # and now (fused GELU, packed head, the configured optimizer)
            alignment_flops(items_, tokenizer, optimizer="adamw_torch", fast=False, **demo),
            alignment_flops(items_, tokenizer, optimizer=configured, **demo),
            # GPT-2 124M (the paper profile's shape), the same two, and fused AdamW
            alignment_flops(items_, tokenizer, optimizer="adamw_torch", fast=False, peak=peak),
            *(
                alignment_flops(items_, tokenizer, optimizer=o, peak=peak)
                for o in dict.fromkeys([configured, "adamw_torch_fused"])
            ),
        ]
        out["flops_scaling"] = step_scaling(
            items_,
            tokenizer,
            model_dir=paths.SFT_DIR,
            optimizer=configured,
            batch_prompts=batch,
            threads=torch.get_num_threads(),
            steps=align_steps,
            peak=peak,
        )
        for f in out["flops"]:
            print(
                f"flops {f['model']} {f['path']} ({f['optimizer']}): "
                f"{f['achieved_flops'] / 1e9:.1f} GFLOP/s vs matmul "
                f"{f['matmul_flops'] / 1e9:.1f} GFLOP/s = {f['ratio']:.2f}",
                file=sys.stderr,
            )
    if "runs" in items:
        out["runs"] = run_wall_times(Path("."), variant=run_variant, baseline=baseline)
        r = out["runs"]
        print(
            f"runs: align + evaluate {r['head']['total_s']:.1f} s, "
            f"warm {r['warm']['total_s']:.1f} s"
            + (f", baseline {r['baseline']['total_s']:.1f} s" if baseline else ""),
            file=sys.stderr,
        )
    if "paper" in items:
        out["paper"] = rehearse(Path("."), imdb)
        print(
            f"paper rehearsal: {out['paper']['total_s']:.0f} s, peak "
            f"{out['paper']['peak_mib']} MiB",
            file=sys.stderr,
        )
    if "dvc" in items:
        out["dvc"] = {**lockfile_cost(Path("dvc.lock")), "status_s": status_seconds(Path("."))}
        d = out["dvc"]
        print(
            f"dvc: dvc.lock load {d['c_load_s']:.2f} s ({d['loader']}) vs "
            f"{d['pure_load_s']:.2f} s pure Python, rewrite {d['roundtrip_s']:.2f} s",
            file=sys.stderr,
        )
    if "online" in items:
        o = online_costs(
            params,
            paths.SFT_DIR,
            paths.REWARD_DIR,
            read_rows(paths.TRAIN_PROMPTS, PROMPTS),
            n_prompts=online_prompts,
            rl_steps=rl_steps,
            variant=run_variant,
        )
        out["online"] = o
        print(
            f"online: round {o['round']['total_s']:.1f} s ({o['round_vs_align']:.2f}x align), "
            f"RLOO {o['rloo']['train_s']:.1f} s ({o['rloo_vs_align']:.2f}x), align "
            f"{o['align']['train_s']:.1f} s; sampler {o['sampler_vs_one_prompt']:.2f}x one prompt",
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
            "| Training efficiency | path | optimizer | step (s) | GFLOP/step (padded) | "
            "achieved GFLOP/s | fp32 matmul GFLOP/s | ratio | useful ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in b["flops"]:
            lines.append(
                f"| {f['model']}, batch {f['batch_shapes'][0][0]} seqs | {f['path']} | "
                f"`{f['optimizer']}` | {f['step_s']:.3f} | {f['step_flops'] / 1e9:.1f} | "
                f"{f['achieved_flops'] / 1e9:.1f} | {f['matmul_flops'] / 1e9:.1f} | "
                f"{f['ratio']:.2f} | {f['useful_ratio']:.2f} |"
            )
        lines.append("")
    if "flops_scaling" in b:
        rows = b["flops_scaling"]
        lines += [
            f"| Demo step, fast path (best of {rows[0]['repeats']}, alternating) | torch threads | "
            "prompts/step | seqs/step | step (s) | "
            "ms per seq | configured / this, per seq |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in rows:
            lines.append(
                f"| {'configured' if f is rows[0] else ''} | {f['threads']} | "
                f"{f['batch_prompts']} | {f['batch_shapes'][0][0]} | {f['step_s']:.3f} | "
                f"{f['ms_per_seq']:.2f} | {f['vs_configured']:.2f}x |"
            )
        half = rows[-1]
        if half["threads"] == 1 and 2 * half["batch_prompts"] == rows[0]["batch_prompts"]:
            lines += [
                "",
                f"Two processes of one thread, each on half the batch (data parallel on the two "
                f"cores), would at best take {half['step_s']:.3f} s a step against "
                f"{rows[0]['step_s']:.3f} s ({rows[0]['step_s'] / half['step_s']:.2f}x), before "
                "the gradient all-reduce and the two processes' contention for memory.",
            ]
        lines.append("")
    if "runs" in b:
        r = b["runs"]
        lines += [
            f"| One demo run ({r['variant']}, seed {r['seed']}; best of {r['repeats']}) | "
            "align (s) | evaluate (s) | total (s) |",
            "|---|---|---|---|",
        ]
        labels = {"baseline": f"commit {r.get('baseline_commit')}", "head": "this tree"}
        labels["warm"] = "this tree, `STAGES_WARM=1`"
        for name, label in labels.items():
            if name in r:
                t = r[name]
                lines.append(
                    f"| {label} | {t['align_s']:.1f} | {t['evaluate_s']:.1f} | {t['total_s']:.1f} |"
                )
        if "speedup" in r:
            lines.append(f"| speedup, this tree | | | {r['speedup']:.2f}x |")
            lines.append(f"| speedup, this tree warm | | | {r['speedup_warm']:.2f}x |")
        lines.append("")
        if "speedups" in r:
            each = ", ".join(
                f"{c:.2f}x cold and {w:.2f}x warm"
                for c, w in zip(r["speedups"], r["speedups_warm"])
            )
            lines += [
                f"The speedups within each repeat (the runs timed one after the other): {each}.",
                "",
            ]
        if "warm" in r:
            lines += [
                f"Warm (`STAGES_WARM=1`): {r['warm_speedup']:.2f}x this tree's cold run; the server"
                f" that each warm command forks from took {r['warm']['server_start_s']:.1f} s to "
                "start (once, by the first command).",
                "",
            ]
        if "side_by_side" in r:
            p = r["side_by_side"]
            lines += [
                f"Two runs one after the other (every core): {p['sequential_s']:.1f} s; started "
                f"together with one thread each: {p['parallel_one_thread_s']:.1f} s "
                f"({p['speedup']:.2f}x).",
                "",
            ]
    if "paper" in b:
        r = b["paper"]
        s0 = r["step0"]
        lines += [
            f"Paper-profile rehearsal (`--only paper`: GPT-2 124M and DistilBERT shapes, random "
            f"weights, local IMDB): {r['total_s']:.0f} s of stages after {r['build_models_s']:.0f} s "
            f"building the models; peak resident memory {r['peak_mib']} MiB; step-0 β·r chosen "
            f"{s0['chosen_reward']:.2e}, rejected {s0['rejected_reward']:.2e}.",
            "",
            "| Stage | wall (s) | peak MiB |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {t['wall_s']:.1f} | {t['peak_mib']} |" for name, t in r["stages"].items()
        ]
        lines.append("")
    if "dvc" in b:
        d = b["dvc"]
        lines += [
            f"DVC around each stage (`dvc.lock`: {d['stages']} stages, {d['lines']} lines): "
            f"loading it {d['c_load_s']:.2f} s with ruamel's C loader against "
            f"{d['pure_load_s']:.2f} s with its pure-Python one ({d['load_speedup']:.1f}x); "
            f"rewriting it after a stage (round trip, pure Python) {d['roundtrip_s']:.2f} s; "
            f"`dvc status` {d['status_s']:.1f} s.",
            "",
        ]
    if "online" in b:
        lines += online_markdown(b["online"])
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
        for kind in ("align", "evaluate"):
            times = [sec for name, sec in w["stages"].items() if name.startswith(f"{kind}@")]
            if times:
                lines.append(
                    f"`{kind}@*`: {len(times)} stages, {sum(times):.0f} s in all, "
                    f"{sum(times) / len(times):.1f} s each on average."
                )
        lines.append("")
    return "\n".join(lines)


def main(
    only: str = typer.Option(
        ",".join(DEFAULT_ITEMS),
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
    baseline: str = typer.Option(
        None, help="Commit whose align + evaluate the `runs` item also times, side by side."
    ),
    run_variant: str = typer.Option(
        "dpo", help="Variant of align.variants the `runs` and `online` items train."
    ),
    online_prompts: int = typer.Option(64, help="Train prompts of the `online` item's runs."),
    rl_steps: int = typer.Option(8, help="RLOO steps of the `online` item."),
    imdb: Path = typer.Option(
        Path(os.environ.get("IMDB_DIR", "../shared/data/imdb")),
        help="The local IMDB copy (train/test.jsonl) the `paper` rehearsal reads.",
    ),
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
        baseline=baseline,
        run_variant=run_variant,
        imdb=imdb,
        online_prompts=online_prompts,
        rl_steps=rl_steps,
    )
    write_json(out, result)
    md = markdown(result)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(md + "\n")
    typer.echo(md)
