"""``online-round``: one round of iterative (on-policy) DPO-family training for one variant and seed.

    python -m stages online-round dpo --seed 0 --round 2
    dvc repro online-round@dpo-0-from1        # the matrix online.variants x seeds x online.rounds

Round r starts from round r-1's policy ``models/aligned/online-<v>-r<r-1>/seed-<s>`` (round 0:
the SFT copy of ``online-init``), draws ``online.round.prompts`` train prompts afresh, samples
``online.round.sample`` completions of each from that policy, scores them with ``models/reward``
(``reward.score``; the gold scorer too for ``data.source: synthetic``), pairs them
(``online.round.pairs``), computes the reference log-probs once (``online.round.reference``: the
SFT policy, or round r-1's) and trains round r from round r-1's weights with the variant's loss
and training settings (``align.common`` + ``align.variants.<v>``; ``checkpoints`` and ``pairs``
are not used here). The compute is the offline stages' (:mod:`stages.lib.online`).

Writes ``models/aligned/online-<v>-r<r>/seed-<s>`` (atomically; ``evaluate online-<v>-r<r>``
measures it like any variant), ``data/online/<v>/seed-<s>/round-<r>/{preferences,reference}.jsonl``,
``metrics/online/<v>/seed-<s>/round-<r>.json``, the DVCLive curves ``logs/online/<v>/seed-<s>/
round-<r>`` and the wall times ``logs/timings/online-<v>-<s>-r<r>.json`` (git-ignored).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from statistics import fmean

import typer

from stages.lib import paths
from stages.lib.align import TRAIN_KEYS, TrainConfig, build_items
from stages.lib.common import atomic_path, seed_everything, write_json, write_jsonl, write_timings
from stages.lib.config import (
    DataConfig,
    RewardConfig,
    load_params,
    read_mapping,
    read_section,
    read_seed,
    run_seed,
)
from stages.lib.contracts import PROMPTS, check_eos, read_rows
from stages.lib.modeling import load_causal_lm
from stages.lib.online import (
    read_round_config,
    round_data,
    round_logs,
    round_metrics,
    round_model,
    round_preferences,
    round_prompts,
    sample_seed,
)
from stages.lib.online_training import round_trainer
from stages.lib.sampling import sample_rows
from stages.lib.scored import score_rows
from stages.lib.scoring import load_reward_model, score_texts
from stages.lib.sequences import reference_rows
from stages.lib.synthetic import gold_score
from stages.lib.variants import read_variant


def train_config(params: dict, variant: str, seed: int) -> tuple[TrainConfig, object]:
    """The variant's training settings (training seed ``seed``; no checkpoints, no re-pairing)
    and pair loss, read as ``align`` reads them (errors name the key where it was set)."""
    v = read_variant(params, variant)
    v.check_keys(TRAIN_KEYS)
    settings = {k: val for k, val in v.settings.items() if k in TRAIN_KEYS}
    settings["seed"] = seed
    cfg = read_mapping(
        settings, "align.common", TrainConfig, where=partial(v.where, common_keys=TRAIN_KEYS)
    )
    return dataclasses.replace(cfg, checkpoints=None, pairs=None), v.loss()


def online_round(
    params: dict, variant: str, seed: int | None, round_: int, progress: bool = True
) -> dict:
    """Validate, sample, score, pair, reference and train round ``round_``; write its outputs
    and return its metrics (paths relative to the repository root)."""
    start = time.time()
    seed = run_seed(params, seed)
    where = f"online-round@{variant}-{seed}-r{round_}"
    if round_ < 1:
        raise ValueError(
            f"{where}: --round: must be >= 1 (round 0 is the SFT policy), got {round_}"
        )
    cfg, data_seed = read_round_config(params), read_seed(params)
    train_cfg, loss = train_config(params, variant, seed)
    score_kind = read_section(params, "reward", RewardConfig).score
    source = read_section(params, "data", DataConfig).source
    if not paths.REWARD_DIR.is_dir():
        raise FileNotFoundError(
            f"{paths.REWARD_DIR}: reward model not found (run the reward stage)"
        )
    start_dir = round_model(variant, seed, round_ - 1)
    if not (start_dir / "config.json").is_file():
        before = "online-init" if round_ == 1 else f"online-round for round {round_ - 1}"
        raise FileNotFoundError(
            f"{start_dir}: round {round_ - 1}'s policy not found (run {before})"
        )
    prompts = round_prompts(
        read_rows(paths.TRAIN_PROMPTS, PROMPTS), cfg.prompts, data_seed, seed, round_
    )
    seed_everything(seed)
    policy, tokenizer = load_causal_lm(start_dir)
    samples, gen = sample_rows(
        policy, tokenizer, prompts, cfg.sample, sample_seed(seed, round_), progress
    )
    t_sample = time.time()
    reward_model, reward_tok = load_reward_model(str(paths.REWARD_DIR))
    scored = score_rows(
        samples,
        lambda texts: score_texts(reward_model, reward_tok, texts, score=score_kind),
        gold_score if source == "synthetic" else None,
    )
    prefs, pair_metrics = round_preferences(scored, cfg.pairs, data_seed, round_, where)
    data = round_data(variant, seed, round_)
    check_eos(prefs, data / "preferences.jsonl", tokenizer)
    ref_model = policy if cfg.reference == "previous" else load_causal_lm(paths.SFT_DIR)[0]
    refs = reference_rows(
        ref_model,
        tokenizer,
        prefs,
        batch_size=cfg.reference_batch_size,
        max_length=train_cfg.max_length,
        progress=progress,
    )
    del ref_model
    t_reference = time.time()
    items = build_items(prefs, refs)
    seed_everything(seed)  # training starts from the same state whatever came before
    run = f"online-{variant}-{seed}-r{round_}"
    with atomic_path(round_model(variant, seed, round_)) as tmp:
        trainer = round_trainer(
            policy.train(),
            tokenizer,
            items,
            train_cfg,
            loss,
            tmp,
            run,
            round_logs(variant, seed, round_),
        )
        result = trainer.train()
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        if trainer.eval_dataset is not None and (
            not evals or evals[-1]["step"] != trainer.state.global_step
        ):
            trainer.evaluate()
            evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        trainer.raise_if_nonfinite()
        trainer.save_model(str(tmp))
    write_jsonl(data / "preferences.jsonl", prefs)
    write_jsonl(data / "reference.jsonl", refs)
    rewards = [r for row in scored for r in row["rewards"]]
    metrics = {
        "variant": variant,
        "round": round_,
        "reference": cfg.reference,
        "prompts": len(prompts),
        "completions": len(rewards),
        "mean_reward": round(fmean(rewards), 6),
        "mean_tokens": round(gen.n_tokens / len(rewards), 4),
        **(
            {"mean_gold": round(fmean(g for r in scored for g in r["gold"]), 6)}
            if source == "synthetic"
            else {}
        ),
        "pairs": {k: pair_metrics[k] for k in ("pairs", "prompts_without_pairs", "train", "val")},
        "mean_reward_margin": pair_metrics["mean_reward_margin"],
        "steps": result.global_step,
        "train_loss_mean": result.training_loss,
        "val_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "val_margin": evals[-1]["eval_margin"] if evals else None,
    }
    write_json(round_metrics(variant, seed, round_), metrics)
    end = time.time()
    timings = {
        "sample_s": t_sample - start,
        "score_pairs_reference_s": t_reference - t_sample,
        "train_s": end - t_reference,
        "wall_time_s": end - start,
        "sample_tokens_per_s": gen.tokens_per_second,
    }
    write_timings(run, timings)
    metrics["timings"] = timings
    return metrics


def main(
    variant: str = typer.Argument(..., help="A variant name of align.variants (its loss)."),
    round_: int = typer.Option(..., "--round", help="The round r >= 1 (starts from round r-1)."),
    seed: int | None = typer.Option(
        None, "--seed", min=0, help="Run seed (default: the first of `seeds`)."
    ),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file to read."),
) -> None:
    """Train one on-policy round of a DPO-family variant from the previous round's policy."""
    values = load_params(params)
    m = online_round(values, variant, run_seed(values, seed), round_)
    t = m["timings"]
    typer.echo(
        f"online-round {variant} seed {m.get('seed', seed)} round {m['round']}: mean reward "
        f"{m['mean_reward']:.3f} over {m['completions']} samples, {m['pairs']['pairs']} pairs, "
        f"{m['steps']} steps, val accuracy {m['val_accuracy']}; wall {t['wall_time_s']:.1f} s "
        f"(sample {t['sample_s']:.1f}, score+pairs+reference {t['score_pairs_reference_s']:.1f}, "
        f"train {t['train_s']:.1f})"
    )
