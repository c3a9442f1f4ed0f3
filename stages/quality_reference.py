"""``quality-reference``: the held-out human text every policy's samples are measured against,
and the feature spaces they are measured in, built once per profile (DESIGN.md §6a, issue #28).

Reads ``seed``, ``quality.*``, ``data.prompt_words`` and ``evaluate.max_new_tokens`` from
params.yaml, ``data/prepared/{train,test}.jsonl`` and ``models/sft`` (its tokenizer cuts the
reviews; the ``hidden`` space is its mean last hidden state); writes::

    data/quality/reference.jsonl   per reference set (quality.references: all, positive): a
                                   seeded draw of quality.reference_size test reviews, each
                                   cut to a sample's length (prompt + max_new_tokens tokens)
    data/quality/spaces.npz        the TF-IDF + SVD fitted on the train reviews (a seeded
                                   subset of quality.tfidf_fit_texts), and every reference set
                                   embedded in every space with its k-NN radii

    python -m stages quality-reference        # or: dvc repro quality-reference

Every ``evaluate`` run then embeds its samples in the same spaces and measures precision,
recall, density, coverage and MAUVE against each reference set, the Vendi score of the samples
and their self-BLEU (:mod:`stages.lib.quality_reference`). Nothing here depends on a policy
other than the SFT one, so the reference is the same for every policy and seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.lib import paths
from stages.lib.common import atomic_path, seeded_subset, write_jsonl
from stages.lib.config import DataConfig, EvaluateConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREPARED, read_rows
from stages.lib.quality import QualityConfig
from stages.lib.quality_reference import build_spaces, reference_rows


def quality_reference(params: dict) -> dict:
    """Run the stage; returns what it wrote (set sizes and the spaces' widths)."""
    cfg = read_section(params, "quality", QualityConfig)
    data = read_section(params, "data", DataConfig)
    max_new_tokens = read_section(params, "evaluate", EvaluateConfig).max_new_tokens
    seed = read_seed(params)
    if not paths.SFT_DIR.is_dir():
        raise FileNotFoundError(f"{paths.SFT_DIR}: SFT policy not found (run the sft stage)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.SFT_DIR)
    test = read_rows(paths.PREPARED_TEST, PREPARED)
    rows = reference_rows(
        test,
        cfg,
        prompt_words=data.prompt_words,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        seed=seed,
    )
    train = [r["text"] for r in read_rows(paths.PREPARED_TRAIN, PREPARED)]
    fit = seeded_subset(train, cfg.tfidf_fit_texts, f"{seed}-quality-tfidf")
    arrays = build_spaces(cfg, rows, fit, paths.SFT_DIR, seed)
    write_jsonl(paths.QUALITY_REFERENCE, rows)
    with atomic_path(paths.QUALITY_SPACES) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    widths = {s: int(arrays[f"{s}/{cfg.references[0]}/features"].shape[1]) for s in cfg.features}
    return {"sets": {r: cfg.reference_size for r in cfg.references}, "widths": widths}


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Draw the reference sets of held-out reviews; fit and cache the feature spaces."""
    out = quality_reference(load_params(params))
    sets = ", ".join(f"{k} ({v})" for k, v in out["sets"].items())
    spaces = ", ".join(f"{k} ({v} dims)" for k, v in out["widths"].items())
    typer.echo(
        f"quality-reference: sets {sets}; spaces {spaces} -> {paths.QUALITY_REFERENCE}, "
        f"{paths.QUALITY_SPACES}"
    )
