"""Entropy that measures the policy, not its sample lengths (``evaluate``'s extra entropies).

``evaluate``'s ``entropy`` averages the predictive entropy over the positions the policy itself
generated: a policy that writes longer completions is measured at other (later, often more
certain or less certain) positions, so the number mixes the policy's spread with its lengths.
Two measures that do not:

* ``entropy_first_k``: the predictive entropy at the first ``evaluate.entropy_first_k``
  generated positions of each sample (fewer where the completion is shorter), token-weighted:
  every policy is measured at the same depth into its completions.
* ``context_entropy``: teacher-forced on fixed held-out text, the same tokens for every policy:
  for each of the first ``evaluate.fixed_contexts`` eval prompts (at most ``evaluate.n_prompts``
  of them), its own test review (the
  prompt id ``test-<i>`` is row i of ``data/prepared/test.jsonl``, whose text begins with the
  prompt), the prompt's tokens followed by the review's next tokens, at most
  ``evaluate.max_new_tokens`` of them (tokenised apart from the prompt, as generation appends
  its tokens); the predictive entropy at each of those positions, token-weighted. No sampling
  is involved, so it does not depend on the seed except through the policy.

Both reuse :func:`stages.lib.evaluate.sequence_stats` (one decoder pass, the LM head on the
scored positions only)::

    from stages.lib.policy_entropy import context_ids, first_k_stats, context_stats
    stats = first_k_stats(model, prompt_ids, gen_ids, k=8, batch_size=64, chunk=512)
    p_ids, c_ids = context_ids(tokenizer, prompt_rows, test_rows, n=100, max_tokens=48)
"""

from __future__ import annotations

import numpy as np

from stages.lib.evaluate import sequence_stats

#: Keys added to ``metrics/eval/<policy>/seed-<s>.json``.
ENTROPY_KEYS = ("entropy_first_k", "context_entropy", "context_tokens")


def first_k_stats(
    model,
    prompt_ids: list[list[int]],
    gen_ids: list[list[int]],
    *,
    k: int,
    batch_size: int,
    chunk: int,
) -> dict[str, np.ndarray]:
    """Per sample: entropy summed over its first ``k`` generated positions and their number
    (``entropy``, ``n``); the distribution at a position depends only on what precedes it, so
    the completions are cut to ``k`` tokens before the pass."""
    cut = [g[:k] for g in gen_ids]
    stats = sequence_stats(model, prompt_ids, cut, batch_size=batch_size, chunk=chunk)
    return {"entropy": stats["entropy"], "n": stats["n"]}


def review_index(prompt_id: str, n_rows: int, where: str) -> int:
    """Row of ``data/prepared/test.jsonl`` of an eval prompt id ``test-<i>``."""
    prefix, _, index = prompt_id.rpartition("-")
    if prefix != "test" or not index.isdigit() or int(index) >= n_rows:
        raise ValueError(
            f"{where}: prompt_id {prompt_id!r} is not 'test-<row>' of the {n_rows} test reviews "
            f"(fixed contexts need the eval prompts' reviews; set evaluate.fixed_contexts: 0)"
        )
    return int(index)


def context_ids(
    tokenizer,
    prompt_rows: list[dict],
    test_rows: list[dict],
    *,
    n: int,
    max_tokens: int,
    where: str = "data/prompts/eval.jsonl",
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and the next ``max_tokens`` review tokens of the first ``n`` eval prompts."""
    prompts, conts = [], []
    for row in prompt_rows[:n]:
        text = test_rows[review_index(row["prompt_id"], len(test_rows), where)]["text"]
        if not text.startswith(row["prompt"]):
            raise ValueError(
                f"{where}: prompt {row['prompt_id']!r} is not the start of its review "
                f"(re-run prepare)"
            )
        prompts.append(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        rest = tokenizer(text[len(row["prompt"]) :], add_special_tokens=False)["input_ids"]
        conts.append(rest[:max_tokens])
    return prompts, conts


def context_stats(
    model, prompt_ids: list[list[int]], cont_ids: list[list[int]], *, batch_size: int, chunk: int
) -> dict[str, np.ndarray]:
    """Per context: entropy summed over its continuation positions and their number."""
    stats = sequence_stats(model, prompt_ids, cont_ids, batch_size=batch_size, chunk=chunk)
    return {"entropy": stats["entropy"], "n": stats["n"]}


def ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    """Σ num / Σ den, rounded as evaluate's metrics; None when there is no token."""
    total = float(np.sum(den))
    return round(float(np.sum(num)) / total, 6) if total else None


def policy_entropies(path, rows: list[dict], token_ids: list[list[list[int]]], cfg) -> tuple:
    """Both measures for the policy at ``path`` on evaluate's prompts ``rows`` and its sampled
    ``token_ids`` [prompt][sample] (``cfg``: :class:`stages.lib.config.EvaluateConfig`).
    Returns the per-prompt fields for ``data/eval`` rows (``entropy_first_k`` and ``n_first_k``
    per sample; ``context_entropy`` and ``context_tokens`` for the first ``fixed_contexts``
    prompts) and the metrics of :data:`ENTROPY_KEYS`."""
    from stages.lib import paths
    from stages.lib.contracts import PREPARED, read_rows
    from stages.lib.evaluate import load_policy

    model, tokenizer = load_policy(path)
    k = len(token_ids[0]) if token_ids else 0  # samples per prompt
    prompt_ids = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    flat_prompts = [p for p in prompt_ids for _ in range(k)]
    flat_gen = [g for per in token_ids for g in per]
    batching = {"batch_size": cfg.batch_size, "chunk": cfg.logit_chunk}
    first = first_k_stats(model, flat_prompts, flat_gen, k=cfg.entropy_first_k, **batching)
    fields = []
    for i in range(len(rows)):
        sl = slice(i * k, (i + 1) * k)
        ent, n = first["entropy"][sl], first["n"][sl]
        fields.append(
            {
                "entropy_first_k": [round(float(e / c), 6) if c else 0.0 for e, c in zip(ent, n)],
                "n_first_k": [int(c) for c in n],
            }
        )
    metrics = {"entropy_first_k": ratio(first["entropy"], first["n"])}
    metrics.update(context_entropy=None, context_tokens=0)
    if cfg.fixed_contexts:  # the first min(fixed_contexts, n_prompts) prompts
        test_rows = read_rows(paths.PREPARED_TEST, PREPARED)
        p_ids, c_ids = context_ids(
            tokenizer, rows, test_rows, n=cfg.fixed_contexts, max_tokens=cfg.max_new_tokens
        )
        ctx = context_stats(model, p_ids, c_ids, **batching)
        for i, (e, c) in enumerate(zip(ctx["entropy"], ctx["n"])):
            fields[i]["context_entropy"] = round(float(e / c), 6) if c else 0.0
            fields[i]["context_tokens"] = int(c)
        metrics.update(
            context_entropy=ratio(ctx["entropy"], ctx["n"]), context_tokens=int(ctx["n"].sum())
        )
    return fields, metrics
