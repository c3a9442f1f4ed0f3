"""Reward scoring shared by the ``reward``, ``score`` and ``evaluate`` stages: load a two-label
classifier and turn texts into rewards (``reward.score``)::

    from stages.lib.scoring import load_reward_model, score_texts
    model, tokenizer = load_reward_model("models/reward")
    rewards = score_texts(model, tokenizer, texts, score="logit")

Texts are sorted by length into batches, right-padded and cut at the model's context, so a
text's score does not depend on which texts share its batch.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from stages.lib.modeling import context_length, load_pretrained, pick_device

#: ``reward.score``: how a classifier's logits become one reward per text.
SCORES = ("logit", "margin", "prob")
#: Text length when neither the caller, the model nor the tokenizer gives one.
DEFAULT_MAX_LENGTH = 512


def check_head(model, parameter: str = "reward.model") -> None:
    """The classifier must have two labels with 1 = positive (``ValueError`` naming
    ``parameter`` otherwise)."""
    n = model.config.num_labels
    if n != 2:
        raise ValueError(
            f"{parameter}: the classifier head has {n} labels; need 2 (0 = negative, 1 = positive)"
        )
    names = {i: str((model.config.id2label or {}).get(i, "")).lower() for i in (0, 1)}
    if names[1].startswith("neg") or names[0].startswith("pos"):
        raise ValueError(
            f"{parameter}: label 1 must be the positive class, got id2label {model.config.id2label}"
        )


def load_reward_model(path_or_id: str, parameter: str = "reward.model"):
    """``(model, tokenizer)`` of a two-label classifier folder or hub id, in eval mode on the
    default device (CUDA if available)."""
    model, tokenizer = load_pretrained(str(path_or_id), "classifier", parameter)
    check_head(model, parameter)
    return model.to(pick_device()).eval(), tokenizer


def max_text_length(model, tokenizer, max_length: int | None) -> int:
    """Tokens kept per text: the smallest of ``max_length``, the model's context and the
    tokenizer's ``model_max_length`` (ignoring unset ones; 512 when none is set)."""
    limits = [
        n
        for n in (max_length, context_length(model), tokenizer.model_max_length)
        if isinstance(n, int) and 0 < n < 1_000_000
    ]
    return min(limits) if limits else DEFAULT_MAX_LENGTH


@torch.no_grad()
def classifier_logits(
    model,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Logits ``[len(texts), num_labels]`` (float32, CPU) of a sequence classifier.

    Texts are sorted by length into batches (little padding), right-padded with an attention
    mask and cut at ``max_length`` tokens (default: the model's context), so a text's logits do
    not depend on which other texts share its batch. ``desc`` shows a progress bar."""
    if not texts:
        return torch.zeros((0, model.config.num_labels))
    limit = max_text_length(model, tokenizer, max_length)
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    try:
        ids = tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
        filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        ids = [row or [filler] for row in ids]  # an empty text still gets one token to pool
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty((len(ids), model.config.num_labels), dtype=torch.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
            idx = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
            out[idx] = logits.float().cpu()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def score_texts(
    model,
    tokenizer,
    texts: list[str],
    *,
    score: str = "logit",
    batch_size: int = 64,
    max_length: int | None = None,
) -> list[float]:
    """One reward per text. ``score``: ``logit`` = raw logit of the positive class (label 1, the
    original experiment's reward), ``margin`` = positive minus negative logit, ``prob`` = softmax
    probability of the positive class."""
    if score not in SCORES:
        raise ValueError(f"params: reward.score: must be one of {', '.join(SCORES)}, got {score!r}")
    logits = classifier_logits(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        desc="reward" if len(texts) > batch_size else None,
    )
    if score == "logit":
        values = logits[:, 1]
    elif score == "margin":
        values = logits[:, 1] - logits[:, 0]
    else:
        values = torch.softmax(logits, dim=-1)[:, 1]
    return [float(v) for v in values]
