"""``ingest``: start from your own preference dataset instead of ``sample`` -> ``score`` ->
``pairs`` (the ``byo/`` pipeline's first stage; README, "Bring your own preferences and
policies").

Reads ``ingest.*``, ``pairs.*`` (``strategy`` for ranked rows, ``val_fraction``), ``sft.model``
(whose tokenizer tokenises the completions and whose chat template renders conversational
rows; the ``sft`` stage then keeps or fine-tunes that model, so ``models/sft`` has the same
tokenizer) and ``seed``; the dataset ``ingest.source``: trl's standard ``prompt``/``chosen``/
``rejected`` text, its conversational form (lists of ``{"role", "content"}`` messages, rendered
with ``ingest.chat_template``: the tokenizer's chat template or a plain one; the last assistant
turn is the completion), its implicit-prompt forms (``chosen``/``rejected`` only: the prompt is
their common prefix, as trl extracts it) or the ranked ``prompt``/``completions``/``rewards``
(:mod:`stages.lib.ingest_sources`, :mod:`stages.lib.ingest_formats`); trl's unpaired
``prompt``/``completion``/``label`` is refused. A hub dataset id is loaded here, but not under
DVC, where the source is a tracked dependency: snapshot it first (docs/byo.md). Writes what the
replaced stages would have written, under the working directory (``byo/`` under
``dvc repro byo/dvc.yaml``)::

    data/preferences.jsonl         PREFERENCES rows: completions tokenised + EOS, pairs, split
    data/prompts/{train,eval}.jsonl   PROMPTS: train-side prompts; held-out eval prompts
    data/prepared/{train,test}.jsonl  PREPARED: prompt + preferred completion (for sft)
    data/pairs-trl/                the pairs in trl's format (JSON Lines: train.jsonl, test.jsonl)
    metrics/ingest.json            rows, pairs, prompts per split; where eval prompts come from

    python -m stages ingest            # or, from the repository root: dvc repro byo/dvc.yaml

How rows become preference rows, and where the eval prompts come from:
:mod:`stages.lib.ingest`. Every row is checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import write_json, write_jsonl
from stages.lib.config import TINY, PairsConfig, load_params, read_section, read_seed
from stages.lib.ingest import IngestConfig, Outputs, build_outputs
from stages.lib.ingest_sources import load_tables
from stages.lib.modeling import load_tokenizer
from stages.lib.trl_format import save_pairs


def policy_name(params: dict) -> str:
    """``sft.model``: the pretrained policy whose tokenizer ingest uses (never ``tiny``, whose
    tokenizer the sft stage would train only after ingest)."""
    sft = params.get("sft")
    model = sft.get("model") if isinstance(sft, dict) else None
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"params: sft.model: must be a hub id or a local folder, got {model!r}")
    if model == TINY:
        raise ValueError(
            "params: sft.model: must be a pretrained policy (a hub id or a local folder) for "
            "ingest, whose tokenizer tokenises the preferences; 'tiny' trains its own "
            "tokenizer after ingest"
        )
    return model


def ingest(params: dict) -> Outputs:
    """Run the stage on a params mapping (paths relative to the cwd); returns what it wrote."""
    cfg = read_section(params, "ingest", IngestConfig)
    pairs_cfg, seed = read_section(params, "pairs", PairsConfig), read_seed(params)
    tokenizer = load_tokenizer(policy_name(params), "params: sft.model")
    out = build_outputs(load_tables(cfg.source, "ingest.source"), cfg, pairs_cfg, tokenizer, seed)
    write_jsonl(paths.PREFERENCES, out.preferences)
    write_jsonl(paths.TRAIN_PROMPTS, out.train_prompts)
    write_jsonl(paths.EVAL_PROMPTS, out.eval_prompts)
    write_jsonl(paths.PREPARED_TRAIN, out.prepared["train"])
    write_jsonl(paths.PREPARED_TEST, out.prepared["test"])
    save_pairs(out.preferences, paths.PAIRS_TRL, tokenizer)
    write_json(paths.metrics_file("ingest"), out.metrics)
    return out


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Import a preference dataset (trl's formats or ranked) in place of sample, score, pairs."""
    m = ingest(load_params(params)).metrics
    template = f" (chat template: {m['chat_template']})" if "chat_template" in m else ""
    typer.echo(
        f"{m['format']} rows{template}: {m['train']['pairs']} train / {m['val']['pairs']} val pairs from "
        f"{m['train']['prompts'] + m['val']['prompts']} rows ({m['rows_without_pairs']} without "
        f"a pair), {m['eval_prompts']} eval prompts from {m['eval_source']} -> "
        f"{paths.PREFERENCES}, {paths.PAIRS_TRL}"
    )
