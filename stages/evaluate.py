"""``evaluate``: sample from one policy on held-out prompts and measure reward, entropy, KL,
once per run seed.

Reads ``evaluate.*``, ``reward.score`` and ``data.source`` from params.yaml (and ``seeds`` when
``--seed`` is not given), the policy (``models/sft``, or ``models/aligned/<policy>/seed-<s>``
trained with the same seed), ``models/sft`` (for ``kl``), ``models/reward`` and
``data/prompts/{eval,train}.jsonl`` (and ``data/prepared/test.jsonl`` for the fixed contexts);
writes ``metrics/eval/<policy>/seed-<s>.json`` and
``data/eval/<policy>/seed-<s>.jsonl``::

    python -m stages evaluate sft --seed 1   # or: dvc repro evaluate-sft@1
    python -m stages evaluate dpo --seed 1   # or: dvc repro evaluate@dpo-1
    python -m stages evaluate dpo            # --seed defaults to the first of `seeds`
    python -m stages evaluate my-dpo --external --seed 0   # models/external/my-dpo: any causal
                                             # LM with the SFT tokenizer (evaluate-external@<name>-<s>)
    python -m stages evaluate sft --no-reward   # no reward model: reward not available (null)

Every policy samples ``evaluate.n_samples`` completions of each of the first
``evaluate.n_prompts`` eval prompts at temperature 1 with top-k and top-p off (the estimates
describe the policy itself). The run's seed is the sampling seed and the bootstrap seed: every
policy of one seed (``sft`` included, evaluated once per seed) is sampled under the same seed,
so policies are compared on common random numbers, and a seed's evaluation samples differ from
another seed's. Definitions (DESIGN.md §6):

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
  means, seeded by the run's seed; the report's intervals also cover seeds). ``gold`` needs a
  gold scorer: it is null unless ``data.source`` is ``synthetic``.
* ``distinct_1``/``distinct_2``: distinct n-grams / n-grams over the completions' tokens (EOS
  excluded; bigrams never cross completions); ``length``: mean completion tokens (EOS excluded).
* ``entropy_first_k`` and ``context_entropy``: entropy that does not depend on the sample
  lengths: the predictive entropy at the first ``evaluate.entropy_first_k`` generated positions
  of each sample, and teacher-forced on fixed held-out text, the same tokens for every policy
  (the first ``evaluate.fixed_contexts`` eval prompts, each followed by up to
  ``evaluate.max_new_tokens`` tokens of its own test review from ``data/prepared/test.jsonl``);
  both token-weighted, with per-sample (first-k) and per-prompt (context) values in the samples
  file so that ``frontier`` bootstraps them.

The compute (sampling, the log-probs and entropies, reward scoring, the summary) is in
:mod:`stages.lib.evaluate`: the policy is loaded once and tokenises the prompts once; one
scoring pass gives nll, kl's policy half, entropy and entropy_first_k, and the same model then
scores the fixed contexts. The LM head is applied only at the positions that predict generated
tokens, ``evaluate.logit_chunk`` rows at a time, so the float32 logits held at once are
``logit_chunk × vocab`` (512 × 50257 ≈ 100 MB), never [B, T, V]. The metrics file holds no
timings.

**External policies** (``--external``): the folder ``models/external/<name>`` holds any Hugging
Face causal LM trained elsewhere (e.g. by trl) that shares the SFT policy's tokenizer (same
tokens, ids and EOS: checked first, a one-line error naming the folder and what differs); it is
evaluated like an aligned policy (``kl`` against ``models/sft``), once per run seed.

**Without a reward model** (``--no-reward``, e.g. in the ``byo/`` pipeline): nothing reads
``models/reward``, ``reward.*`` or ``data.*``; entropy, nll, kl, distinct-n and length are
measured as always, and ``reward`` (``gold``) and their intervals are null: the report shows
them as "n/a", never as 0.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import typer

from stages.lib import paths
from stages.lib.common import atomic_path, write_json, write_jsonl, write_timings
from stages.lib.config import (
    DataConfig,
    EvaluateConfig,
    RewardConfig,
    load_params,
    read_section,
    run_seed,
)
from stages.lib.contracts import PREPARED, PROMPTS, read_rows
from stages.lib.evaluate import (
    entropy_fields,
    fixed_contexts,
    reward_scores,
    sample_and_score,
    summarize,
)
from stages.lib.modeling import check_same_tokenizer
from stages.lib.quality import QualityConfig
from stages.lib.quality_reference import Spaces, measure_run


def policy_dir(policy: str, seed: int) -> Path:
    """``models/sft`` for ``sft``, else ``models/aligned/<policy>/seed-<s>``."""
    if not policy or "/" in policy or policy.startswith("."):
        raise ValueError(f"policy {policy!r} must be 'sft' or a variant name of align.variants")
    return paths.policy_model(policy, seed)


def check_held_out(eval_rows: list[dict], train_rows: list[dict]) -> None:
    """Fail if an eval prompt shares its prompt_id or its text (whitespace-normalised,
    case-sensitive) with a train prompt: the policies were trained on the train prompts."""
    train_ids = {r["prompt_id"] for r in train_rows}
    train_texts = {" ".join(r["prompt"].split()) for r in train_rows}
    for field, shared in (
        ("prompt_id", [r["prompt_id"] for r in eval_rows if r["prompt_id"] in train_ids]),
        (
            "text",
            [r["prompt_id"] for r in eval_rows if " ".join(r["prompt"].split()) in train_texts],
        ),
    ):
        if shared:
            raise ValueError(
                f"{paths.EVAL_PROMPTS}: {len(shared)} eval prompt(s) share their {field} with "
                f"a prompt of {paths.TRAIN_PROMPTS} (first: {shared[0]!r}); eval prompts must "
                f"be held out (re-run prepare)"
            )


def _r(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def generation_rows(
    rows: list[dict], gen, scores, gold, stats, sft_logp, completion_tokens: list[list[int]]
) -> list[dict]:
    """``data/eval/<policy>/seed-<s>.jsonl`` rows: the SCORED fields plus per-sample ``logp``,
    ``logp_sft`` (aligned policies), mean ``entropy`` per generated position, ``n_generated``
    (generated positions, EOS included: the weights of the token-weighted entropy), ``length``
    (EOS excluded) and ``finished``."""
    k, out = len(gen.texts[0]), []
    for i, row in enumerate(rows):
        sl = slice(i * k, (i + 1) * k)
        item = {
            "prompt_id": row["prompt_id"],
            "prompt": row["prompt"],
            "completions": gen.texts[i],
            **({} if scores is None else {"rewards": _r(scores[sl])}),
            "logp": _r(stats["logp"][sl]),
            "entropy": _r(
                e / n if n else 0.0 for e, n in zip(stats["entropy"][sl], stats["n"][sl])
            ),
            "n_generated": [int(n) for n in stats["n"][sl]],
            "length": [len(t) for t in completion_tokens[sl]],
            "finished": gen.finished[i],
        }
        if sft_logp is not None:
            item["logp_sft"] = _r(sft_logp[sl])
        if gold is not None:
            item["gold"] = _r(gold[sl])
        out.append(item)
    return out


def external_dir(name: str) -> Path:
    """``models/external/<name>``: an external policy's folder (``--external``)."""
    if not name or "/" in name or name.startswith(".") or name == "sft":
        raise ValueError(f"external policy {name!r} must be a folder name under models/external")
    return paths.external_model(name)


def evaluate(
    params: dict,
    policy: str,
    seed: int | None = None,
    *,
    reward: bool = True,
    external: bool = False,
) -> dict:
    """Run the stage for one policy and run seed (default: the first of ``seeds``); returns
    the metrics it wrote. ``reward=False``: no reward model (reward not available);
    ``external``: the policy is ``models/external/<policy>`` (same tokenizer as models/sft)."""
    cfg, seed = read_section(params, "evaluate", EvaluateConfig), run_seed(params, seed)
    score = read_section(params, "reward", RewardConfig).score if reward else None
    source = read_section(params, "data", DataConfig).source if reward else None
    path = external_dir(policy) if external else policy_dir(policy, seed)
    if external:
        check_same_tokenizer(path, paths.SFT_DIR)
    eval_rows = read_rows(paths.EVAL_PROMPTS, PROMPTS)
    train_rows = read_rows(paths.TRAIN_PROMPTS, PROMPTS)
    check_held_out(eval_rows, train_rows)
    if cfg.n_prompts > len(eval_rows):
        raise ValueError(
            f"params: evaluate.n_prompts: must be <= the {len(eval_rows)} prompts "
            f"of {paths.EVAL_PROMPTS}, got {cfg.n_prompts}"
        )
    if reward and not paths.REWARD_DIR.is_dir():
        raise FileNotFoundError(
            f"{paths.REWARD_DIR}: reward model not found (run the reward stage)"
        )
    quality = read_section(params, "quality", QualityConfig) if "quality" in params else None
    spaces = (  # read before sampling: a stale or missing reference fails fast
        Spaces.read(paths.QUALITY_SPACES, quality, paths.SFT_DIR)
        if quality is not None and quality.measures
        else None
    )
    rows = eval_rows[: cfg.n_prompts]
    contexts = (  # the first min(fixed_contexts, n_prompts) prompts
        fixed_contexts(rows, read_rows(paths.PREPARED_TEST, PREPARED), n=cfg.fixed_contexts)
        if cfg.fixed_contexts
        else []
    )
    measure = partial(
        measure_policy,
        rows=rows,
        contexts=contexts,
        cfg=cfg,
        seed=seed,
        score=score,
        source=source,
        spaces=spaces,
        quality=quality,
    )
    start = time.time()
    metrics, out_rows = measure(path)
    final_s = time.time() - start
    steps = [] if external or policy == "sft" else checkpoint_steps(path)
    trajectory = {step: measure(path / paths.CHECKPOINTS / f"step-{step}") for step in steps}
    write_timings(  # what the trajectory costs beside the final policy's measurement
        f"evaluate-{policy}-{seed}",
        {
            "final_s": final_s,
            "checkpoints": len(steps),
            "trajectory_s": time.time() - start - final_s,
        },
    )
    if not (external or policy == "sft"):
        write_trajectory(policy, seed, trajectory)
    write_jsonl(paths.eval_samples(policy, seed), out_rows)
    write_json(paths.eval_metrics(policy, seed), metrics)
    return metrics


def measure_policy(
    path: Path, *, rows, contexts, cfg: EvaluateConfig, seed: int, score, source, spaces, quality
) -> tuple[dict, list[dict]]:
    """The metrics and the samples-file rows of the policy saved at ``path`` on the eval
    prompts ``rows`` (one definition for a run's final policy and its checkpoints)."""
    prompts, k = [r["prompt"] for r in rows], cfg.n_samples
    scored = sample_and_score(path, prompts, cfg, seed=seed, contexts=contexts)
    gen, stats, sft_logp, eos = scored.gen, scored.stats, scored.sft_logp, scored.eos
    texts = [p + c for p, per in zip(prompts, gen.texts) for c in per]
    scores, gold = (
        reward_scores(texts, score=score, source=source, batch_size=cfg.batch_size)
        if score is not None
        else (None, None)
    )
    completion_tokens = [g[:-1] if g and g[-1] == eos else g for per in gen.token_ids for g in per]
    metrics = summarize(
        None if scores is None else scores.reshape(-1, k),
        None if gold is None else gold.reshape(-1, k),
        stats,
        sft_logp,
        completion_tokens,
        n_resamples=cfg.bootstrap,
        seed=seed,
        samples_per_prompt=k,
    )
    fields, entropy_metrics = entropy_fields(stats, scored.context, k, len(rows))
    metrics.update(entropy_metrics)  # entropy_first_k, context_entropy, context_tokens
    if spaces is not None:
        completions = [c for per in gen.texts for c in per]
        q_fields, metrics["quality"] = measure_run(spaces, texts, completions, k, quality, seed)
        for extra, q in zip(fields, q_fields):
            extra["quality"] = q
    out_rows = generation_rows(rows, gen, scores, gold, stats, sft_logp, completion_tokens)
    for row, extra in zip(out_rows, fields):
        row.update(extra)
    return metrics, out_rows


def checkpoint_steps(path: Path) -> list[int]:
    """The steps of the checkpoints saved in an align run's folder (``checkpoints/step-<n>``,
    ``align.common.checkpoints``), ascending; none when it has no such folder."""
    root = Path(path) / paths.CHECKPOINTS
    if not root.is_dir():
        return []
    steps = []
    for sub in root.iterdir():
        prefix, _, n = sub.name.partition("-")
        if prefix != "step" or not n.isdigit() or not sub.is_dir():
            raise ValueError(f"{sub}: not a checkpoint folder step-<n> (re-run align)")
        steps.append(int(n))
    return sorted(steps)


def write_trajectory(policy: str, seed: int, trajectory: dict[int, tuple[dict, list[dict]]]):
    """``data/trajectory/<policy>/seed-<s>/``, written whole or not at all: one
    ``step-<n>.jsonl`` per checkpoint (rows as ``data/eval``) and ``summary.json`` (the steps,
    ascending, and each checkpoint's metrics; ``steps: []`` for a run without checkpoints)."""
    final = paths.trajectory_dir(policy, seed)
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        for step, (_, rows) in trajectory.items():
            write_jsonl(tmp / f"step-{step}.jsonl", rows)
        summary = {
            "variant": policy,
            "seed": seed,
            "steps": sorted(trajectory),
            "checkpoints": {str(n): trajectory[n][0] for n in sorted(trajectory)},
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def main(
    policy: str = typer.Argument(..., help="'sft' or a variant name of align.variants."),
    seed: int | None = typer.Option(
        None,
        "--seed",
        min=0,
        help="Run seed: the policy models/aligned/<policy>/seed-<s> (sft: models/sft), the "
        "sampling and bootstrap seed. Default: the first of `seeds`.",
    ),
    params: Path = typer.Option(Path("params.yaml"), help="Params file to read."),
    no_reward: bool = typer.Option(
        False,
        "--no-reward",
        help="No reward model: measure entropy, nll, kl and distinct-n only; reward is "
        "reported as not available.",
    ),
    external: bool = typer.Option(
        False,
        "--external",
        help="The policy is the folder models/external/<policy>: any causal LM sharing the "
        "SFT tokenizer, trained elsewhere.",
    ),
) -> None:
    """Sample from a policy on held-out prompts; write reward, entropy, nll, kl, diversity."""
    values = load_params(params)
    seed = run_seed(values, seed)
    metrics = evaluate(values, policy, seed, reward=not no_reward, external=external)
    gold = f", gold {metrics['gold']:.3f}" if metrics["gold"] is not None else ""
    reward = (
        "reward n/a (no reward model)"
        if metrics["reward"] is None
        else f"reward {metrics['reward']:.3f} [{metrics['reward_lo']:.3f}, "
        f"{metrics['reward_hi']:.3f}]"
    )
    typer.echo(
        f"{policy} (seed {seed}): {reward}, entropy {metrics['entropy']:.3f}, "
        f"kl {metrics['kl']:.3f}{gold} -> {paths.eval_metrics(policy, seed)}"
    )
