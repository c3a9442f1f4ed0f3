"""``reference``: log-probs of every preference completion under the SFT policy, computed once.

Reads ``models/sft/``, ``data/preferences.jsonl`` (contract ``PREFERENCES``) and
``reference.*``; writes ``data/reference.jsonl`` (contract ``REFERENCE``), one row per
preferences row, in the same order::

    {"prompt_id": "train-17", "logps": [K floats], "n_tokens": [K ints]}

    python -m stages reference         # or: dvc repro reference

``logps[k]`` is log π_sft(completion_k | prompt) summed over the completion's tokens and
``n_tokens[k]`` their count. The tokens are the prompt's ids followed by the ids the policy
sampled (``completion_ids``, EOS last when it emitted one), cut to ``reference.max_length``
(prompt kept), as defined in :mod:`stages.lib.sequences` (the same calls the alignment trainer
makes, with the same ``max_length``), so every alignment variant reads these numbers instead of
running the SFT model again. The pass runs under the trainer's autocast (bf16 on a capable GPU)
with the LM head in float32, so the policy at step 0 reproduces them to float32 precision. All K
completions of a row are scored, paired or not (listwise losses use them all); a completion's
last id must be EOS exactly when it is ``finished`` (:func:`stages.lib.contracts.check_eos`,
which every reader of the preferences calls). Sequences are sorted by length and batched
(``reference.batch_size``) to keep padding small. The command reports how many completions
``max_length`` cut.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import write_jsonl
from stages.lib.config import ReferenceConfig, load_params, read_section
from stages.lib.contracts import PREFERENCES, check_eos, read_rows
from stages.lib.modeling import load_causal_lm
from stages.lib.sequences import reference_rows


def reference(params: dict, progress: bool = True) -> dict:
    """Run the stage on a params mapping; returns a summary."""
    cfg = read_section(params, "reference", ReferenceConfig)
    rows = read_rows(paths.PREFERENCES, PREFERENCES)
    model, tokenizer = load_causal_lm(paths.SFT_DIR)
    check_eos(rows, paths.PREFERENCES, tokenizer)
    out = reference_rows(
        model,
        tokenizer,
        rows,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        progress=progress,
    )
    write_jsonl(paths.REFERENCE, out)
    counts = [c for r in out for c in r["n_tokens"]]
    lengths = [len(ids) for r in rows for ids in r["completion_ids"]]
    return {
        "rows": len(out),
        "completions": len(counts),
        "mean_tokens": sum(counts) / len(counts),
        "mean_logp": sum(v for r in out for v in r["logps"]) / len(counts),
        "finished": sum(f for r in rows for f in r["finished"]) / len(counts),
        "cut": sum(n < length for n, length in zip(counts, lengths)),
    }


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Compute the SFT log-probs of every preference completion, once for all variants."""
    s = reference(load_params(params))
    typer.echo(
        f"reference log-probs for {s['completions']} completions of {s['rows']} prompts: "
        f"mean {s['mean_logp']:.2f} over {s['mean_tokens']:.1f} tokens, "
        f"{s['finished']:.0%} ended with EOS, {s['cut']} cut at reference.max_length"
    )
