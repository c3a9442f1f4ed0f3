"""The online RL baseline: trl's ``RLOOTrainer`` as trl ships it, with the project's reward.

RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024) rather than GRPO: it samples K completions
per prompt like our offline pipeline, its baseline is the mean reward of the other K-1 (no
per-group std normalisation, which GRPO adds and which rescales the reward per prompt), and its
KL penalty ``beta`` enters the reward, i.e. it optimises the KL-regularised objective whose
frontier the offline families are compared on (matched KL to the SFT policy)::

    cfg = read_rl_config(params)                               # online.rl
    reward = reward_function(model, tokenizer, "logit")         # reward.score on prompt + completion
    trainer = rloo_trainer(policy_dir, prompts, reward, cfg, kl_coef, seed, out_dir, live_dir)
    trainer.train()

The reward function scores ``prompt + completion`` with :func:`stages.lib.scoring.score_texts`,
exactly as ``score`` and ``evaluate`` do; the reference policy is the SFT policy trl loads itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from stages.lib import paths
from stages.lib.config import param, positive_finite, positive_int, read_mapping

#: A setting's name: a DVC matrix key and a folder name (no dots).
SETTING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class RLConfig:
    """``online.rl``: what every RLOO run shares (the KL coefficient is per setting)."""

    prompts: int = param(
        "train prompts (a seeded draw, the same for every setting)", check=positive_int, must=">= 1"
    )
    steps: int = param("optimizer steps", check=positive_int, must=">= 1")
    prompts_per_step: int = param("prompts per optimizer step", check=positive_int, must=">= 1")
    n_per_prompt: int = param(
        "K completions per prompt (the leave-one-out group)", check=lambda v: v >= 2, must=">= 2"
    )
    max_new_tokens: int = param("completion length cap in tokens", check=positive_int, must=">= 1")
    temperature: float = param("sampling temperature", check=positive_finite, must="> 0")
    learning_rate: float = param("peak learning rate", check=positive_finite, must="> 0")
    logging_steps: int = param("log every N steps", 1, check=positive_int, must=">= 1")


def read_rl_config(params: dict) -> RLConfig:
    """``online.rl`` as an :class:`RLConfig`."""
    online = params.get("online")
    if not isinstance(online, dict) or "rl" not in online:
        raise ValueError("params: online.rl: is missing (the RLOO settings)")
    return read_mapping(online["rl"], "online.rl", RLConfig)


def read_kl_coef(params: dict, setting: str) -> float:
    """``online.rl_settings.<setting>``: the KL coefficient (trl's ``beta``, >= 0) of a setting."""
    if not SETTING_NAME.match(setting):
        raise ValueError(f"online-rl: setting {setting!r}: letters, digits, _ and - only")
    settings = (params.get("online") or {}).get("rl_settings") or {}
    if setting not in settings:
        raise ValueError(
            f"params: online.rl_settings.{setting}: is missing (settings: {', '.join(settings)})"
        )
    value = settings[setting]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= 0
        or math.isinf(value)
    ):
        raise ValueError(
            f"params: online.rl_settings.{setting}: the KL coefficient must be a number >= 0, "
            f"got {value!r}"
        )
    return float(value)


def rl_model(setting: str, seed: int) -> Path:
    """``models/aligned/rloo-<setting>/seed-<s>``: an RLOO run's policy (evaluated as a variant)."""
    return paths.aligned_model(f"rloo-{setting}", seed)


def rl_logs(setting: str, seed: int) -> Path:
    """``logs/online-rl/<setting>/seed-<s>``: an RLOO run's DVCLive curves."""
    return paths.LOGS_DIR / "online-rl" / setting / paths.run_name(seed)


def reward_function(model, tokenizer, score: str):
    """trl reward function: ``reward.score`` of each ``prompt + completion`` (the project's scorer)."""
    from stages.lib.scoring import score_texts

    def reward(prompts, completions, **_) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return score_texts(model, tokenizer, texts, score=score)

    reward.__name__ = f"reward_{score}"  # trl logs rewards/<name>/mean
    return reward


def rloo_trainer(
    policy_dir,
    prompts: list[str],
    reward,
    cfg: RLConfig,
    kl_coef: float,
    seed: int,
    output_dir,
    live_dir,
):
    """trl's ``RLOOTrainer`` from the policy folder, on ``prompts`` (a ``datasets.Dataset``
    with a ``prompt`` column), logging to DVCLive (``Live(live_dir, dvcyaml=False)``)."""
    from datasets import Dataset
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback
    from trl import RLOOConfig, RLOOTrainer

    from stages.lib.modeling import use_bf16

    args = RLOOConfig(
        output_dir=str(output_dir),
        report_to="none",
        save_strategy="no",
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.n_per_prompt,
        num_generations=cfg.n_per_prompt,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        learning_rate=cfg.learning_rate,
        beta=kl_coef,
        logging_steps=cfg.logging_steps,
        seed=seed,
        data_seed=seed,
        bf16=use_bf16(),
        dataloader_num_workers=0,
    )
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    return RLOOTrainer(
        model=str(policy_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        callbacks=[DVCLiveCallback(live=live)],
    )
