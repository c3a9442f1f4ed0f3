"""``sample``: the SFT policy writes K completions for every train prompt.

Reads ``models/sft/``, ``data/prompts/train.jsonl`` (contract ``PROMPTS``), ``seed`` and
``sample.*``; writes ``data/samples.jsonl`` (contract ``SAMPLES``, in prompt order), one row per
prompt with, per completion (the prompt excluded), what the policy generated::

    {"prompt_id": "train-17", "prompt": "The film was",
     "completions": [K texts],          # decoded, special tokens dropped: the reward model reads these
     "completion_ids": [K id lists],    # the sampled token ids, EOS last when the policy emitted it:
                                        # the reference and the trainer score these
     "finished": [K booleans]}          # True when the completion ended with EOS

    python -m stages sample            # or: dvc repro sample

Plain ancestral sampling (``sample.temperature``, no top-k / top-p), batched with a KV cache by
:mod:`stages.lib.generation` from the random stream ``sample``; the command prints generated
tokens per second (no metrics file).
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import seed_everything, write_jsonl
from stages.lib.config import SampleConfig, load_params, read_section, read_seed
from stages.lib.contracts import PROMPTS, read_rows
from stages.lib.modeling import load_causal_lm
from stages.lib.sampling import sample_rows


def sample(params: dict, progress: bool = True) -> dict:
    """Run the stage on a params mapping; returns a summary (counts and tokens per second)."""
    cfg, seed = read_section(params, "sample", SampleConfig), read_seed(params)
    prompts = read_rows(paths.TRAIN_PROMPTS, PROMPTS)
    seed_everything(seed)
    model, tokenizer = load_causal_lm(paths.SFT_DIR)
    rows, out = sample_rows(model, tokenizer, prompts, cfg, seed, progress)
    write_jsonl(paths.SAMPLES, rows)
    n = len(prompts) * cfg.n_per_prompt
    return {
        "prompts": len(prompts),
        "completions": n,
        "tokens": out.n_tokens,
        "seconds": round(out.seconds, 2),
        "tokens_per_second": round(out.tokens_per_second, 1),
        "mean_tokens": round(out.n_tokens / n, 2),
        "eos_share": round(sum(map(sum, out.finished)) / n, 4),
        "empty": sum(1 for r in rows for c in r["completions"] if not c.strip()),
    }


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Sample K completions per train prompt from the SFT policy."""
    s = sample(load_params(params))
    typer.echo(
        f"sampled {s['completions']} completions for {s['prompts']} prompts: "
        f"{s['tokens']} tokens in {s['seconds']} s ({s['tokens_per_second']} tokens/s), "
        f"{s['mean_tokens']} tokens on average, {s['eos_share']:.0%} ended with EOS, "
        f"{s['empty']} empty"
    )
