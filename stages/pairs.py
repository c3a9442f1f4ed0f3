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

from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import typer

from stages.lib import paths
from stages.lib.common import write_json, write_jsonl
from stages.lib.config import PairsConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREFERENCES, SCORED, check_row, read_rows
from stages.lib.pairs import hold_out_by_text, make_pairs, pair_rng
from stages.lib.trl_format import difference_counts, pair_records, write_pairs


def validation_ids(prompts: Sequence[tuple[str, str]], val_fraction: float, seed: int) -> set[str]:
    """The ids of about ``round(val_fraction * n)`` of the ``(prompt_id, prompt)`` pairs (at
    least one when ``val_fraction`` > 0), held out for validation *by text*
    (:func:`stages.lib.pairs.hold_out_by_text` under the seed string ``<seed>-pairs-val``), so
    no validation text is also a training text."""
    return hold_out_by_text(prompts, val_fraction, f"{seed}-pairs-val", "pairs.val_fraction")


def build_preferences(rows: list[dict], cfg: PairsConfig, seed: int) -> tuple[list[dict], dict]:
    """PREFERENCES rows (scored rows in order, prompts without pairs left out) and metrics."""
    val = validation_ids([(r["prompt_id"], r["prompt"]) for r in rows], cfg.val_fraction, seed)
    out, picked_rewards, margins, gold_agree, gold_ties = [], [], [], [], []
    chosen, rejected = [], []
    for n, row in enumerate(rows, start=1):
        rewards = row["rewards"]
        if cfg.strategy == "rso" and cfg.rso.n_select >= len(rewards):
            raise ValueError(
                f"params: pairs.rso.n_select: must be < the {len(rewards)} "
                f"completions of scored row {n} ({row['prompt_id']}), got "
                f"{cfg.rso.n_select}: at n_select = K rso accepts every candidate and selects "
                f"nothing; raise sample.n_per_prompt"
            )
        rng = pair_rng(seed, row["prompt_id"])
        pairs, picked = make_pairs(rewards, cfg, rng)
        picked_rewards.extend(rewards[i] for i in picked)
        if not pairs:
            continue
        for w, l in pairs:
            margins.append(rewards[w] - rewards[l])
            chosen.append(rewards[w])
            rejected.append(rewards[l])
            if "gold" in row:
                gold_agree.append(row["gold"][w] > row["gold"][l])
                gold_ties.append(row["gold"][w] == row["gold"][l])
        new = {
            **row,
            "pairs": [list(p) for p in pairs],
            "split": "val" if row["prompt_id"] in val else "train",
        }
        out.append(check_row(new, PREFERENCES, f"preferences row for {row['prompt_id']}"))
    pool = [r for row in rows for r in row["rewards"]]
    texts = {split: set() for split in ("train", "val")}  # distinct normalised prompt texts
    for r in out:
        texts[r["split"]].add(" ".join(r["prompt"].split()))
    metrics = {
        "prompts": len(rows),
        "prompts_with_pairs": len(out),
        "prompts_without_pairs": len(rows) - len(out),
        "pairs": len(margins),
        "pairs_per_prompt": round(len(margins) / len(out), 4) if out else 0.0,
        **{
            split: {
                "prompts": sum(r["split"] == split for r in out),
                "pairs": sum(len(r["pairs"]) for r in out if r["split"] == split),
            }
            for split in ("train", "val")
        },
        "prompt_texts": {split: len(found) for split, found in texts.items()},
        "val_texts_in_train": len(texts["val"] & texts["train"]),
        "mean_reward_margin": round(fmean(margins), 6) if margins else 0.0,
        "mean_reward_chosen": round(fmean(chosen), 6) if chosen else 0.0,
        "mean_reward_rejected": round(fmean(rejected), 6) if rejected else 0.0,
        "mean_reward_pool": round(fmean(pool), 6),
    }
    if cfg.strategy == "rso":
        metrics["mean_reward_picked"] = round(fmean(picked_rewards), 6)
    if gold_agree:
        metrics["gold_agreement"] = round(fmean(gold_agree), 6)
        metrics["gold_ties"] = round(fmean(gold_ties), 6)
    return out, metrics


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
