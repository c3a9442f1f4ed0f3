"""``reference``: log-probs of every preference completion under the SFT policy, computed once.

Reads ``models/sft/``, ``data/preferences.jsonl`` (contract ``PREFERENCES``) and
``reference.*``; writes ``data/reference.jsonl`` (contract :data:`REFERENCE`), one row per
preferences row, in the same order::

    {"prompt_id": "train-17", "logps": [K floats], "n_tokens": [K ints]}

    python -m stages reference         # or: dvc repro reference

``logps[k]`` is log π_sft(completion_k | prompt) summed over the completion's tokens and
``n_tokens[k]`` their count, with the tokenisation and truncation of :mod:`stages.sequences`
(the same calls the alignment trainer makes, with the same ``max_length``), so every alignment
variant reads these numbers instead of running the SFT model again. All K completions of a row
are scored, paired or not (listwise losses use them all). Sequences are sorted by length and
batched (``reference.batch_size``) to keep padding small.
"""
from __future__ import annotations

import math
from pathlib import Path

import typer

from stages.common import StageError, load_params, param, write_jsonl
from stages.contracts import PREFERENCES, Contract, check_row, read_rows

SFT_DIR = Path("models/sft")
PREFERENCES_PATH = Path("data/preferences.jsonl")
REFERENCE_PATH = Path("data/reference.jsonl")


def _reference_check(row: dict) -> str | None:
    logps, n_tokens = row["logps"], row["n_tokens"]
    if not logps or len(logps) != len(n_tokens):
        return f"logps has {len(logps)} values and n_tokens {len(n_tokens)}; expected K each"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in logps):
        return "logps must hold finite numbers"
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in n_tokens):
        return "n_tokens must hold integers >= 0"
    return None


#: ``data/reference.jsonl``: per preferences row, the SFT log-prob (summed over completion
#: tokens) and token count of each of its K completions, in the preferences order.
REFERENCE = Contract("reference log-probs", {"prompt_id": str, "logps": list, "n_tokens": list},
                     _reference_check)


def reference_settings(params: dict) -> dict:
    """The checked ``reference.*`` settings."""
    section = params.get("reference")
    if not isinstance(section, dict):
        raise StageError("params: section 'reference' is missing")
    return {
        "batch_size": param(section, "reference.batch_size", int, lambda v: v >= 1,
                            "must be >= 1"),
        "max_length": param(section, "reference.max_length", int, lambda v: v >= 2,
                            "must be >= 2"),
    }


def reference_logprobs(model, tokenizer, prompts: list[str], completions: list[str], *,
                       batch_size: int, max_length: int,
                       progress: bool = True) -> tuple[list[float], list[int]]:
    """Summed completion log-probs and completion token counts for each (prompt, completion),
    in input order, via :func:`stages.sequences.encode_batch` / ``completion_logprobs``."""
    import torch
    from tqdm.auto import tqdm

    from stages.sequences import completion_logprobs, encode_batch

    n = len(prompts)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]  # characters: a cheap proxy
    order = sorted(range(n), key=lambda i: -lengths[i])
    logps, counts = [0.0] * n, [0] * n
    model.eval()
    with torch.inference_mode(), tqdm(total=n, desc="reference", unit="seq",
                                      disable=not progress) as bar:
        for start in range(0, n, batch_size):
            idx = order[start: start + batch_size]
            batch = encode_batch(tokenizer, [prompts[i] for i in idx],
                                 [completions[i] for i in idx], max_length=max_length)
            lp, nt = completion_logprobs(model, batch)
            for i, v, c in zip(idx, lp.float().cpu().tolist(), nt.cpu().tolist()):
                logps[i], counts[i] = float(v), int(c)
            bar.update(len(idx))
    return logps, counts


def reference_rows(model, tokenizer, rows: list[dict], settings: dict,
                   progress: bool = True) -> list[dict]:
    """REFERENCE rows for PREFERENCES rows, in the same order."""
    prompts = [row["prompt"] for row in rows for _ in row["completions"]]
    completions = [c for row in rows for c in row["completions"]]
    logps, counts = reference_logprobs(model, tokenizer, prompts, completions,
                                       batch_size=settings["batch_size"],
                                       max_length=settings["max_length"], progress=progress)
    out, start = [], 0
    for row in rows:
        stop = start + len(row["completions"])
        new = {"prompt_id": row["prompt_id"], "logps": logps[start:stop],
               "n_tokens": counts[start:stop]}
        out.append(check_row(new, REFERENCE, f"reference row for {row['prompt_id']}"))
        start = stop
    return out


def read_reference(path: str | Path, preferences: list[dict]) -> list[dict]:
    """Read ``data/reference.jsonl`` and assert it matches ``preferences`` row by row (same
    prompt ids in the same order, one value per completion)."""
    rows = read_rows(path, REFERENCE)
    if len(rows) != len(preferences):
        raise StageError(f"{path}: {len(rows)} rows for {len(preferences)} preferences rows "
                         f"(re-run the reference stage)")
    for n, (ref, pref) in enumerate(zip(rows, preferences), start=1):
        if ref["prompt_id"] != pref["prompt_id"] or len(ref["logps"]) != len(pref["completions"]):
            raise StageError(f"{path}:{n}: row {ref['prompt_id']!r} with {len(ref['logps'])} "
                             f"log-probs does not match preferences row {pref['prompt_id']!r} "
                             f"with {len(pref['completions'])} completions")
    return rows


def reference(params: dict, progress: bool = True) -> dict:
    """Run the stage on a params mapping; returns a summary."""
    from stages.generation import load_causal_lm

    settings = reference_settings(params)
    rows = read_rows(PREFERENCES_PATH, PREFERENCES)
    model, tokenizer = load_causal_lm(SFT_DIR)
    out = reference_rows(model, tokenizer, rows, settings, progress)
    write_jsonl(REFERENCE_PATH, out)
    counts = [c for r in out for c in r["n_tokens"]]
    return {"rows": len(out), "completions": len(counts),
            "mean_tokens": sum(counts) / len(counts),
            "mean_logp": sum(v for r in out for v in r["logps"]) / len(counts)}


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Compute the SFT log-probs of every preference completion, once for all variants."""
    s = reference(load_params(params))
    typer.echo(f"reference log-probs for {s['completions']} completions of {s['rows']} prompts: "
               f"mean {s['mean_logp']:.2f} over {s['mean_tokens']:.1f} tokens")
