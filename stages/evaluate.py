"""``evaluate``: sample from one policy on held-out prompts and measure reward, entropy, KL.

Reads ``seed``, ``evaluate.*``, ``reward.score`` and ``data.source`` from params.yaml, the policy
(``models/sft`` or ``models/aligned/<policy>``), ``models/sft`` (for ``kl``), ``models/reward``
and ``data/prompts/{eval,train}.jsonl``; writes ``metrics/eval/<policy>.json`` and
``data/eval/<policy>.jsonl``::

    python -m stages evaluate sft          # or: dvc repro evaluate-sft
    python -m stages evaluate dpo          # or: dvc repro evaluate@dpo

Every policy samples ``evaluate.n_samples`` completions of each of the first
``evaluate.n_prompts`` eval prompts at temperature 1 with top-k and top-p off (the estimates
describe the policy itself), under the same seed, so policies are compared on common random
numbers. Definitions (DESIGN.md §6):

* *generated positions* of a sample are the positions of its generated tokens, the EOS included
  when the policy emitted it (it was sampled like any other token) and nothing after it; a
  completion cut at ``evaluate.max_new_tokens`` has exactly that many. Prompt and padding
  positions never count. Position t is scored with the distribution it was sampled from,
  π(·|prompt, y_<t).
* ``entropy``: −Σ_v π(v|·) log π(v|·) at each generated position, averaged over all generated
  positions of all samples (token-weighted).
* ``nll``: mean over samples of −log π(y|x) = −Σ_t log π(y_t|x, y_<t) (EOS included).
* ``kl``: mean over samples of log π(y|x) − log π_sft(y|x) on the same tokens (a second model's
  pass). For ``sft`` itself the policy *is* π_sft, so ``kl`` is 0.0 by definition and the second
  pass is skipped.
* ``reward`` (``gold``): mean reward-model (gold) score of prompt + completion text, with a 95%
  percentile bootstrap interval over prompts (``evaluate.bootstrap`` resamples of the per-prompt
  means, seeded by ``seed``). ``gold`` needs a gold scorer: it is null unless ``data.source`` is
  ``synthetic``.
* ``distinct_1``/``distinct_2``: distinct n-grams / n-grams over the completions' tokens (EOS
  excluded; bigrams never cross completions); ``length``: mean completion tokens (EOS excluded).

One decoder pass per batch gives both log-probs and entropies: the LM head is applied only at
the positions that predict generated tokens, ``evaluate.logit_chunk`` rows at a time, so the
float32 logits held at once are ``logit_chunk × vocab`` (512 × 50257 ≈ 100 MB), never [B, T, V].
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import typer

from stages.common import StageError, load_params, param, write_json, write_jsonl
from stages.contracts import PROMPTS, read_rows

METRIC_KEYS = ("reward", "reward_lo", "reward_hi", "entropy", "nll", "kl", "distinct_1",
               "distinct_2", "length", "gold", "gold_lo", "gold_hi", "n_prompts", "n_samples")
EVAL_PROMPTS, TRAIN_PROMPTS = Path("data/prompts/eval.jsonl"), Path("data/prompts/train.jsonl")
SFT_DIR, REWARD_DIR = Path("models/sft"), Path("models/reward")


def policy_dir(policy: str) -> Path:
    """``models/sft`` for ``sft``, else ``models/aligned/<policy>``."""
    if not policy or "/" in policy or policy.startswith("."):
        raise StageError(f"policy {policy!r} must be 'sft' or a variant name of align.variants")
    return SFT_DIR if policy == "sft" else Path("models/aligned") / policy


def load_policy(path: Path):
    """Load a causal LM folder and its tokenizer (eval mode), or fail with one line."""
    from stages.generation import load_causal_lm

    if not path.is_dir():
        raise StageError(f"{path}: policy folder not found (run its align/sft stage first)")
    try:
        model, tokenizer = load_causal_lm(path)
    except StageError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure means "not a causal LM"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StageError(f"{path}: not a causal LM folder ({msg[:200]})") from None
    if model.get_output_embeddings() is None:
        raise StageError(f"{path}: model has no LM head (not a causal LM)")
    return model, tokenizer


def check_held_out(eval_rows: list[dict], train_rows: list[dict]) -> int:
    """Fail if an eval prompt_id is also a train prompt_id; return how many eval prompt *texts*
    also occur among the train prompts (a shared opening of two different reviews, reported)."""
    train_ids = {r["prompt_id"] for r in train_rows}
    shared = [r["prompt_id"] for r in eval_rows if r["prompt_id"] in train_ids]
    if shared:
        raise StageError(f"{EVAL_PROMPTS}: {len(shared)} eval prompt_id(s) also in "
                         f"{TRAIN_PROMPTS} (first: {shared[0]!r}); eval prompts must be held out")
    train_texts = {r["prompt"] for r in train_rows}
    return sum(r["prompt"] in train_texts for r in eval_rows)


def pack(prompt_ids: list[list[int]], gen_ids: list[list[int]],
         pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` of prompt + generated tokens and
    ``gen_mask`` (1 at the positions of generated tokens, EOS included)."""
    rows = [(p + g, len(p)) for p, g in zip(prompt_ids, gen_ids)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    gen_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        if n_prompt < 1:
            raise ValueError(f"sequence {i} has an empty prompt")
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        gen_mask[i, n_prompt: len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "gen_mask": gen_mask}


@torch.inference_mode()
def generated_stats(model, batch: dict[str, torch.Tensor], *, chunk: int,
                    entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence: summed log π of the generated tokens, summed predictive entropy at the
    generated positions (zeros when ``entropy=False``) and the number of generated tokens.

    One decoder pass; the LM head runs on ``chunk`` predicting positions at a time."""
    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask,
                                 use_cache=False).last_hidden_state
    target = batch["gen_mask"][:, 1:].to(device).bool()      # token t+1 generated
    rows, cols = target.nonzero(as_tuple=True)                # predicted from position cols
    states, tokens = hidden[rows, cols], ids[rows, cols + 1]
    head = model.get_output_embeddings()
    logp_tok = torch.empty(len(rows), device=device)
    ent_tok = torch.zeros(len(rows), device=device)
    for s in range(0, len(rows), chunk):
        logp = torch.log_softmax(head(states[s: s + chunk]).float(), dim=-1)
        logp_tok[s: s + chunk] = logp.gather(-1, tokens[s: s + chunk, None]).squeeze(-1)
        if entropy:
            ent_tok[s: s + chunk] = -(logp.exp() * logp).sum(-1)
    n = ids.shape[0]
    zeros = torch.zeros(n, device=device)
    return (zeros.index_add(0, rows, logp_tok).cpu(), zeros.index_add(0, rows, ent_tok).cpu(),
            target.sum(-1).cpu())


def sequence_stats(model, prompt_ids: list[list[int]], gen_ids: list[list[int]], *,
                   batch_size: int, chunk: int, entropy: bool = True) -> dict[str, np.ndarray]:
    """:func:`generated_stats` over many sequences, batched by length (longest first); returns
    ``logp``, ``entropy`` (sums) and ``n`` arrays in input order."""
    order = sorted(range(len(gen_ids)), key=lambda i: -(len(prompt_ids[i]) + len(gen_ids[i])))
    out = {k: np.zeros(len(gen_ids)) for k in ("logp", "entropy", "n")}
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s: s + batch_size] if gen_ids[i]]
        if not idx:
            continue
        batch = pack([prompt_ids[i] for i in idx], [gen_ids[i] for i in idx])
        logp, ent, n = generated_stats(model, batch, chunk=chunk, entropy=entropy)
        out["logp"][idx], out["entropy"][idx], out["n"][idx] = logp.double().numpy(), \
            ent.double().numpy(), n.numpy()
    return out


def check_logits(model, batch: dict[str, torch.Tensor]) -> None:
    """Guard for :func:`generated_stats`: the LM head on the decoder's last hidden state must
    give the model's own logits (true for GPT-2, Llama, ...); checked on one sequence."""
    device = next(model.parameters()).device
    one = {k: v[:1].to(device) for k, v in batch.items()}
    with torch.inference_mode():
        full = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
        hidden = model.get_decoder()(input_ids=one["input_ids"], use_cache=False,
                                     attention_mask=one["attention_mask"]).last_hidden_state
        mine = model.get_output_embeddings()(hidden)
    if not torch.allclose(full.float(), mine.float(), atol=1e-3, rtol=1e-3):
        raise StageError(f"{type(model).__name__}: logits are not lm_head(last hidden state); "
                         f"chunked evaluation does not support this architecture")


def distinct_n(token_lists: list[list[int]], n: int) -> float:
    """Distinct n-grams / total n-grams over all lists (n-grams never cross lists); 0 if none."""
    grams = [tuple(t[i: i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_interval(per_prompt: np.ndarray | list[float], *, n_resamples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_prompt`` (resampling prompts)."""
    values = np.asarray(per_prompt, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // max(len(values), 1))          # bound the index matrix
    for s in range(0, n_resamples, step):
        m = min(step, n_resamples - s)
        means[s: s + m] = values[rng.integers(0, len(values), size=(m, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(scores: np.ndarray, gold: np.ndarray | None, stats: dict[str, np.ndarray],
              sft_logp: np.ndarray | None, completion_tokens: list[list[int]], *,
              n_resamples: int, seed: int) -> dict:
    """The flat metrics dict; ``scores``/``gold`` are [prompts, samples], ``stats`` and
    ``sft_logp`` flat over samples (prompt-major); ``sft_logp=None`` means kl = 0."""
    n_prompts, n_samples = scores.shape
    metrics = {"n_prompts": n_prompts, "n_samples": n_samples,
               "gold": None, "gold_lo": None, "gold_hi": None}
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


def _settings(params: dict) -> dict:
    ev = params.get("evaluate")
    if not isinstance(ev, dict):
        raise StageError("params: section 'evaluate' is missing")
    positive = (lambda v: v >= 1, "must be >= 1")
    out = {k: param(ev, f"evaluate.{k}", int, *positive)
           for k in ("n_prompts", "n_samples", "max_new_tokens", "batch_size", "bootstrap",
                     "logit_chunk")}
    out["seed"] = param(params, "params.seed", int)
    out["score"] = param(params.get("reward") or {}, "reward.score", str)
    out["source"] = param(params.get("data") or {}, "data.source", str)
    return out


def sample_and_score_tokens(path: Path, prompts: list[str], cfg: dict):
    """Sample from the policy at ``path``, then its log-probs and entropies (one pass) and, unless
    it is the SFT policy, the SFT log-probs of the same tokens. Returns (generations, stats,
    sft_logp or None, the tokenizer's EOS id)."""
    from stages.generation import generate_completions

    k = cfg["n_samples"]
    model, tokenizer = load_policy(path)
    gen = generate_completions(model, tokenizer, prompts, n_per_prompt=k, temperature=1.0,
                               max_new_tokens=cfg["max_new_tokens"],
                               batch_size=cfg["batch_size"], seed=cfg["seed"],
                               desc=f"evaluate {path.name}")
    prompt_ids = [p for p in tokenizer(prompts, add_special_tokens=False)["input_ids"]
                  for _ in range(k)]
    flat_gen = [g for per in gen.token_ids for g in per]
    batching = {"batch_size": cfg["batch_size"], "chunk": cfg["logit_chunk"]}
    check_logits(model, pack(prompt_ids[:1], flat_gen[:1]))
    stats = sequence_stats(model, prompt_ids, flat_gen, **batching)
    del model
    sft_logp = None
    if path.resolve() != SFT_DIR.resolve():
        sft, sft_tok = load_policy(SFT_DIR)
        if sft_tok.get_vocab() != tokenizer.get_vocab():
            raise StageError(f"{path}: tokenizer differs from {SFT_DIR}'s; kl needs the same one")
        sft_logp = sequence_stats(sft, prompt_ids, flat_gen, entropy=False, **batching)["logp"]
    return gen, stats, sft_logp, tokenizer.eos_token_id


def reward_scores(texts: list[str], cfg: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Reward-model scores of ``texts`` and, for the synthetic source, their gold scores."""
    from stages.reward import load_reward_model, score_texts

    rm, rm_tok = load_reward_model(str(REWARD_DIR))
    scores = np.asarray(score_texts(rm, rm_tok, texts, score=cfg["score"],
                                    batch_size=cfg["batch_size"]), dtype=np.float64)
    if cfg["source"] != "synthetic":
        return scores, None
    from stages.synthetic import gold_score

    return scores, np.asarray([gold_score(t) for t in texts], dtype=np.float64)


def _r(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def generation_rows(rows: list[dict], gen, scores, gold, stats, sft_logp,
                    completion_tokens: list[list[int]]) -> list[dict]:
    """``data/eval/<policy>.jsonl`` rows: the SCORED fields plus per-sample ``logp``,
    ``logp_sft`` (aligned policies), mean ``entropy`` per token, ``length`` and ``finished``."""
    k, out = len(gen.texts[0]), []
    for i, row in enumerate(rows):
        sl = slice(i * k, (i + 1) * k)
        item = {"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                "completions": gen.texts[i], "rewards": _r(scores[sl]),
                "logp": _r(stats["logp"][sl]),
                "entropy": _r(e / n if n else 0.0
                              for e, n in zip(stats["entropy"][sl], stats["n"][sl])),
                "length": [len(t) for t in completion_tokens[sl]], "finished": gen.finished[i]}
        if sft_logp is not None:
            item["logp_sft"] = _r(sft_logp[sl])
        if gold is not None:
            item["gold"] = _r(gold[sl])
        out.append(item)
    return out


def evaluate(params: dict, policy: str) -> dict:
    """Run the stage for one policy; returns the metrics it wrote."""
    cfg = _settings(params)
    path = policy_dir(policy)
    eval_rows, train_rows = read_rows(EVAL_PROMPTS, PROMPTS), read_rows(TRAIN_PROMPTS, PROMPTS)
    shared_text = check_held_out(eval_rows, train_rows)
    if cfg["n_prompts"] > len(eval_rows):
        raise StageError(f"params: evaluate.n_prompts={cfg['n_prompts']} but {EVAL_PROMPTS} "
                         f"has {len(eval_rows)} prompts")
    if not REWARD_DIR.is_dir():
        raise StageError(f"{REWARD_DIR}: reward model not found (run the reward stage)")
    rows, k = eval_rows[: cfg["n_prompts"]], cfg["n_samples"]
    prompts = [r["prompt"] for r in rows]
    gen, stats, sft_logp, eos = sample_and_score_tokens(path, prompts, cfg)
    texts = [p + c for p, per in zip(prompts, gen.texts) for c in per]
    scores, gold = reward_scores(texts, cfg)
    completion_tokens = [g[:-1] if g and g[-1] == eos else g
                         for per in gen.token_ids for g in per]
    metrics = summarize(scores.reshape(-1, k), None if gold is None else gold.reshape(-1, k),
                        stats, sft_logp, completion_tokens, n_resamples=cfg["bootstrap"],
                        seed=cfg["seed"])
    write_jsonl(Path("data/eval") / f"{policy}.jsonl",
                generation_rows(rows, gen, scores, gold, stats, sft_logp, completion_tokens))
    write_json(Path("metrics/eval") / f"{policy}.json", metrics)
    if shared_text:
        print(f"note: {shared_text} of the eval prompt texts also open a train review (different "
              f"reviews, disjoint prompt ids)", file=sys.stderr)
    return metrics


def main(policy: str = typer.Argument(..., help="'sft' or a variant name of align.variants."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Sample from a policy on held-out prompts; write reward, entropy, nll, kl, diversity."""
    metrics = evaluate(load_params(params), policy)
    gold = f", gold {metrics['gold']:.3f}" if metrics["gold"] is not None else ""
    typer.echo(f"{policy}: reward {metrics['reward']:.3f} [{metrics['reward_lo']:.3f}, "
               f"{metrics['reward_hi']:.3f}], entropy {metrics['entropy']:.3f}, "
               f"kl {metrics['kl']:.3f}{gold} -> metrics/eval/{policy}.json")
