"""The ``evaluate`` stage's compute: sample a policy, score its tokens and texts, summarize.

Used by ``stages/evaluate.py`` (which reads and writes the files), ``stages/best_of_n.py``
(:func:`policy_samples`: the same draws) and the evaluation-cost benchmark
(:mod:`stages.bench.generate`), so all run the same code::

    from stages.lib.evaluate import fixed_contexts, reward_scores, sample_and_score, summarize
    scored = sample_and_score(Path("models/aligned/dpo/seed-0"), prompts, cfg, seed=0,
                              contexts=fixed_contexts(rows, test_rows, n=100))
    scores, gold = reward_scores(texts, score="logit", source="synthetic", batch_size=64)

Definitions (DESIGN.md §6): the *generated positions* of a sample are those of its generated
tokens, the EOS included when the policy emitted it; position t is scored with the distribution
it was sampled from. The sequences and log π(y|x) are those of :mod:`stages.lib.sequences` (the
reference stage's and the trainer's): prompt ids + generated ids, EOS counted, the LM head and
log-softmax in float32; nothing is cut (``max_length=None``: prompt + ``max_new_tokens`` fits
the context, checked at sampling). The policy is loaded once: one decoder pass per batch gives
log-probs, entropies and the first-k entropies; the LM head runs only at the positions that
predict generated tokens, ``chunk`` rows at a time, so the float32 logits held at once are
``chunk × vocab``, never [B, T, V]. The fixed contexts are a second, teacher-forced pass of the
same loaded model; the SFT model (kl) is the only other one loaded.

Two entropies measure the policy, not its sample lengths (``entropy`` averages over the
positions the policy chose to generate, so longer completions are measured at other positions):

* ``entropy_first_k``: the predictive entropy at the first ``evaluate.entropy_first_k``
  generated positions of each sample (fewer where the completion is shorter), token-weighted.
* ``context_entropy``: teacher-forced on fixed held-out text, the same tokens for every policy:
  each of the first ``evaluate.fixed_contexts`` eval prompts (at most ``evaluate.n_prompts``)
  followed by its own test review's next tokens (the prompt id ``test-<i>`` is row i of
  ``data/prepared/test.jsonl``, whose text begins with the prompt), at most
  ``evaluate.max_new_tokens`` of them, tokenised apart from the prompt as generation appends its
  tokens; token-weighted. No sampling is involved.

Policies sample from the random stream ``evaluate`` (:func:`stages.lib.generation.batch_seed`),
never the ``sample`` stage's draws, at temperature 1 (:data:`TEMPERATURE`), no top-k, no top-p.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.lib import paths
from stages.lib.config import EvaluateConfig
from stages.lib.generation import Generations, generate_completions
from stages.lib.modeling import load_causal_lm
from stages.lib.scoring import load_reward_model, score_texts
from stages.lib.sequences import check_logits, encode_ids, final_hidden, head_logits
from stages.lib.synthetic import gold_score

#: Evaluation samples the policy itself: temperature 1, no top-k, no top-p.
TEMPERATURE = 1.0
#: The random stream of evaluation samples (the ``sample`` stage draws from ``sample``).
STREAM = "evaluate"

#: The keys of :func:`summarize`'s metrics (``metrics/eval/<policy>.json``).
METRIC_KEYS = (
    "reward",
    "reward_lo",
    "reward_hi",
    "entropy",
    "nll",
    "kl",
    "distinct_1",
    "distinct_2",
    "length",
    "gold",
    "gold_lo",
    "gold_hi",
    "n_prompts",
    "n_samples",
)
#: The keys :func:`entropy_fields` adds to them.
ENTROPY_KEYS = ("entropy_first_k", "context_entropy", "context_tokens")


def pack(
    prompt_ids: list[list[int]], gen_ids: list[list[int]], pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` of prompt + generated tokens and
    ``completion_mask`` (1 at the positions of generated tokens, EOS included), nothing cut:
    :func:`stages.lib.sequences.encode_ids` with ``max_length=None``."""
    return encode_ids(prompt_ids, gen_ids, pad_id, max_length=None)


@torch.inference_mode()
def generated_stats(
    model, batch: dict[str, torch.Tensor], *, chunk: int, entropy: bool = True, first_k: int = 0
) -> dict[str, torch.Tensor]:
    """Per sequence: ``logp`` (summed log π of the generated tokens), ``entropy`` (summed
    predictive entropy at the generated positions; zeros when ``entropy=False``), ``n`` (their
    number), and ``entropy_first_k``/``n_first_k``: the same over the first ``first_k``
    generated positions of each sequence (fewer where it is shorter; zeros when ``first_k`` is
    0). The distribution at a position depends only on what precedes it, so these are the
    entropies a pass over the completions cut to ``first_k`` tokens gives (to float32 rounding:
    such a pass pads its batches to other lengths).

    One decoder pass; the LM head runs on ``chunk`` predicting positions at a time."""
    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = final_hidden(model, ids, mask)
    target = batch["completion_mask"][:, 1:].to(device).bool()  # token t+1 generated
    rows, cols = target.nonzero(as_tuple=True)  # predicted from position cols
    states, tokens = hidden[rows, cols], ids[rows, cols + 1]
    logp_tok = torch.empty(len(rows), device=device)
    ent_tok = torch.zeros(len(rows), device=device)
    for s in range(0, len(rows), chunk):
        logp = torch.log_softmax(head_logits(model, states[s : s + chunk]), dim=-1)
        logp_tok[s : s + chunk] = logp.gather(-1, tokens[s : s + chunk, None]).squeeze(-1)
        if entropy:
            ent_tok[s : s + chunk] = -(logp.exp() * logp).sum(-1)
    zeros = torch.zeros(ids.shape[0], device=device)
    first = target.long().cumsum(-1)[rows, cols] <= first_k  # rank 1: first generated token
    return {
        "logp": zeros.index_add(0, rows, logp_tok).cpu(),
        "entropy": zeros.index_add(0, rows, ent_tok).cpu(),
        "n": target.sum(-1).cpu(),
        "entropy_first_k": zeros.index_add(0, rows[first], ent_tok[first]).cpu(),
        "n_first_k": target.sum(-1).clamp(max=first_k).cpu(),
    }


#: The per-sequence arrays of :func:`sequence_stats`.
STAT_KEYS = ("logp", "entropy", "n", "entropy_first_k", "n_first_k")


def sequence_stats(
    model,
    prompt_ids: list[list[int]],
    gen_ids: list[list[int]],
    *,
    batch_size: int,
    chunk: int,
    entropy: bool = True,
    first_k: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`generated_stats` over many sequences, batched by length (longest first); returns
    the :data:`STAT_KEYS` arrays (sums and counts) in input order."""
    order = sorted(range(len(gen_ids)), key=lambda i: -(len(prompt_ids[i]) + len(gen_ids[i])))
    out = {k: np.zeros(len(gen_ids)) for k in STAT_KEYS}
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if gen_ids[i]]
        if not idx:
            continue
        batch = pack([prompt_ids[i] for i in idx], [gen_ids[i] for i in idx])
        stats = generated_stats(model, batch, chunk=chunk, entropy=entropy, first_k=first_k)
        for key in STAT_KEYS:
            out[key][idx] = stats[key].double().numpy()
    return out


def distinct_n(token_lists: list[list[int]], n: int) -> float:
    """Distinct n-grams / total n-grams over all lists (n-grams never cross lists); 0 if none."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_interval(
    per_prompt: np.ndarray | list[float], *, n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_prompt`` (resampling prompts)."""
    values = np.asarray(per_prompt, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // max(len(values), 1))  # bound the index matrix
    for s in range(0, n_resamples, step):
        m = min(step, n_resamples - s)
        means[s : s + m] = values[rng.integers(0, len(values), size=(m, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(
    scores: np.ndarray | None,
    gold: np.ndarray | None,
    stats: dict[str, np.ndarray],
    sft_logp: np.ndarray | None,
    completion_tokens: list[list[int]],
    *,
    n_resamples: int,
    seed: int,
    samples_per_prompt: int | None = None,
) -> dict:
    """The flat metrics dict (:data:`METRIC_KEYS`); ``scores``/``gold`` are [prompts, samples],
    ``stats`` and ``sft_logp`` flat over samples (prompt-major); ``sft_logp=None`` means
    kl = 0. ``scores=None`` (no reward model): reward and its interval are None, and
    ``samples_per_prompt`` gives the shape."""
    if scores is None:
        n_samples = samples_per_prompt
        n_prompts = len(stats["n"]) // n_samples
    else:
        n_prompts, n_samples = scores.shape
    metrics = {
        "n_prompts": n_prompts,
        "n_samples": n_samples,
        "reward": None,
        "reward_lo": None,
        "reward_hi": None,
        "gold": None,
        "gold_lo": None,
        "gold_hi": None,
    }
    for name, values in (("reward", scores), ("gold", gold)):
        if values is None:
            continue
        lo, hi = bootstrap_interval(values.mean(1), n_resamples=n_resamples, seed=seed)
        metrics.update({name: float(values.mean()), f"{name}_lo": lo, f"{name}_hi": hi})
    n_gen = stats["n"].sum()
    metrics["entropy"] = float(stats["entropy"].sum() / n_gen) if n_gen else 0.0
    metrics["nll"] = float(-stats["logp"].mean())
    metrics["kl"] = 0.0 if sft_logp is None else float((stats["logp"] - sft_logp).mean())
    metrics["distinct_1"] = distinct_n(completion_tokens, 1)
    metrics["distinct_2"] = distinct_n(completion_tokens, 2)
    metrics["length"] = float(np.mean([len(t) for t in completion_tokens]))
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def load_policy(path: Path):
    """``(model, tokenizer)`` of a policy folder (eval mode, default device); a missing folder
    is a ``FileNotFoundError`` that says which stage writes it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: policy folder not found (run its align/sft stage first)")
    return load_causal_lm(path)


def policy_samples(
    model,
    tokenizer,
    prompts: list[str],
    cfg: EvaluateConfig,
    *,
    n: int,
    seed: int,
    stream: str,
    desc: str,
) -> Generations:
    """``n`` completions of each prompt as evaluation draws them (``evaluate`` and
    ``best-of-n``): :data:`TEMPERATURE`, no top-k, no top-p, ``cfg.max_new_tokens`` and
    ``cfg.batch_size``, from the random stream ``stream`` seeded by ``seed``."""
    return generate_completions(
        model,
        tokenizer,
        prompts,
        n_per_prompt=n,
        temperature=TEMPERATURE,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=seed,
        stream=stream,
        desc=desc,
    )


@dataclass
class Scored:
    """One policy's samples and their token statistics (:func:`sample_and_score`)."""

    gen: Generations
    stats: dict[str, np.ndarray]  # STAT_KEYS per sample, flat (prompt-major)
    sft_logp: np.ndarray | None  # log π_sft of each sample; None for the SFT policy (kl = 0)
    context: dict[str, np.ndarray] | None  # STAT_KEYS per fixed context; None without contexts
    eos: int | None  # the tokenizer's EOS id


def sample_and_score(
    path: Path, prompts: list[str], cfg: EvaluateConfig, *, seed: int, contexts: list[str] = ()
) -> Scored:
    """Load the policy at ``path`` once; sample ``cfg.n_samples`` completions per prompt
    (:func:`policy_samples`, stream :data:`STREAM`); one scoring pass over them gives log π,
    the entropy and the first-``cfg.entropy_first_k`` entropy; one teacher-forced pass gives
    the entropy of ``contexts`` (:func:`fixed_contexts`: the text after each of the first
    ``len(contexts)`` prompts) after its prompt's tokens. Unless it is the SFT policy, the SFT
    model then scores the same tokens (kl). Prompts are tokenised once, for sampling."""
    path, k = Path(path), cfg.n_samples
    model, tokenizer = load_policy(path)
    desc = f"evaluate {path.name}"
    gen = policy_samples(model, tokenizer, prompts, cfg, n=k, seed=seed, stream=STREAM, desc=desc)
    prompt_ids = [p for p in gen.prompt_ids for _ in range(k)]
    flat_gen = [g for per in gen.token_ids for g in per]
    batching = {"batch_size": cfg.batch_size, "chunk": cfg.logit_chunk}
    check_logits(model, pack(prompt_ids[:1], flat_gen[:1]))
    stats = sequence_stats(model, prompt_ids, flat_gen, first_k=cfg.entropy_first_k, **batching)
    context = None
    if contexts:
        p_ids, c_ids = context_ids(tokenizer, gen.prompt_ids, contexts, cfg.max_new_tokens)
        context = sequence_stats(model, p_ids, c_ids, **batching)
    del model
    sft_logp = None
    if path.resolve() != paths.SFT_DIR.resolve():
        sft, sft_tok = load_policy(paths.SFT_DIR)
        if sft_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"{path}: tokenizer differs from {paths.SFT_DIR}'s; kl needs the same one"
            )
        sft_logp = sequence_stats(sft, prompt_ids, flat_gen, entropy=False, **batching)["logp"]
    return Scored(gen, stats, sft_logp, context, tokenizer.eos_token_id)


# ------------------------------------------------------------ entropy that ignores lengths


def review_index(prompt_id: str, n_rows: int, where: str) -> int:
    """Row of ``data/prepared/test.jsonl`` of an eval prompt id ``test-<i>``."""
    prefix, _, index = prompt_id.rpartition("-")
    if prefix != "test" or not index.isdigit() or int(index) >= n_rows:
        raise ValueError(
            f"{where}: prompt_id {prompt_id!r} is not 'test-<row>' of the {n_rows} test reviews "
            f"(fixed contexts need the eval prompts' reviews; set evaluate.fixed_contexts: 0)"
        )
    return int(index)


def fixed_contexts(
    prompt_rows: list[dict],
    test_rows: list[dict],
    *,
    n: int,
    where: str | Path = paths.EVAL_PROMPTS,
) -> list[str]:
    """The text that follows each of the first ``n`` eval prompts in its own test review."""
    out = []
    for row in prompt_rows[:n]:
        text = test_rows[review_index(row["prompt_id"], len(test_rows), where)]["text"]
        if not text.startswith(row["prompt"]):
            raise ValueError(
                f"{where}: prompt {row['prompt_id']!r} is not the start of its review "
                f"(re-run prepare)"
            )
        out.append(text[len(row["prompt"]) :])
    return out


def context_ids(
    tokenizer, prompt_ids: list[list[int]], contexts: list[str], max_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The (already tokenised) prompts of ``contexts`` and the first ``max_tokens`` tokens of
    each context, tokenised apart from its prompt, as generation appends its tokens."""
    rest = tokenizer(list(contexts), add_special_tokens=False)["input_ids"] if contexts else []
    return prompt_ids[: len(rest)], [ids[:max_tokens] for ids in rest]


def ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    """Σ num / Σ den, rounded as evaluate's metrics; None when there is no token."""
    total = float(np.sum(den))
    return round(float(np.sum(num)) / total, 6) if total else None


def _per(num, den) -> list[float]:
    return [round(float(e / c), 6) if c else 0.0 for e, c in zip(num, den)]


def entropy_fields(
    stats: dict[str, np.ndarray], context: dict[str, np.ndarray] | None, k: int, n_rows: int
) -> tuple[list[dict], dict]:
    """Per-prompt fields of ``data/eval`` rows (``entropy_first_k`` and ``n_first_k`` per
    sample, ``k`` samples a prompt; ``context_entropy`` and ``context_tokens`` for the prompts
    with a fixed context) and the metrics of :data:`ENTROPY_KEYS`."""
    fields = []
    for i in range(n_rows):
        sl = slice(i * k, (i + 1) * k)
        ent, n = stats["entropy_first_k"][sl], stats["n_first_k"][sl]
        fields.append({"entropy_first_k": _per(ent, n), "n_first_k": [int(c) for c in n]})
    metrics = {"entropy_first_k": ratio(stats["entropy_first_k"], stats["n_first_k"])}
    metrics.update(context_entropy=None, context_tokens=0)
    if context is not None:
        for i, (e, c) in enumerate(zip(context["entropy"], context["n"])):
            fields[i].update(context_entropy=_per([e], [c])[0], context_tokens=int(c))
        metrics.update(
            context_entropy=ratio(context["entropy"], context["n"]),
            context_tokens=int(context["n"].sum()),
        )
    return fields, metrics


def reward_scores(
    texts: list[str], *, score: str, source: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reward-model (``models/reward``) scores of ``texts`` (``reward.score``) and, for
    ``data.source`` ``synthetic``, their gold scores (else None)."""
    rm, rm_tok = load_reward_model(str(paths.REWARD_DIR))
    scores = np.asarray(
        score_texts(rm, rm_tok, texts, score=score, batch_size=batch_size), dtype=np.float64
    )
    if source != "synthetic":
        return scores, None
    return scores, np.asarray([gold_score(t) for t in texts], dtype=np.float64)
