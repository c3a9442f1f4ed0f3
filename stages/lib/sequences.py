"""Sequences of (prompt, completion) token ids and their log-probabilities under a causal LM.

The one place where a completion's tokens and log π(y|x) are defined; the ``reference`` stage,
the alignment trainer and ``evaluate`` all call it, so r(y) = log π(y|x) - log π_sft(y|x) covers
the same tokens, computed the same way, everywhere::

    batch = encode_batch(tokenizer, ["The film was"], [[262, 3621, 13, 50256]], max_length=64)
    logps, n_tokens = completion_logprobs(model, batch)
    rows = reference_rows(model, tokenizer, preferences, batch_size=64, max_length=64)

* **Prompt**: ``tokenizer(prompt, add_special_tokens=False)``, exactly as
  :mod:`stages.lib.generation` tokenised it for sampling.
* **Completion**: the token ids the policy generated (``completion_ids`` of the SAMPLES rows),
  never the decoded text re-tokenised: a finished completion ends with its EOS, which is scored
  like any other token (the stop decision is part of y); a completion cut at ``max_new_tokens``
  has no EOS.
* **Truncation**: when prompt + completion exceed ``max_length`` the completion is cut to
  ``max_length - len(prompt)`` tokens (its EOS with it) and the prompt kept; a prompt that
  leaves no room is an error. ``evaluate`` passes ``max_length=None``: its sequences are at most
  prompt + ``evaluate.max_new_tokens`` long, which sampling already checked against the model's
  context, so nothing is cut there. Keep ``reference.max_length`` >= the longest prompt +
  ``sample.max_new_tokens`` for training to see whole completions (the reference stage counts
  the cut ones).
* **Precision**: the decoder runs under whatever autocast is active (bf16 on a capable GPU for
  the reference pass, :func:`reference_autocast`, as for the trainer); the LM head and the
  log-softmax always run in float32 with autocast off (:func:`head_logits`), so the policy at
  step 0 and the reference give the same log-probs to float32 precision instead of differing by
  bf16 rounding of the logits (O(1) nat per sequence with a 50k vocabulary).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from stages.lib.contracts import REFERENCE, check_row
from stages.lib.modeling import use_bf16


def encode_ids(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the
    completion tokens) of prompt + completion ids, the completion cut to ``max_length`` (None:
    nothing is cut)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError("prompts and completions differ in length")
    rows = []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if isinstance(c, str):
            raise TypeError("completions must be token-id lists (the SAMPLES completion_ids)")
        if not p:
            raise ValueError(f"sequence {i} has an empty prompt")
        if max_length is not None:
            if len(p) >= max_length:
                raise ValueError(
                    f"a prompt of {len(p)} tokens leaves no room for a completion "
                    f"within max_length={max_length}"
                )
            c = c[: max_length - len(p)]
        rows.append((list(p) + list(c), len(p)))
    input_ids, attention_mask = right_pad([ids for ids, _ in rows], pad_id)
    completion_mask = torch.zeros_like(attention_mask)
    for i, (ids, n_prompt) in enumerate(rows):
        completion_mask[i, n_prompt : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }


def encode_batch(
    tokenizer, prompts: list[str], completion_ids: list[list[int]], max_length: int
) -> dict[str, torch.Tensor]:
    """:func:`encode_ids` of the tokenised prompts and the completions' generated ids."""
    if len(prompts) != len(completion_ids):
        raise ValueError("prompts and completions differ in length")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return encode_ids(prompt_ids, completion_ids, pad, max_length)


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
    log-softmax over the vocabulary (gather minus logsumexp), in float32."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    return torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden state [B, T, H] (after the final norm: what the LM head reads),
    from one forward call of ``model`` itself (so a wrapper such as DDP or accelerate's autocast
    sees it) that computes no logits (``logits_to_keep`` is empty)."""
    none = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=none,
    )
    return out.hidden_states[-1]


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on ``hidden`` with autocast off, in the head's weight dtype (float32, as every
    stage loads models), returned as float32 logits."""
    head = getattr(model, "module", model).get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype)).float()


def completion_index(completion_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices into the [B, T-1] next-token grid of the positions that predict a completion
    token (``completion_mask[:, 1:]``), computed where the mask lives (the CPU for every batch
    built here, so a training step on an accelerator needs no host sync to find them)."""
    return completion_mask[:, 1:].reshape(-1).nonzero().squeeze(1)


def packed_token_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log π(target | context) [M] from the last hidden states [M, H] of the M positions that
    predict a completion token, autocast off, in float32: the target's logit minus the
    logsumexp of the M x V logits, the target's logit taken as the dot product of its hidden
    state with the head's weight row (no gather over the vocabulary, whose backward would fill
    an M x V tensor of zeros; 6-15% of a demo step) when the head is a plain linear layer, else
    gathered from the logits."""
    head = getattr(model, "module", model).get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        hidden = hidden.to(head.weight.dtype)
        logits = head(hidden).float()
        if _plain_linear(head):
            # F.embedding, not head.weight[targets]: its backward accumulates rows in a fixed
            # order (indexing's backward, index_put_ with accumulate, does not on a multi-threaded
            # CPU: two runs then differ in the last bits)
            chosen = (hidden * F.embedding(targets, head.weight)).sum(-1).float()
            if head.bias is not None:
                chosen = chosen + head.bias[targets].float()
        else:
            chosen = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
        return chosen - logsumexp_keep_softmax(logits)


class _LogSumExp(torch.autograd.Function):
    """logsumexp over the last dimension that keeps the softmax it computes for the backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        # the largest probability is exp(max - lse), at least 1/V: its log is well conditioned
        lse = logits.amax(dim=-1) - torch.log(probs.amax(dim=-1))
        ctx.save_for_backward(probs)
        return lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (probs,) = ctx.saved_tensors
        return probs * grad.unsqueeze(-1)


def logsumexp_keep_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(logits, -1)`` to float32 rounding, with a cheaper backward: the forward
    keeps the softmax it computes (its gradient), where torch's backward recomputes it from
    the logits (a subtraction and an exponential over the M x V logits again). One softmax and
    two maxima forward, one multiply backward: 6.4 ms against torch's 12.4 ms for forward and
    backward of a demo step's 2,700 x 2,048 logits on the project's 2-core CPU."""
    return _LogSumExp.apply(logits)


def _plain_linear(head) -> bool:
    """A bare ``nn.Linear`` with no hooks: its logit for a target is the dot product with the
    target's weight row (plus bias); anything else is read from its logits."""
    hooked = head._forward_hooks or head._forward_pre_hooks  # e.g. a test's logit bias
    return type(head) is torch.nn.Linear and not hooked


def completion_logprobs(
    model, batch: dict[str, torch.Tensor], *, packed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs [B] (float32) and completion token counts [B] of an encoded
    batch: decoder under the active autocast, head and log-softmax in float32.

    ``packed`` (the default) runs the head and log-softmax on the completion positions only
    (:func:`packed_token_logprobs` at ``batch["completion_index"]``, or
    :func:`completion_index` of the mask): prompt and padding positions, a quarter of a demo
    batch, never reach the V-wide head. ``packed=False`` is the plain path over every position
    (:func:`token_logprobs`); both give the same values to float32 rounding (tested, and timed
    side by side by ``python -m stages bench --only flops``)."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    hidden = final_hidden(model, input_ids, batch["attention_mask"].to(device))
    mask = batch["completion_mask"][:, 1:].to(device)
    if not packed:
        logps = token_logprobs(head_logits(model, hidden), input_ids)
        return (logps * mask).sum(-1), mask.sum(-1)
    index = batch.get("completion_index")
    if index is None:
        index = completion_index(batch["completion_mask"])
    index = index.to(device)
    rows, width = mask.shape
    flat_hidden = hidden[:, :-1].reshape(rows * width, -1).index_select(0, index)
    targets = input_ids[:, 1:].reshape(-1).index_select(0, index)
    token = packed_token_logprobs(model, flat_hidden, targets)
    logps = torch.zeros(rows * width, dtype=token.dtype, device=device).index_put((index,), token)
    return logps.view(rows, width).sum(-1), mask.sum(-1)


def check_logits(model, batch: dict[str, torch.Tensor]) -> None:
    """Guard for :func:`final_hidden` + :func:`head_logits`: they must give the model's own
    logits (true for GPT-2, Llama, ...; not for a model that scales or caps its logits after
    the head); checked on the first sequence of ``batch``."""
    device = next(model.parameters()).device
    one = {k: v[:1].to(device) for k, v in batch.items()}
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):  # exact comparison
        full = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
        mine = head_logits(model, final_hidden(model, one["input_ids"], one["attention_mask"]))
    if not torch.allclose(full.float(), mine, atol=1e-3, rtol=1e-3):
        raise ValueError(
            f"{type(model).__name__}: logits are not lm_head(last hidden state); "
            f"log-probs from the hidden states do not support this architecture"
        )


def reference_autocast(
    device: torch.device, bf16: bool | None = None
) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``; by default (None) what the trainer uses there:
    transformers' ``bf16=use_bf16()``, i.e. bf16 on a CUDA device that supports it. Without
    bf16 nothing changes (an autocast already active, as in a test, stays active)."""
    if bf16 is None:
        bf16 = device.type == "cuda" and use_bf16()
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_completion_ids(tokenizer, rows: list[dict]) -> None:
    """What the SAMPLES contract cannot check without the tokenizer: ids inside the vocabulary,
    a finished completion's last id is EOS, and no EOS before the end."""
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    for row in rows:
        for k, (ids, done) in enumerate(zip(row["completion_ids"], row["finished"])):
            where = f"row {row['prompt_id']!r}, completion {k}"
            if any(t >= vocab for t in ids):
                raise ValueError(
                    f"{where}: token id {max(ids)} is outside the {vocab}-token vocabulary"
                )
            if done and ids[-1] != eos:
                raise ValueError(f"{where}: finished but its last id {ids[-1]} is not EOS ({eos})")
            body = ids[:-1] if done else ids
            if eos is not None and eos in body:
                raise ValueError(f"{where}: EOS ({eos}) before the end of the completion")


def reference_logprobs(
    model,
    tokenizer,
    prompts: list[str],
    completion_ids: list[list[int]],
    *,
    batch_size: int,
    max_length: int,
    progress: bool = True,
    bf16: bool | None = None,
) -> tuple[list[float], list[int]]:
    """Summed completion log-probs and completion token counts for each (prompt, completion
    ids), in input order, via :func:`encode_batch`'s encoding and :func:`completion_logprobs`,
    sorted by length (longest first) into batches of ``batch_size``, under
    :func:`reference_autocast` (``bf16``: None = the trainer's choice on this device)."""
    n = len(prompts)
    if len(completion_ids) != n:
        raise ValueError("prompts and completions differ in length")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if n else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(completion_ids[i])))
    logps, counts = [0.0] * n, [0] * n
    model.eval()
    device = next(model.parameters()).device
    with (
        torch.inference_mode(),
        reference_autocast(device, bf16),
        tqdm(total=n, desc="reference", unit="seq", disable=not progress) as bar,
    ):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = encode_ids(
                [prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], pad, max_length
            )
            if start == 0:
                check_logits(model, batch)
            lp, nt = completion_logprobs(model, batch)
            for i, v, c in zip(idx, lp.float().cpu().tolist(), nt.cpu().tolist()):
                logps[i], counts[i] = float(v), int(c)
            bar.update(len(idx))
    return logps, counts


def reference_rows(
    model,
    tokenizer,
    rows: list[dict],
    *,
    batch_size: int,
    max_length: int,
    progress: bool = True,
    bf16: bool | None = None,
) -> list[dict]:
    """REFERENCE rows for PREFERENCES rows (their ``completion_ids``), in the same order
    (``bf16``: see :func:`reference_autocast`)."""
    check_completion_ids(tokenizer, rows)
    prompts = [row["prompt"] for row in rows for _ in row["completion_ids"]]
    completions = [c for row in rows for c in row["completion_ids"]]
    logps, counts = reference_logprobs(
        model,
        tokenizer,
        prompts,
        completions,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        bf16=bf16,
    )
    out, start = [], 0
    for row in rows:
        stop = start + len(row["completion_ids"])
        new = {
            "prompt_id": row["prompt_id"],
            "logps": logps[start:stop],
            "n_tokens": counts[start:stop],
        }
        out.append(check_row(new, REFERENCE, f"reference row for {row['prompt_id']}"))
        start = stop
    return out
