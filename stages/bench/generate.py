"""Benchmarks: sampling throughput and evaluation cost.

Sampling compares, on the same prompts, K completions each, the same generation settings:

* ``sample`` - :func:`stages.lib.generation.generate_completions` (the ``sample`` stage: flattened
  (prompt, k) sequences, sorted by prompt length, left-padded batches, KV cache);
* ``one_prompt`` - ``model.generate`` once per prompt with ``num_return_sequences=K``;
* ``unsorted`` - ``model.generate`` on left-padded batches of the same size in input order.

Throughput counts generated tokens up to and including EOS (padding after EOS not counted)::

    from stages.bench.generate import sampling_throughput, evaluation_cost
    sampling_throughput(model, tokenizer, prompts, k=4, temperature=0.7, max_new_tokens=48,
                        batch_size=128)["sample"]["tokens_per_s"]
    evaluation_cost(evaluate_cfg, "models/sft", 100, seed=0, score="logit",
                    source="synthetic")["s_per_1k_tokens"]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stages.lib import paths
from stages.lib.config import EvaluateConfig
from stages.lib.contracts import PROMPTS, read_rows
from stages.lib.evaluate import reward_scores, sample_and_score
from stages.lib.generation import cut_at_eos, generate_completions, generation_config, left_pad


def _count(rows: list[list[int]], eos: int | None) -> int:
    return sum(len(cut_at_eos(r, eos)[0]) for r in rows)


@torch.inference_mode()
def _one_prompt(model, prompt_ids, k, config, seed) -> tuple[int, float]:
    n, seconds = 0, 0.0
    for i, ids in enumerate(prompt_ids):
        x = torch.tensor([ids])
        torch.manual_seed(seed + i)
        start = time.perf_counter()
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            generation_config=config,
            num_return_sequences=k,
        )
        seconds += time.perf_counter() - start
        n += _count(out[:, x.shape[1] :].tolist(), config.eos_token_id)
    return n, seconds


@torch.inference_mode()
def _unsorted(model, prompt_ids, k, config, batch_size, seed) -> tuple[int, float]:
    flat = [ids for ids in prompt_ids for _ in range(k)]
    n, seconds = 0, 0.0
    for b, s in enumerate(range(0, len(flat), batch_size)):
        ids, mask = left_pad(flat[s : s + batch_size], config.pad_token_id)
        torch.manual_seed(seed + b)
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        seconds += time.perf_counter() - start
        n += _count(out[:, ids.shape[1] :].tolist(), config.eos_token_id)
    return n, seconds


def sampling_throughput(
    model,
    tokenizer,
    prompts: list[str],
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int = 0,
) -> dict:
    """Generated tokens per second of the three ways (see module docstring), and the ratios."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    config = generation_config(
        tokenizer, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens
    )
    saved, model.generation_config = model.generation_config, config
    try:
        generate_completions(
            model,
            tokenizer,
            prompts[:2],
            n_per_prompt=k,
            temperature=temperature,
            max_new_tokens=4,
            batch_size=batch_size,
            seed=seed,
            stream="sample",
            progress=False,
        )
        ours = generate_completions(
            model,
            tokenizer,
            prompts,
            n_per_prompt=k,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            stream="sample",
            progress=False,
        )
        runs = {
            "sample": (ours.n_tokens, ours.seconds),
            "one_prompt": _one_prompt(model, prompt_ids, k, config, seed),
            "unsorted": _unsorted(model, prompt_ids, k, config, batch_size, seed),
        }
    finally:
        model.generation_config = saved
    out = {
        name: {"tokens": n, "seconds": s, "tokens_per_s": n / s} for name, (n, s) in runs.items()
    }
    out["speedup_vs_one_prompt"] = out["sample"]["tokens_per_s"] / out["one_prompt"]["tokens_per_s"]
    out["speedup_vs_unsorted"] = out["sample"]["tokens_per_s"] / out["unsorted"]["tokens_per_s"]
    out.update(
        prompts=len(prompts),
        k=k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
    )
    return out


def evaluation_cost(
    cfg: EvaluateConfig, policy: Path, n_prompts: int, *, seed: int, score: str, source: str
) -> dict:
    """Seconds per 1,000 generated tokens of the ``evaluate`` stage's compute for ``policy``
    (:mod:`stages.lib.evaluate` with the stage's settings ``cfg``, ``seed``, ``reward.score``
    and ``data.source``): sampling, the log-prob + entropy pass (and the SFT pass for an aligned
    policy), reward scoring; file writing and the bootstrap excluded. Prompts: the first
    ``n_prompts`` eval prompts."""
    rows = read_rows(paths.EVAL_PROMPTS, PROMPTS)[:n_prompts]
    prompts = [r["prompt"] for r in rows]
    start = time.perf_counter()
    gen = sample_and_score(Path(policy), prompts, cfg, seed=seed).gen
    scored = time.perf_counter()
    reward_scores(
        [p + c for p, per in zip(prompts, gen.texts) for c in per],
        score=score,
        source=source,
        batch_size=cfg.batch_size,
    )
    total = time.perf_counter() - start
    per_1k = 1000.0 / max(gen.n_tokens, 1)
    return {
        "policy": str(policy),
        "prompts": len(prompts),
        "samples": cfg.n_samples,
        "tokens": gen.n_tokens,
        "seconds": total,
        "s_per_1k_tokens": total * per_1k,
        "generate_s_per_1k_tokens": gen.seconds * per_1k,
        "logprob_entropy_s_per_1k_tokens": (scored - start - gen.seconds) * per_1k,
        "reward_s_per_1k_tokens": (total - (scored - start)) * per_1k,
    }
