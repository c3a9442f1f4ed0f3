"""Iterative (on-policy) DPO-family training: the settings of ``online.*`` and one round's compute.

Round r of variant v and run seed s (stage ``online-round``) starts from round r-1's policy
(round 0 is a copy of the SFT policy, stage ``online-init``), draws a fresh seeded set of train
prompts, samples K completions of each from that policy, scores them with the reward model,
pairs them (``online.round.pairs``), computes the reference log-probs once under the reference
policy (the SFT policy, or round r-1's with ``online.round.reference: previous``) and trains
with variant v's loss from round r-1's weights::

    cfg = read_round_config(params)                    # online.round
    prompts = round_prompts(train_prompts, cfg.prompts, seed, run_seed, r)
    rows, _ = sample_rows(policy, tokenizer, prompts, cfg.sample, sample_seed(run_seed, r))
    prefs, metrics = round_preferences(scored_rows, cfg.pairs, seed, r, where)
    trainer = round_trainer(policy, tokenizer, items, train_cfg, loss, out_dir, run, live_dir)
                                                       # stages.lib.online_training

The sampler, scorer, pair builder, reference pass and trainer are the offline stages' own
(:mod:`stages.lib.sampling`, :mod:`stages.lib.scored`, :mod:`stages.lib.preferences`,
:mod:`stages.lib.sequences`, :mod:`stages.lib.align`). A round's policy is written to
``models/aligned/online-<v>-r<r>/seed-<s>``, so ``evaluate`` measures it as any variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.lib import paths
from stages.lib.common import seeded_subset
from stages.lib.config import (
    PairsConfig,
    SampleConfig,
    param,
    positive_int,
    read_mapping,
)
from stages.lib.preferences import build_preferences

#: Where the reference log-probs of a round come from.
REFERENCES = ("sft", "previous")


@dataclass(frozen=True)
class RoundSpec:
    """One entry of ``online.rounds``: the round and the round it starts from."""

    round: int = param("the round number (1, 2, ...)", check=positive_int, must=">= 1")
    start: int = param("the round it starts from (round - 1; 0 = the SFT policy)")


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """``online.round``: the settings every round shares."""

    prompts: int = param(
        "train prompts drawn afresh (seeded) for each round", check=positive_int, must=">= 1"
    )
    reference: str = param(
        "reference policy of the round's loss: sft (fixed) or previous (round r-1's policy)",
        "sft",
        check=lambda v: v in REFERENCES,
        must=f"one of {', '.join(REFERENCES)}",
    )
    reference_batch_size: int = param(
        "sequences per reference forward pass", 64, check=positive_int, must=">= 1"
    )
    sample: SampleConfig = param("K completions per prompt from the round's starting policy")
    pairs: PairsConfig = param("preference pairs of the round's scored completions")


def read_round_config(params: dict) -> RoundConfig:
    """``online.round`` as a :class:`RoundConfig` (one-line errors naming ``online.round.<key>``)."""
    online = online_section(params)
    if "round" not in online:
        raise ValueError("params: online.round: is missing (the settings every round shares)")
    return read_mapping(online["round"], "online.round", RoundConfig)


def online_section(params: dict) -> dict:
    """The ``online`` section (a mapping)."""
    if "online" not in params:
        raise ValueError("params: section 'online' is missing")
    online = params["online"]
    if not isinstance(online, dict):
        raise ValueError(f"params: online: must be a mapping, got {online!r}")
    return online


def read_rounds(params: dict) -> list[RoundSpec]:
    """``online.rounds``: R >= 1 entries ``{round: r, start: r - 1}`` in order. The start is
    spelt out because dvc.yaml names round r-1's policy as a dep of round r, and DVC's
    interpolation has no arithmetic."""
    rounds = online_section(params).get("rounds")
    if not isinstance(rounds, list) or not rounds:
        raise ValueError(
            f"params: online.rounds: must list >= 1 rounds ({{round: 1, start: 0}}, ...), "
            f"got {rounds!r}"
        )
    specs = [read_mapping(r, f"online.rounds[{i}]", RoundSpec) for i, r in enumerate(rounds)]
    for i, spec in enumerate(specs):
        if spec.round != i + 1 or spec.start != i:
            raise ValueError(
                f"params: online.rounds[{i}]: must be {{round: {i + 1}, start: {i}}} (rounds in "
                f"order, each from the previous one), got {{round: {spec.round}, start: "
                f"{spec.start}}}"
            )
    return specs


def read_online_variants(params: dict, known: list[str]) -> list[str]:
    """``online.variants``: distinct names of ``align.variants`` (``known``), [] = none."""
    names = online_section(params).get("variants")
    names = [] if names is None else names
    if not isinstance(names, list) or len(set(map(str, names))) != len(names):
        raise ValueError(
            f"params: online.variants: must be a list of distinct names, got {names!r}"
        )
    for name in names:
        if name not in known:
            raise ValueError(
                f"params: online.variants: {name!r} is not a variant of align.variants "
                f"({', '.join(known)})"
            )
    return list(names)


def policy_name(variant: str, round_: int) -> str:
    """``online-<variant>-r<round>``: the policy name of a round (``models/aligned/<name>``)."""
    return f"online-{variant}-r{round_}"


def round_model(variant: str, seed: int, round_: int) -> Path:
    """``models/aligned/online-<v>-r<r>/seed-<s>``: round r's policy (r = 0: the SFT copy)."""
    return paths.aligned_model(policy_name(variant, round_), seed)


def round_data(variant: str, seed: int, round_: int) -> Path:
    """``data/online/<v>/seed-<s>/round-<r>``: a round's preferences and reference log-probs."""
    return Path("data/online") / variant / paths.run_name(seed) / f"round-{round_}"


def round_metrics(variant: str, seed: int, round_: int) -> Path:
    """``metrics/online/<v>/seed-<s>/round-<r>.json``: a round's sampling and training metrics."""
    return paths.METRICS_DIR / "online" / variant / paths.run_name(seed) / f"round-{round_}.json"


def round_logs(variant: str, seed: int, round_: int) -> Path:
    """``logs/online/<v>/seed-<s>/round-<r>``: a round's DVCLive training curves."""
    return paths.LOGS_DIR / "online" / variant / paths.run_name(seed) / f"round-{round_}"


def round_prompts(prompts: list[dict], n: int, seed: int, run_seed: int, round_: int) -> list[dict]:
    """``n`` train prompts drawn afresh for round ``round_`` (seeded by the data seed, the run
    seed and the round; the same draw for every variant, so variants are paired), in order."""
    if n > len(prompts):
        raise ValueError(
            f"params: online.round.prompts: must be <= the {len(prompts)} train prompts, got {n}"
        )
    return seeded_subset(prompts, n, f"{seed}-online-{run_seed}-round-{round_}")


def sample_seed(run_seed: int, round_: int) -> int:
    """The sampling seed of a round (distinct per run seed and round)."""
    return run_seed * 1000 + round_


def round_preferences(
    scored: list[dict], cfg: PairsConfig, seed: int, round_: int, where: str
) -> tuple[list[dict], dict]:
    """PREFERENCES rows and pair metrics of a round's scored rows (pair draws seeded per round);
    a round without any train pair (every prompt's completions tie) is a ``ValueError``."""
    rows, metrics = build_preferences(scored, cfg, seed * 10**6 + round_)
    if not rows or metrics["train"]["pairs"] == 0:
        raise ValueError(
            f"{where}: round {round_}: no preference pair in split 'train' ({metrics['prompts']} "
            f"prompts, {metrics['prompts_without_pairs']} whose completions all tie): raise "
            f"online.round.sample.n_per_prompt or temperature, or lower online.round.pairs."
            f"val_fraction"
        )
    return rows, metrics
