"""``online-rl``: the online RL baseline, trl's ``RLOOTrainer`` with our reward, one KL setting, one seed.

    python -m stages online-rl kl0_05 --seed 0
    dvc repro online-rl@kl0_05-0              # the matrix online.rl_settings x seeds

From the SFT policy on ``online.rl.prompts`` train prompts (a seeded draw, the same for every
setting), ``online.rl.steps`` RLOO steps of K = ``online.rl.n_per_prompt`` samples per prompt, the
reward ``reward.score`` of ``models/reward`` on prompt + completion (the scorer of ``score`` and
``evaluate``), the KL coefficient (trl's ``beta``) ``online.rl_settings.<setting>`` (>= 0) against
the SFT policy. trl is used as shipped (:mod:`stages.lib.rl`). Writes
``models/aligned/rloo-<setting>/seed-<s>`` (atomically; ``evaluate rloo-<setting>`` measures it),
``metrics/online-rl/<setting>/seed-<s>.json``, DVCLive curves ``logs/online-rl/<setting>/seed-<s>``
and wall times ``logs/timings/online-rl-<setting>-<s>.json`` (git-ignored).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import atomic_path, seed_everything, seeded_subset, write_json, write_timings
from stages.lib.config import RewardConfig, load_params, read_section, read_seed, run_seed
from stages.lib.contracts import PROMPTS, read_rows
from stages.lib.rl import (
    read_kl_coef,
    read_rl_config,
    reward_function,
    rl_logs,
    rl_model,
    rloo_trainer,
)
from stages.lib.scoring import load_reward_model


def online_rl(params: dict, setting: str, seed: int | None = None) -> dict:
    """Validate, run RLOO for one setting and seed, write the policy and metrics; returns them."""
    start = time.time()
    seed = run_seed(params, seed)
    cfg, kl_coef = read_rl_config(params), read_kl_coef(params, setting)
    score = read_section(params, "reward", RewardConfig).score
    if not (paths.REWARD_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"{paths.REWARD_DIR}: reward model not found: RLOO needs it as its reward function "
            f"(run the reward stage)"
        )
    if not (paths.SFT_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{paths.SFT_DIR}: SFT policy not found (run the sft stage)")
    rows = read_rows(paths.TRAIN_PROMPTS, PROMPTS)
    if cfg.prompts > len(rows):
        raise ValueError(
            f"params: online.rl.prompts: must be <= the {len(rows)} train prompts, got {cfg.prompts}"
        )
    prompts = [
        r["prompt"] for r in seeded_subset(rows, cfg.prompts, f"{read_seed(params)}-online-rl")
    ]
    model, tokenizer = load_reward_model(str(paths.REWARD_DIR))
    seed_everything(seed)
    with atomic_path(rl_model(setting, seed)) as tmp:
        trainer = rloo_trainer(
            paths.SFT_DIR,
            prompts,
            reward_function(model, tokenizer, score),
            cfg,
            kl_coef,
            seed,
            tmp,
            rl_logs(setting, seed),
        )
        result = trainer.train()
        trainer.save_model(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
    logs = [h for h in trainer.state.log_history if "reward" in h]
    last = logs[-1] if logs else {}
    metrics = {
        "setting": setting,
        "kl_coef": kl_coef,
        "steps": result.global_step,
        "prompts": len(prompts),
        "first_reward": logs[0]["reward"] if logs else None,
        "last_reward": last.get("reward"),
        "last_kl": last.get("kl"),
        "train_loss_mean": result.training_loss,
    }
    write_json(paths.METRICS_DIR / "online-rl" / setting / f"{paths.run_name(seed)}.json", metrics)
    timings = {
        "wall_time_s": time.time() - start,
        "train_runtime_s": result.metrics.get("train_runtime", 0.0),
    }
    write_timings(f"online-rl-{setting}-{seed}", timings)
    return {**metrics, "timings": timings}


def main(
    setting: str = typer.Argument(..., help="A key of online.rl_settings (its KL coefficient)."),
    seed: int | None = typer.Option(
        None, "--seed", min=0, help="Run seed (default: the first of `seeds`)."
    ),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file to read."),
) -> None:
    """Run trl's RLOO from the SFT policy with the reward model, one KL setting and seed."""
    m = online_rl(load_params(params), setting, seed)
    typer.echo(
        f"online-rl {setting}: {m['steps']} steps, reward {m['first_reward']} -> {m['last_reward']}, "
        f"kl {m['last_kl']}; wall {m['timings']['wall_time_s']:.1f} s"
    )
