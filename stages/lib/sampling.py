"""Sampling K completions per prompt into SAMPLES rows, shared by ``sample`` (the SFT policy) and
``online-round`` (the policy being trained, :mod:`stages.lib.online`)::

    rows, out = sample_rows(model, tokenizer, prompts, SampleConfig(...), seed)
"""

from __future__ import annotations

from stages.lib.config import SampleConfig
from stages.lib.generation import Generations, generate_completions


def sample_rows(
    model, tokenizer, prompts: list[dict], cfg: SampleConfig, seed: int, progress: bool = True
) -> tuple[list[dict], Generations]:
    """SAMPLES rows (one per prompt, in order) and the raw generations."""
    out = generate_completions(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        n_per_prompt=cfg.n_per_prompt,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=seed,
        stream="sample",
        progress=progress,
        desc="sample",
    )
    rows = [
        {
            "prompt_id": p["prompt_id"],
            "prompt": p["prompt"],
            "completions": texts,
            "completion_ids": ids,
            "finished": done,
        }
        for p, texts, ids, done in zip(prompts, out.texts, out.token_ids, out.finished)
    ]
    return rows, out
