"""``sample``: the SFT policy writes K completions for every train prompt.

Reads ``models/sft/``, ``data/prompts/train.jsonl`` (contract ``PROMPTS``), ``seed`` and
``sample.*``; writes ``data/samples.jsonl`` (contract ``SAMPLES``, completions without the prompt
text, in prompt order)::

    python -m stages sample            # or: dvc repro sample

Plain ancestral sampling (``sample.temperature``, no top-k / top-p), batched with a KV cache by
:mod:`stages.generation`; the command reports generated tokens per second.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from stages.common import StageError, load_params, param, seed_everything, write_jsonl
from stages.contracts import PROMPTS, read_rows

if TYPE_CHECKING:
    from stages.generation import Generations

SFT_DIR = Path("models/sft")
PROMPTS_PATH = Path("data/prompts/train.jsonl")
SAMPLES_PATH = Path("data/samples.jsonl")


def sample_settings(params: dict) -> dict:
    """The checked ``sample.*`` settings plus the global seed."""
    section = params.get("sample")
    if not isinstance(section, dict):
        raise StageError("params: section 'sample' is missing")
    return {
        "seed": param(params, "params.seed", int),
        "n_per_prompt": param(section, "sample.n_per_prompt", int, lambda v: v >= 2,
                              "must be >= 2 (a preference pair needs two completions)"),
        "temperature": param(section, "sample.temperature", float, lambda v: v > 0, "must be > 0"),
        "max_new_tokens": param(section, "sample.max_new_tokens", int, lambda v: v >= 1,
                                "must be >= 1"),
        "batch_size": param(section, "sample.batch_size", int, lambda v: v >= 1, "must be >= 1"),
    }


def sample_rows(model, tokenizer, prompts: list[dict], settings: dict,
                progress: bool = True) -> tuple[list[dict], Generations]:
    """SAMPLES rows (one per prompt, in order) and the raw generations."""
    from stages.generation import generate_completions

    out = generate_completions(
        model, tokenizer, [p["prompt"] for p in prompts], n_per_prompt=settings["n_per_prompt"],
        temperature=settings["temperature"], max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"], seed=settings["seed"], progress=progress,
        desc="sample")
    rows = [{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "completions": texts}
            for p, texts in zip(prompts, out.texts)]
    return rows, out


def sample(params: dict, progress: bool = True) -> dict:
    """Run the stage on a params mapping; returns a summary (counts and tokens per second)."""
    from stages.generation import load_causal_lm

    settings = sample_settings(params)
    prompts = read_rows(PROMPTS_PATH, PROMPTS)
    seed_everything(settings["seed"])
    model, tokenizer = load_causal_lm(SFT_DIR)
    rows, out = sample_rows(model, tokenizer, prompts, settings, progress)
    write_jsonl(SAMPLES_PATH, rows)
    n = len(prompts) * settings["n_per_prompt"]
    return {"prompts": len(prompts), "completions": n, "tokens": out.n_tokens,
            "seconds": round(out.seconds, 2), "tokens_per_second": round(out.tokens_per_second, 1),
            "mean_tokens": round(out.n_tokens / n, 2),
            "eos_share": round(sum(map(sum, out.finished)) / n, 4),
            "empty": sum(1 for r in rows for c in r["completions"] if not c.strip())}


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Sample K completions per train prompt from the SFT policy."""
    s = sample(load_params(params))
    typer.echo(f"sampled {s['completions']} completions for {s['prompts']} prompts: "
               f"{s['tokens']} tokens in {s['seconds']} s ({s['tokens_per_second']} tokens/s), "
               f"{s['mean_tokens']} tokens on average, {s['eos_share']:.0%} ended with EOS, "
               f"{s['empty']} empty")
