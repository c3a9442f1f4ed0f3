"""Batched ancestral sampling from a causal LM, shared by the ``sample`` and ``evaluate`` stages.

Each prompt gets K independent completions. The (prompt, k) sequences are flattened, sorted by
prompt length (so a batch holds prompts of similar length and little padding), left-padded, and
decoded with ``model.generate`` (KV cache, ``do_sample=True``, ``top_k=0``, ``top_p=1.0``, the
given temperature, stop at EOS). Each batch is sampled under its own seed, derived from
``seed``, the caller's ``stream`` name and the batch index (:func:`batch_seed`), so a batch's
output does not depend on the batches before it, and two callers with the same ``seed`` (the
``sample`` stage, stream ``sample``; ``evaluate``, stream ``evaluate``) draw different numbers::

    from stages.lib.generation import generate_completions
    from stages.lib.modeling import load_causal_lm

    model, tokenizer = load_causal_lm("models/sft")
    out = generate_completions(model, tokenizer, ["The film was"], n_per_prompt=4,
                               temperature=0.7, max_new_tokens=48, batch_size=64, seed=0,
                               stream="sample")
    out.texts[0]          # 4 completions of the first prompt (prompt text excluded)
    out.token_ids[0][0]   # generated ids of its first completion (EOS kept if generated)
    out.prompt_ids[0]     # the ids the first prompt was tokenised to (scoring reuses them)
    out.tokens_per_second

With ``record_logprobs=True`` each completion also gets the log-probability of its generated ids
under the model itself (untempered log π, EOS included; ``out.logprobs``), read from the raw
logits ``generate`` returns: the number that :mod:`stages.lib.sequences` recomputes for the
reference and the trainer.

Prompts are tokenised without special tokens, like :mod:`stages.lib.sequences`. Only the
generation settings above apply: the model's own ``generation_config`` (e.g. a ``top_k=50``
default or a repetition penalty) is replaced by a clean one for the call, so the samples
describe the policy itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from stages.lib.modeling import context_length


@dataclass
class Generations:
    """K completions per prompt, in prompt order."""

    texts: list[list[str]]  # [prompt][k] decoded completion, special tokens skipped
    token_ids: list[list[list[int]]]  # [prompt][k] generated ids, up to and including EOS
    finished: list[list[bool]]  # [prompt][k] True when the completion ended with EOS
    n_tokens: int  # generated tokens in total (EOS counted, padding not)
    seconds: float  # wall time spent in ``generate``
    logprobs: list[list[float]] | None = None  # [prompt][k] Σ log π(token), record_logprobs only
    prompt_ids: list[list[int]] | None = None  # [prompt] the prompt's ids, as sampled from

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def batch_seed(seed: int, batch_index: int, stream: str) -> int:
    """A 63-bit seed for one batch, a hash of (stream, seed, batch index): each caller names its
    own stream, so equal seeds never give two stages the same draws. Stream ``sample`` keeps the
    key it had before streams existed (``generation:<seed>:<batch>``), so its draws are
    unchanged; any other stream hashes ``generation:<stream>:<seed>:<batch>``."""
    if not stream or ":" in stream:
        raise ValueError(f"stream must be a non-empty name without ':', got {stream!r}")
    key = f"{seed}:{batch_index}" if stream == "sample" else f"{stream}:{seed}:{batch_index}"
    digest = hashlib.sha256(f"generation:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def plan_batches(
    prompt_lengths: list[int], n_per_prompt: int, batch_size: int
) -> list[list[tuple[int, int]]]:
    """Split the (prompt index, k) sequences into batches of ``batch_size``, sorted by prompt
    length (longest first, ties in prompt order), so similar lengths share a batch."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: (-prompt_lengths[i], i))
    flat = [(i, k) for i in order for k in range(n_per_prompt)]
    return [flat[s : s + batch_size] for s in range(0, len(flat), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` [B, T] left-padded with ``pad_id`` (the prompts end at the same column, as
    ``generate`` wants) and its ``attention_mask``, T the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[j, width - len(r) :] = 1
    return ids, mask


def generation_config(tokenizer, *, do_sample: bool, temperature: float, max_new_tokens: int):
    """A clean ``GenerationConfig``: plain sampling at ``temperature`` (top-k 0, top-p 1) or
    greedy decoding, stop at EOS, pad with the pad token (EOS when there is none)."""

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    settings = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if do_sample
        else {"do_sample": False}
    )
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
        bos_token_id=tokenizer.bos_token_id,
        **settings,
    )


class _DroppedMaskWarning(logging.Filter):
    """Hide transformers' "passing in an `attention_mask`" warning during ``generate``: it drops
    an all-ones mask itself (no padding in the batch), then sees the pad tokens that follow EOS
    in finished sequences, whose further tokens are discarded anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


def cut_at_eos(ids: list[int], eos_id: int | None) -> tuple[list[int], bool]:
    """``ids`` up to and including the first EOS, and whether there was one."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1], True
    return ids, False


def sampled_logprobs(step_logits: tuple[torch.Tensor, ...], new: torch.Tensor) -> torch.Tensor:
    """log π of each generated token [B, steps] (float64, on the CPU) from the raw logits of each
    step (``generate(output_logits=True)``: before temperature or any other processing)."""
    out = torch.empty(new.shape, dtype=torch.float64)
    for t, logits in enumerate(step_logits):  # one [B, V] step at a time: bounded memory
        logits = logits.double()
        picked = logits.gather(-1, new[:, t, None].to(logits.device)).squeeze(-1)
        out[:, t] = (picked - torch.logsumexp(logits, dim=-1)).cpu()
    return out


@torch.inference_mode()
def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    stream: str,
    do_sample: bool = True,
    record_logprobs: bool = False,
    progress: bool = True,
    desc: str = "generate",
) -> Generations:
    """``n_per_prompt`` completions of each prompt by ancestral sampling (or greedy decoding
    with ``do_sample=False``) from the random stream ``stream``; see the module docstring."""
    if n_per_prompt < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("n_per_prompt, batch_size and max_new_tokens must be >= 1")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    limit = context_length(model)
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i + 1} is empty after tokenisation")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise ValueError(
                f"prompt {i + 1} ({len(ids)} tokens) + max_new_tokens="
                f"{max_new_tokens} exceeds the model's {limit} positions"
            )
    config = generation_config(
        tokenizer, do_sample=do_sample, temperature=temperature, max_new_tokens=max_new_tokens
    )
    if record_logprobs:  # the raw logits of every step, and a dict output to carry them
        config.update(output_logits=True, return_dict_in_generate=True)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    texts = [[""] * n_per_prompt for _ in prompt_ids]
    tokens: list[list[list[int]]] = [[[] for _ in range(n_per_prompt)] for _ in prompt_ids]
    finished = [[False] * n_per_prompt for _ in prompt_ids]
    logprobs = [[0.0] * n_per_prompt for _ in prompt_ids] if record_logprobs else None
    n_tokens, seconds = 0, 0.0
    batches = plan_batches([len(ids) for ids in prompt_ids], n_per_prompt, batch_size)
    bar = tqdm(total=len(prompt_ids) * n_per_prompt, desc=desc, unit="seq", disable=not progress)
    saved_config = model.generation_config
    hf_logger, quiet = logging.getLogger("transformers.modeling_utils"), _DroppedMaskWarning()
    try:
        model.generation_config = config
        hf_logger.addFilter(quiet)
        for b, batch in enumerate(batches):
            ids, mask = left_pad([prompt_ids[i] for i, _ in batch], config.pad_token_id)
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(batch_seed(seed, b, stream))
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                )
            seconds += time.perf_counter() - start
            sequences = out.sequences if record_logprobs else out
            new = sequences[:, ids.shape[1] :]
            step_logps = sampled_logprobs(out.logits, new) if record_logprobs else None
            for j, ((i, k), row) in enumerate(zip(batch, new.tolist())):
                row, done = cut_at_eos(row, eos)
                tokens[i][k], finished[i][k] = row, done
                n_tokens += len(row)
                if step_logps is not None:
                    logprobs[i][k] = float(step_logps[j, : len(row)].sum())
            decoded = tokenizer.batch_decode(
                [tokens[i][k] for i, k in batch],
                skip_special_tokens=True,
                clean_up_tokenization_spaces=False,
            )
            for (i, k), text in zip(batch, decoded):
                texts[i][k] = text
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tokens / max(seconds, 1e-9):.0f}")
    finally:
        model.generation_config = saved_config
        hf_logger.removeFilter(quiet)
        bar.close()
    return Generations(texts, tokens, finished, n_tokens, seconds, logprobs, prompt_ids)
