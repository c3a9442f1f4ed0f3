"""Tokenisation of (prompt, completion) pairs and their log-probabilities under a causal LM.

The one place where a completion's tokens are defined: the ``reference`` stage and the alignment
trainer both call :func:`encode_batch` and :func:`completion_logprobs`, so the reference
log-probs and the policy log-probs always cover exactly the same tokens::

    batch = encode_batch(tokenizer, ["The film was"], [" a delight."], max_length=128)
    logps, n_tokens = completion_logprobs(model, batch)
    rows = reference_rows(model, tokenizer, preferences, batch_size=64, max_length=64)

Prompt and completion are tokenised separately (no special tokens) and concatenated, so the
prompt/completion boundary is exact whatever the tokenizer merges; no EOS is appended. When
prompt + completion exceed ``max_length`` the completion is truncated (the prompt is kept).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from stages.lib.contracts import REFERENCE, check_row


def encode_batch(
    tokenizer, prompts: list[str], completions: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the
    completion tokens) for each (prompt, completion)."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    rows = []
    for p, c in zip(prompt_ids, completion_ids):
        if len(p) >= max_length:
            raise ValueError(
                f"a prompt of {len(p)} tokens leaves no room for a completion "
                f"within max_length={max_length}"
            )
        c = c[: max_length - len(p)]
        rows.append((p + c, len(p)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = right_pad([ids for ids, _ in rows], pad)
    completion_mask = torch.zeros_like(attention_mask)
    for i, (ids, n_prompt) in enumerate(rows):
        completion_mask[i, n_prompt : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` [B, T] right-padded with ``pad_id`` and its ``attention_mask`` (1 on the
    tokens of each row), T the longest row (at least 1)."""
    width = max([len(r) for r in rows] + [1])
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask


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


def reference_logprobs(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    *,
    batch_size: int,
    max_length: int,
    progress: bool = True,
) -> tuple[list[float], list[int]]:
    """Summed completion log-probs and completion token counts for each (prompt, completion),
    in input order, via :func:`encode_batch` / :func:`completion_logprobs`, sorted by length
    (characters) into batches of ``batch_size``."""
    n = len(prompts)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]  # characters: a cheap proxy
    order = sorted(range(n), key=lambda i: -lengths[i])
    logps, counts = [0.0] * n, [0] * n
    model.eval()
    with (
        torch.inference_mode(),
        tqdm(total=n, desc="reference", unit="seq", disable=not progress) as bar,
    ):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = encode_batch(
                tokenizer,
                [prompts[i] for i in idx],
                [completions[i] for i in idx],
                max_length=max_length,
            )
            lp, nt = completion_logprobs(model, batch)
            for i, v, c in zip(idx, lp.float().cpu().tolist(), nt.cpu().tolist()):
                logps[i], counts[i] = float(v), int(c)
            bar.update(len(idx))
    return logps, counts


def reference_rows(
    model, tokenizer, rows: list[dict], *, batch_size: int, max_length: int, progress: bool = True
) -> list[dict]:
    """REFERENCE rows for PREFERENCES rows, in the same order."""
    prompts = [row["prompt"] for row in rows for _ in row["completions"]]
    completions = [c for row in rows for c in row["completions"]]
    logps, counts = reference_logprobs(
        model,
        tokenizer,
        prompts,
        completions,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    out, start = [], 0
    for row in rows:
        stop = start + len(row["completions"])
        new = {
            "prompt_id": row["prompt_id"],
            "logps": logps[start:stop],
            "n_tokens": counts[start:stop],
        }
        out.append(check_row(new, REFERENCE, f"reference row for {row['prompt_id']}"))
        start = stop
    return out
