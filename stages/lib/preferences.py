"""Preference rows from scored rows: the configured pair strategy per prompt (seeded per prompt)
and the seeded validation split by prompt text, with the pair metrics; shared by ``pairs`` and
``online-round``::

    rows, metrics = build_preferences(scored_rows, PairsConfig(...), seed)
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from stages.lib.config import PairsConfig
from stages.lib.contracts import PREFERENCES, check_row
from stages.lib.pairs import hold_out_by_text, make_pairs, pair_rng


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
