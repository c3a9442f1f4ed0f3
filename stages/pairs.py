"""``pairs``: turn K scored completions per prompt into preference pairs (preferred first).

Reads ``data/scored.jsonl`` (contract ``SCORED``), ``seed`` and ``pairs.*``; writes
``data/preferences.jsonl`` (contract ``PREFERENCES``: each scored row, its ``completion_ids`` and
``finished`` included, plus ``"pairs": [[w, l], ...]`` indices into its completions, w preferred,
and ``"split"``: ``train`` or ``val``), the same pairs in trl's preference format,
``data/pairs-trl/{train,test}.jsonl`` (``prompt``/``chosen``/``rejected`` texts and
``trl_differs``, where trl's tokens of the pair differ from ours and why, from the SFT policy's
tokenizer in ``models/sft``; ``test`` = our ``val``: :mod:`stages.lib.trl_format`), and
``metrics/pairs.json`` (``trl_differs``: how many pairs trl tokenises differently, by reason)::

    python -m stages pairs             # or: dvc repro pairs

The strategies (``pairs.strategy``: first_round, tournament, best_worst, all, rso) are pure
functions in :mod:`stages.lib.pairs`, one ``random.Random`` per prompt seeded by
``"<seed>-pairs-<prompt_id>"``. For ``rso`` get more candidates from ``sample.n_per_prompt``
(e.g. 16).

In every strategy a pair of equal rewards is skipped. Prompts left without any pair are kept out
of the output and counted in the metrics. ``pairs.val_fraction`` of the prompts (drawn by
prompt, seeded, before any prompt is dropped, so the same prompts are held out whatever the
strategy or reward model) get ``split: "val"``; all their pairs go with them. The draw is by
prompt *text*: prompts that share a text (two reviews with the same opening) fall on the same
side, so no validation prompt text is a training prompt text (``val_texts_in_train`` in the
metrics is 0).
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import write_json, write_jsonl
from stages.lib.config import PairsConfig, load_params, read_section, read_seed
from stages.lib.contracts import SCORED, read_rows
from stages.lib.preferences import build_preferences
from stages.lib.trl_format import difference_counts, pair_records, write_pairs


def make_preference_file(params: dict) -> dict:
    """Run the stage on a params mapping; returns the metrics it wrote."""
    cfg, seed = read_section(params, "pairs", PairsConfig), read_seed(params)
    rows = read_rows(paths.SCORED, SCORED)
    out, metrics = build_preferences(rows, cfg, seed)
    if not out:
        raise ValueError(f"{paths.SCORED}: no prompt gives a preference pair (all rewards tied)")
    if metrics["train"]["pairs"] == 0:
        raise ValueError(f"{paths.SCORED}: no train pair left (lower pairs.val_fraction)")
    if not paths.SFT_DIR.is_dir():
        raise FileNotFoundError(
            f"{paths.SFT_DIR}: SFT policy not found (run the sft stage): its tokenizer says "
            f"where trl tokenises the exported pairs differently"
        )
    from transformers import AutoTokenizer  # the stage's one use of transformers

    records = pair_records(out, AutoTokenizer.from_pretrained(paths.SFT_DIR))
    metrics["trl_differs"] = difference_counts(records)
    write_jsonl(paths.PREFERENCES, out)
    write_pairs(records, paths.PAIRS_TRL)
    write_json(paths.metrics_file("pairs"), metrics)
    return metrics


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Build preference pairs from the scored completions."""
    m = make_preference_file(load_params(params))
    gold = f", gold agreement {m['gold_agreement']:.1%}" if "gold_agreement" in m else ""
    typer.echo(
        f"{m['pairs']} pairs from {m['prompts_with_pairs']} prompts "
        f"({m['prompts_without_pairs']} without a pair; {m['train']['pairs']} train / "
        f"{m['val']['pairs']} val pairs), mean margin {m['mean_reward_margin']:.3f}{gold}; "
        f"{m['trl_differs']['boundary']} pairs whose prompt end trl moves into the completions"
    )
