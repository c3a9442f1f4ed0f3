"""The ``evaluate`` stage's compute: sample a policy, score its tokens and texts, summarize.

Used by ``stages/evaluate.py`` (which reads and writes the files) and by the evaluation-cost
benchmark (:mod:`stages.bench.generate`), so both run the same code::

    from stages.lib.evaluate import reward_scores, sample_and_score_tokens, summarize
    gen, stats, sft_logp, eos = sample_and_score_tokens(Path("models/aligned/dpo"), prompts,
                                                        cfg, seed=0)
    scores, gold = reward_scores(texts, score="logit", source="synthetic", batch_size=64)

Definitions (DESIGN.md §6): the *generated positions* of a sample are those of its generated
tokens, the EOS included when the policy emitted it; position t is scored with the distribution
it was sampled from. The sequences and log π(y|x) are those of :mod:`stages.lib.sequences` (the
reference stage's and the trainer's): prompt ids + generated ids, EOS counted, the LM head and
log-softmax in float32; nothing is cut (``max_length=None``: prompt + ``max_new_tokens`` fits
the context, checked at sampling). One decoder pass per batch gives both log-probs and
entropies: the LM head runs only at the positions that predict generated tokens, ``chunk`` rows
at a time, so the float32 logits held at once are ``chunk × vocab``, never [B, T, V].

Policies sample from the random stream ``evaluate`` (:func:`stages.lib.generation.batch_seed`),
never the ``sample`` stage's draws, at temperature 1 (:data:`TEMPERATURE`), no top-k, no top-p.
"""

from __future__ import annotations

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


def pack(
    prompt_ids: list[list[int]], gen_ids: list[list[int]], pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` of prompt + generated tokens and
    ``completion_mask`` (1 at the positions of generated tokens, EOS included), nothing cut:
    :func:`stages.lib.sequences.encode_ids` with ``max_length=None``."""
    return encode_ids(prompt_ids, gen_ids, pad_id, max_length=None)


@torch.inference_mode()
def generated_stats(
    model, batch: dict[str, torch.Tensor], *, chunk: int, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence: summed log π of the generated tokens, summed predictive entropy at the
    generated positions (zeros when ``entropy=False``) and the number of generated tokens.

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
    n = ids.shape[0]
    zeros = torch.zeros(n, device=device)
    return (
        zeros.index_add(0, rows, logp_tok).cpu(),
        zeros.index_add(0, rows, ent_tok).cpu(),
        target.sum(-1).cpu(),
    )


def sequence_stats(
    model,
    prompt_ids: list[list[int]],
    gen_ids: list[list[int]],
    *,
    batch_size: int,
    chunk: int,
    entropy: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`generated_stats` over many sequences, batched by length (longest first); returns
    ``logp``, ``entropy`` (sums) and ``n`` arrays in input order."""
    order = sorted(range(len(gen_ids)), key=lambda i: -(len(prompt_ids[i]) + len(gen_ids[i])))
    out = {k: np.zeros(len(gen_ids)) for k in ("logp", "entropy", "n")}
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if gen_ids[i]]
        if not idx:
            continue
        batch = pack([prompt_ids[i] for i in idx], [gen_ids[i] for i in idx])
        logp, ent, n = generated_stats(model, batch, chunk=chunk, entropy=entropy)
        out["logp"][idx], out["entropy"][idx], out["n"][idx] = (
            logp.double().numpy(),
            ent.double().numpy(),
            n.numpy(),
        )
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


def sample_and_score_tokens(
    path: Path, prompts: list[str], cfg: EvaluateConfig, *, seed: int
) -> tuple[Generations, dict[str, np.ndarray], np.ndarray | None, int | None]:
    """Sample ``cfg.n_samples`` completions per prompt from the policy at ``path``
    (:data:`TEMPERATURE`, random stream :data:`STREAM` seeded by ``seed``), then its log-probs
    and entropies (one pass) and, unless it is the SFT policy, the SFT log-probs of the same
    tokens. Returns (generations, stats, sft_logp or None, the tokenizer's EOS id)."""
    path = Path(path)
    k = cfg.n_samples
    model, tokenizer = load_policy(path)
    gen = generate_completions(
        model,
        tokenizer,
        prompts,
        n_per_prompt=k,
        temperature=TEMPERATURE,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=seed,
        stream=STREAM,
        desc=f"evaluate {path.name}",
    )
    prompt_ids = [
        p for p in tokenizer(prompts, add_special_tokens=False)["input_ids"] for _ in range(k)
    ]
    flat_gen = [g for per in gen.token_ids for g in per]
    batching = {"batch_size": cfg.batch_size, "chunk": cfg.logit_chunk}
    check_logits(model, pack(prompt_ids[:1], flat_gen[:1]))
    stats = sequence_stats(model, prompt_ids, flat_gen, **batching)
    del model
    sft_logp = None
    if path.resolve() != paths.SFT_DIR.resolve():
        sft, sft_tok = load_policy(paths.SFT_DIR)
        if sft_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"{path}: tokenizer differs from {paths.SFT_DIR}'s; kl needs the same one"
            )
        sft_logp = sequence_stats(sft, prompt_ids, flat_gen, entropy=False, **batching)["logp"]
    return gen, stats, sft_logp, tokenizer.eos_token_id


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
