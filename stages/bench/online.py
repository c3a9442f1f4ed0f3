"""Benchmark ``online``: what on-policy training costs beside offline training, on the same
prompts, in one run (issue #30, docs/online.md)::

    from stages.bench.online import online_costs
    online_costs(params, "models/sft", "models/reward", train_prompts, n_prompts=32, rl_steps=4)

Timed, each from the SFT policy on the first ``n_prompts`` train prompts:

* ``round``: one on-policy round as ``online-round`` runs it (:mod:`stages.lib.online`), phase by
  phase: sample (``online.round.sample``), score (``reward.score``; gold for synthetic data),
  pairs (``online.round.pairs``), reference log-probs, train (the variant's settings);
* ``align``: one offline align run on the same prompts' pairs and reference log-probs (the
  offline pipeline computes its samples, scores, pairs and reference once for every variant
  and seed, so a run of ``align`` is its training alone), from fresh SFT weights (each
  training, the round's and this one, the best of 2 runs);
* ``rloo``: trl's RLOOTrainer (:mod:`stages.lib.rl`, ``online.rl`` with ``rl_steps`` steps);
* ``sample``: the round's sampler against ``generate`` one prompt at a time (and unsorted
  batches), :func:`stages.bench.generate.sampling_throughput` on the round's prompts/settings.

Ratios (measured in the same run): ``round_vs_align`` (round wall time over the align run's),
``rloo_vs_align``, ``rloo_per_prompt_vs_align`` (seconds per prompt visit: RLOO's steps x
prompts per step against the align run's prompts x epochs) and ``sampler_vs_one_prompt``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from stages.bench.generate import sampling_throughput
from stages.lib.align import TRAIN_KEYS, TrainConfig, build_items
from stages.lib.config import DataConfig, RewardConfig, read_mapping, read_section
from stages.lib.modeling import load_causal_lm
from stages.lib.online import read_round_config, round_preferences
from stages.lib.online_training import round_trainer
from stages.lib.rl import read_rl_config, reward_function, rloo_trainer
from stages.lib.sampling import sample_rows
from stages.lib.scored import score_rows
from stages.lib.scoring import load_reward_model, score_texts
from stages.lib.sequences import reference_rows
from stages.lib.synthetic import gold_score
from stages.lib.variants import read_variant

#: KL coefficient of the benchmark's RLOO run when ``online.rl_settings`` is empty (the demo).
DEFAULT_KL = 0.05


def train_settings(params: dict, variant: str, seed: int = 0):
    """The variant's training settings (no checkpoints, no re-pairing) and pair loss, read as
    ``online-round`` and ``align`` read them."""
    v = read_variant(params, variant)
    settings = {k: val for k, val in v.settings.items() if k in TRAIN_KEYS}
    cfg = read_mapping({**settings, "seed": seed}, "align.common", TrainConfig)
    return dataclasses.replace(cfg, checkpoints=None, pairs=None), v.loss()


def _train(model_dir: Path, items: list[dict], cfg, loss, folder: Path, run: str) -> tuple:
    """Seconds of a training run from ``model_dir``'s weights on ``items`` (the best of 2:
    the first run of a process pays one-off set-up costs), and its steps."""
    best = float("inf")
    for i in range(2):
        policy, tokenizer = load_causal_lm(model_dir)
        start = time.perf_counter()
        out = folder / str(i)
        trainer = round_trainer(
            policy.train(), tokenizer, items, cfg, loss, out, run, out / "dvclive"
        )
        steps = trainer.train().global_step
        best = min(best, time.perf_counter() - start)
    return best, steps


def online_costs(
    params: dict,
    sft_dir: Path,
    reward_dir: Path,
    prompts: list[dict],
    *,
    n_prompts: int,
    rl_steps: int,
    variant: str = "dpo",
    seed: int = 0,
) -> dict:
    """The ``online`` item's timings and ratios (module docstring); ``prompts``: PROMPTS rows."""
    if n_prompts > len(prompts):
        raise ValueError(f"bench online: --online-prompts {n_prompts} > {len(prompts)} prompts")
    prompts = prompts[:n_prompts]
    cfg, (train_cfg, loss) = read_round_config(params), train_settings(params, variant, seed)
    rl_cfg = dataclasses.replace(read_rl_config(params), steps=rl_steps)
    score = read_section(params, "reward", RewardConfig).score
    synthetic = read_section(params, "data", DataConfig).source == "synthetic"
    kl_coef = next(iter(((params.get("online") or {}).get("rl_settings") or {}).values()), None)
    kl_coef = DEFAULT_KL if kl_coef is None else float(kl_coef)
    t: dict = {}
    policy, tokenizer = load_causal_lm(sft_dir)
    reward_model, reward_tok = load_reward_model(str(reward_dir))
    start = time.perf_counter()
    samples, gen = sample_rows(policy, tokenizer, prompts, cfg.sample, seed, progress=False)
    t["sample_s"] = time.perf_counter() - start
    mark = time.perf_counter()
    scored = score_rows(
        samples,
        lambda texts: score_texts(reward_model, reward_tok, texts, score=score),
        gold_score if synthetic else None,
    )
    t["score_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    prefs, _ = round_preferences(scored, cfg.pairs, seed, 1, "bench online")
    t["pairs_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    refs = reference_rows(
        policy,
        tokenizer,
        prefs,
        batch_size=cfg.reference_batch_size,
        max_length=train_cfg.max_length,
        progress=False,
    )
    t["reference_s"] = time.perf_counter() - mark
    items = build_items(prefs, refs)
    with tempfile.TemporaryDirectory() as tmp:
        t["train_s"], steps = _train(sft_dir, items, train_cfg, loss, Path(tmp) / "r", "round")
        align_s, align_steps = _train(sft_dir, items, train_cfg, loss, Path(tmp) / "a", "align")
        rl_prompts = [p["prompt"] for p in prompts]
        reward = reward_function(reward_model, reward_tok, score)
        trainer = rloo_trainer(
            sft_dir, rl_prompts, reward, rl_cfg, kl_coef, seed, Path(tmp) / "rl", Path(tmp) / "rlv"
        )
        mark = time.perf_counter()
        trainer.train()
        rloo_s = time.perf_counter() - mark
    t["total_s"] = sum(t.values())
    sampler = sampling_throughput(
        policy,
        tokenizer,
        [p["prompt"] for p in prompts],
        k=cfg.sample.n_per_prompt,
        temperature=cfg.sample.temperature,
        max_new_tokens=cfg.sample.max_new_tokens,
        batch_size=cfg.sample.batch_size,
        seed=seed,
    )
    train_prompts = len([i for i in items if i["split"] == "train"])
    align_visits = train_prompts * train_cfg.epochs
    rl_visits = rl_steps * rl_cfg.prompts_per_step
    return {
        "variant": variant,
        "prompts": n_prompts,
        "completions": len(samples) * cfg.sample.n_per_prompt,
        "sample_tokens": gen.n_tokens,
        "round": {**t, "train_steps": steps},
        "align": {"train_s": align_s, "train_steps": align_steps, "prompt_visits": align_visits},
        "rloo": {
            "train_s": rloo_s,
            "steps": rl_steps,
            "kl_coef": kl_coef,
            "prompt_visits": rl_visits,
            "completions": rl_visits * rl_cfg.n_per_prompt,
        },
        "sample": sampler,
        "round_vs_align": t["total_s"] / align_s,
        "rloo_vs_align": rloo_s / align_s,
        "rloo_per_prompt_vs_align": (rloo_s / rl_visits) / (align_s / align_visits),
        "sampler_vs_one_prompt": sampler["speedup_vs_one_prompt"],
    }


def online_markdown(o: dict) -> list[str]:
    """The Markdown lines of the ``online`` item."""
    r, a, rl = o["round"], o["align"], o["rloo"]
    return [
        f"| On-policy vs offline ({o['prompts']} train prompts, {o['variant']}) | seconds | "
        "vs the align run |",
        "|---|---|---|",
        f"| online round: sample {r['sample_s']:.1f}, score {r['score_s']:.1f}, pairs "
        f"{r['pairs_s']:.2f}, reference {r['reference_s']:.1f}, train {r['train_s']:.1f} "
        f"({r['train_steps']} steps) | {r['total_s']:.1f} | {o['round_vs_align']:.2f}x |",
        f"| offline align run (train only, {a['train_steps']} steps) | {a['train_s']:.1f} | 1.00x |",
        f"| RLOO, {rl['steps']} steps, KL coef {rl['kl_coef']:g} ({rl['completions']} "
        f"completions) | {rl['train_s']:.1f} | {o['rloo_vs_align']:.2f}x "
        f"({o['rloo_per_prompt_vs_align']:.2f}x per prompt visit) |",
        "",
        f"Round sampling: the sampler {o['sampler_vs_one_prompt']:.2f}x `generate` one prompt at "
        "a time (generated tokens/s, same prompts and settings).",
        "",
    ]
