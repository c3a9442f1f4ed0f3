"""Tokenisation of (prompt, completion) pairs and their log-probabilities under a causal LM.

The one place where a completion's tokens are defined: the ``reference`` stage and the alignment
trainer both call :func:`encode_batch` and :func:`completion_logprobs`, so the reference
log-probs and the policy log-probs always cover exactly the same tokens::

    batch = encode_batch(tokenizer, ["The film was"], [" a delight."], max_length=128)
    logps, n_tokens = completion_logprobs(model, batch)

Prompt and completion are tokenised separately (no special tokens) and concatenated, so the
prompt/completion boundary is exact whatever the tokenizer merges; no EOS is appended. When
prompt + completion exceed ``max_length`` the completion is truncated (the prompt is kept).
"""
from __future__ import annotations

import torch

from stages.common import StageError


def encode_batch(tokenizer, prompts: list[str], completions: list[str],
                 max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the
    completion tokens) for each (prompt, completion)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    rows = []
    for p, c in zip(prompt_ids, completion_ids):
        if len(p) >= max_length:
            raise StageError(f"a prompt of {len(p)} tokens leaves no room for a completion "
                             f"within max_length={max_length}")
        c = c[: max_length - len(p)]
        rows.append((p + c, len(p)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        completion_mask[i, n_prompt: len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask}


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(x_t | x_<t) for t >= 1, shape [B, T-1], without materialising a full
    log-softmax over the vocabulary (gather minus logsumexp)."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    return torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs [B] and completion token counts [B] for an encoded batch."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    out = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device))
    mask = batch["completion_mask"][:, 1:].to(device)
    logps = token_logprobs(out.logits, input_ids)
    return (logps * mask).sum(-1), mask.sum(-1)
