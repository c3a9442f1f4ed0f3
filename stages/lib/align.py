"""Offline preference trainer: a transformers ``Trainer`` whose dataset items are prompts.

An item is one prompt with all K of its completions (the token ids the policy sampled, EOS last
when it emitted one), the preference pairs drawn from them and their reference log-probs (from
the ``reference`` stage, so no reference model is run). The collator encodes every completion of
every prompt in the batch once with :func:`stages.lib.sequences.encode_batch` (prompt ids + the
completion's sampled ids, never its re-tokenised text); a step forwards each completion once
(:func:`stages.lib.sequences.completion_logprobs`: LM head and log-softmax in float32 under bf16
autocast, as the reference pass), gathers the pair indices from the per-sequence log-probs and
averages :func:`stages.lib.losses.preference_loss` over the pairs of the batch (a listwise loss
or an SFT term: :func:`stages.lib.losses.batch_loss` over the prompts, ranked by reward)::

    items = build_items(preference_rows, reference_rows)            # one dict per prompt
    trainer = PreferenceTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=[i for i in items if i["split"] == "train"],
        eval_dataset=[i for i in items if i["split"] == "val"],
        data_collator=PromptCollator(tokenizer, max_length=64),
        loss_config=LossConfig("sigmoid", "reverse_kl", beta=0.1), variant="dpo",
        live_dir="logs/align/dpo")
    trainer.train()        # FloatingPointError at the first non-finite loss or gradient

``args`` come from a :class:`TrainConfig` (the ``align.common`` settings a variant may override)
through :func:`training_arguments`.

Logged (DVCLive, ``Live(dir, dvcyaml=False)`` through transformers' ``DVCLiveCallback``; the
DVCLive step is the optimizer step): ``train/{loss,accuracy,margin,chosen_reward,rejected_reward}``,
``grad_norm``, ``learning_rate``, ``epoch`` and ``eval/{loss,accuracy,margin,...}``. Rewards are
the implicit β·r; accuracy is the share of pairs with r_w > r_l, which is the sign of the score
margin Δ = s(r_w) - s(r_l) for every divergence since each score s is increasing. Metrics are
summed on the device and read only when Trainer logs (no extra host sync in the step); the
non-finite guard is read every step on CPU and at every logging step on an accelerator.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from dvclive.plots import Metric
from dvclive.utils import standardize_metric_name
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import DVCLiveCallback
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from stages.lib.config import non_negative, param, positive_finite, positive_int, unit_interval
from stages.lib.losses import PreferenceLossOutput, batch_loss, preference_loss
from stages.lib.modeling import use_bf16
from stages.lib.pairs import STRATEGIES, pair_rng
from stages.lib.sequences import completion_index, completion_logprobs, encode_batch
from stages.lib.training import is_timing
from stages.lib.variants import LossConfig

#: Order of the per-pair sums kept on the device: loss, margin, chosen, rejected, correct, pairs.
_STATS = ("loss", "margin", "chosen_reward", "rejected_reward", "accuracy")
#: transformers' ``optim`` and ``lr_scheduler_type`` names.
OPTIMIZERS = tuple(sorted(o.value for o in OptimizerNames))
SCHEDULERS = tuple(sorted(s.value for s in SchedulerType))

#: Orders of the training prompts within an epoch (:func:`curriculum_order`).
CURRICULA = ("shuffle", "easy_to_hard", "hard_to_easy")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of an alignment variant: ``align.common``, any key overridable in
    ``align.variants.<name>`` (see :func:`training_arguments`)."""

    optimizer: str = param(
        "transformers `optim` name (adamw_torch, adamw_torch_fused, sgd, ...)",
        check=lambda v: v in OPTIMIZERS,
        must=f"one of {', '.join(OPTIMIZERS)}",
    )
    learning_rate: float = param(
        "peak learning rate, reached after warmup", check=positive_finite, must="> 0"
    )
    lr_scheduler: str = param(
        "transformers scheduler name (linear, cosine, ...)",
        check=lambda v: v in SCHEDULERS,
        must=f"one of {', '.join(SCHEDULERS)}",
    )
    warmup_ratio: float = param(
        "share of the optimizer steps warming the learning rate up",
        check=unit_interval,
        must="in [0, 1)",
    )
    weight_decay: float = param("AdamW decoupled weight decay", check=non_negative, must=">= 0")
    epochs: float = param(
        "passes over the training prompts (may be fractional)",
        check=lambda v: 0 < v < math.inf,
        must="> 0",
    )
    batch_prompts: int = param(
        "prompts per step and device, each with all its completions",
        check=positive_int,
        must=">= 1",
    )
    eval_batch_prompts: int = param("prompts per validation batch", check=positive_int, must=">= 1")
    grad_accum_steps: int = param(
        "micro-batches accumulated into one optimizer step", check=positive_int, must=">= 1"
    )
    max_grad_norm: float = param(
        "clip the gradient norm to this (0 = no clipping)",
        check=non_negative,
        must=">= 0 (0 = no clipping)",
    )
    max_length: int = param(
        "prompt + completion tokens (the reference stage's max_length)",
        check=lambda v: v >= 2,
        must=">= 2",
    )
    logging_steps: int = param(
        "log the training curves every N optimizer steps", check=positive_int, must=">= 1"
    )
    eval_steps: int = param(
        "evaluate on the validation prompts every N steps (and at the end)",
        check=positive_int,
        must=">= 1",
    )
    seed: int = param(
        "seeds data order and everything random in training (align sets the run's seed)",
        0,
        check=non_negative,
        must=">= 0",
    )
    curriculum: str = param(
        "order of the training prompts in every epoch: shuffle (seeded), easy_to_hard or "
        "hard_to_easy (by reward margin, see curriculum_order)",
        "shuffle",
        check=lambda v: v in CURRICULA,
        must=f"one of {', '.join(CURRICULA)}",
    )
    checkpoints: list[int] | None = param(
        "optimizer steps at which the policy is also saved (models/aligned/<v>/seed-<s>/"
        "checkpoints/step-<n>), evaluated by `evaluate` as the run's trajectory; null = none",
        None,
        check=lambda v: bool(v) and v[0] >= 1 and all(a < b for a, b in zip(v, v[1:])),
        must="null (no trajectory) or a non-empty, strictly increasing list of steps >= 1",
    )
    pairs: str | None = param(
        "re-pair every prompt's ranked completions with this strategy for this variant "
        "(equal information across losses); null = the pairs of data/preferences.jsonl",
        None,
        check=lambda v: v in STRATEGIES,
        must=f"null or one of {', '.join(STRATEGIES)}",
    )


#: The keys of :class:`TrainConfig` (``align.common`` also holds :class:`LossConfig` keys).
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def training_arguments(
    cfg: TrainConfig, output_dir: str | Path, name: str, has_eval: bool
) -> TrainingArguments:
    """TrainingArguments of a variant: Trainer's own bf16 autocast on a capable GPU, no
    checkpoints, logging from the first step, evaluation only when there is a validation split."""
    return TrainingArguments(
        output_dir=str(output_dir),
        run_name=name,
        report_to="none",
        save_strategy="no",
        optim=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_prompts,
        per_device_eval_batch_size=cfg.eval_batch_prompts,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        max_grad_norm=cfg.max_grad_norm,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps if has_eval else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # a curriculum is an order: the items come pre-sorted (curriculum_order), read in turn
        train_sampling_strategy="random" if cfg.curriculum == "shuffle" else "sequential",
        bf16=use_bf16(),  # the reference stage's autocast (stages.lib.sequences.reference_autocast)
        remove_unused_columns=False,
        label_names=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def optimizer_steps(n_items: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps of a run over ``n_items`` training prompts, counted as ``Trainer``
    counts them (batches per epoch over the accumulation steps, times the epochs, rounded up)."""
    batches = math.ceil(n_items / (cfg.batch_prompts * world_size))
    per_epoch = max(math.ceil(batches / cfg.grad_accum_steps), 1)
    return math.ceil(cfg.epochs * per_epoch)


def check_checkpoints(cfg: TrainConfig, n_steps: int, key: str) -> None:
    """Every checkpoint step lies within the run's ``n_steps`` (``key``: where
    ``checkpoints`` was set, for the message)."""
    if cfg.checkpoints and cfg.checkpoints[-1] > n_steps:
        raise ValueError(
            f"params: {key}: step {cfg.checkpoints[-1]} is beyond the run's {n_steps} optimizer "
            f"steps (epochs x ceil(train prompts / batch_prompts / grad_accum_steps))"
        )


class SaveCheckpoints(TrainerCallback):
    """Saves the policy (model and tokenizer, ``save_pretrained``) after each optimizer step
    of ``steps`` into ``<root>/step-<n>``: the run's trajectory, evaluated by ``evaluate``.
    Saving reads the weights only, so the run (its random streams, its final model) is the
    same with and without checkpoints."""

    def __init__(self, steps: list[int], root: Path, tokenizer):
        self.steps, self.root, self.tokenizer = set(steps), Path(root), tokenizer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.steps and max(self.steps) > state.max_steps:  # optimizer_steps disagrees
            raise RuntimeError(f"checkpoint steps {sorted(self.steps)} > {state.max_steps} steps")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            out = self.root / f"step-{state.global_step}"
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)


def ranking_pairs(
    rewards: list[float], prompt_id: str, strategy: str, seed: int
) -> list[list[int]]:
    """The ``[winner, loser]`` pairs of one prompt's ranked completions under ``strategy`` (a
    name of :data:`stages.lib.pairs.STRATEGIES`), drawn with the ``pairs`` stage's generator,
    (:func:`stages.lib.pairs.pair_rng`) with the global ``seed``: the strategy the
    preferences file was built with gives its pairs back (ties give no pair, as there)."""
    rng = pair_rng(seed, prompt_id)
    return [list(p) for p in STRATEGIES[strategy](rewards, rng)]


def build_items(
    preferences: list[dict],
    reference: list[dict],
    pairs: str | None = None,
    seed: int | None = None,
) -> list[dict]:
    """Join preference rows with their reference rows (same order) into prompt items; prompts
    without pairs are dropped (they add nothing to the loss). ``pairs`` (``TrainConfig.pairs``):
    None keeps each row's pairs; a strategy name rebuilds every prompt's pairs (train and val)
    from its rewards with :func:`ranking_pairs` under the global ``seed``."""
    if pairs is not None and seed is None:
        raise ValueError(f"pairs={pairs!r}: re-pairing needs the global seed")
    items = []
    for pref, ref in zip(preferences, reference, strict=True):
        if pairs is None:
            chosen = [list(p) for p in pref["pairs"]]
        else:
            chosen = ranking_pairs(pref["rewards"], pref["prompt_id"], pairs, seed)
        if not chosen:
            continue
        items.append(
            {
                "prompt_id": pref["prompt_id"],
                "prompt": pref["prompt"],
                "completions": list(pref["completions"]),
                "completion_ids": [list(ids) for ids in pref["completion_ids"]],
                "pairs": chosen,
                "ref_logps": [float(x) for x in ref["logps"]],
                "rewards": [float(x) for x in pref["rewards"]],
                "split": pref["split"],
            }
        )
    return items


def prompt_margin(item: dict) -> float:
    """Mean reward margin r_w - r_l over a prompt item's preference pairs (its difficulty: a
    large margin is an easy, clear-cut preference)."""
    rewards = item["rewards"]
    return sum(rewards[w] - rewards[l] for w, l in item["pairs"]) / len(item["pairs"])


#: Difficulty levels of a curriculum: the sorted prompts are cut into this many equal slices.
CURRICULUM_LEVELS = 10


def curriculum_order(items: list[dict], curriculum: str, seed: int = 0) -> list[dict]:
    """Training items in the order of ``curriculum``. ``shuffle`` keeps them (the Trainer's
    seeded sampler shuffles every epoch). ``easy_to_hard`` sorts by :func:`prompt_margin`
    descending (the easy-to-hard data curriculum of Xu et al. 2023, arXiv 2310.02263, with the
    reward margin as the difficulty, as Curry-DPO, arXiv 2403.07230, orders pairs by their rating
    gap), ``hard_to_easy`` ascending; the sorted prompts are cut into :data:`CURRICULUM_LEVELS`
    equal slices, each shuffled with ``seed``, so the run seed still varies the batches while
    the order goes from one difficulty level to the next. Every epoch reads this order."""
    if curriculum not in CURRICULA:
        raise ValueError(f"curriculum: must be one of {', '.join(CURRICULA)}, got {curriculum!r}")
    if curriculum == "shuffle":
        return list(items)
    sign = -1.0 if curriculum == "easy_to_hard" else 1.0
    ranked = sorted(items, key=lambda i: (sign * prompt_margin(i), i["prompt_id"]))
    rng, n, out = random.Random(seed), len(ranked), []
    for level in range(CURRICULUM_LEVELS):
        block = ranked[level * n // CURRICULUM_LEVELS : (level + 1) * n // CURRICULUM_LEVELS]
        rng.shuffle(block)
        out += block
    return out


class PromptCollator:
    """Encode every completion of every prompt in a batch once (prompt ids + sampled ids, cut
    to ``max_length``); map pairs to flat row indices.

    Returns ``input_ids``/``attention_mask``/``completion_mask`` [N, T] (N = all completions),
    ``completion_index`` (:func:`stages.lib.sequences.completion_index`, built here on the CPU),
    ``ref_logps`` [N], ``chosen``/``rejected`` [P] (rows of the winner and loser of each pair),
    ``groups`` [G, K] (the rows of each prompt, -1 padding a prompt with fewer completions) and,
    when every item has them, ``rewards`` [N] (listwise losses and the SFT term need both).
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        prompts, completions, ref_logps, chosen, rejected, groups = [], [], [], [], [], []
        for item in items:
            offset = len(completions)
            groups.append(list(range(offset, offset + len(item["completion_ids"]))))
            prompts += [item["prompt"]] * len(item["completion_ids"])
            completions += item["completion_ids"]
            ref_logps += item["ref_logps"]
            chosen += [offset + w for w, _ in item["pairs"]]
            rejected += [offset + l for _, l in item["pairs"]]
        batch = encode_batch(self.tokenizer, prompts, completions, self.max_length)
        batch["completion_index"] = completion_index(batch["completion_mask"])
        batch["ref_logps"] = torch.tensor(ref_logps, dtype=torch.float32)
        batch["chosen"] = torch.tensor(chosen, dtype=torch.long)
        batch["rejected"] = torch.tensor(rejected, dtype=torch.long)
        width = max((len(g) for g in groups), default=0)
        batch["groups"] = torch.tensor(
            [g + [-1] * (width - len(g)) for g in groups], dtype=torch.long
        )
        if all("rewards" in item for item in items):
            rewards = [float(r) for item in items for r in item["rewards"]]
            batch["rewards"] = torch.tensor(rewards, dtype=torch.float32)
        return batch


def grouped_preference_loss(
    model, batch: dict[str, torch.Tensor], config: LossConfig, *, packed: bool = True
) -> PreferenceLossOutput:
    """Forward each completion of the batch once, gather the pairs (pairwise losses) or the
    prompts' ranked completions (listwise), return the losses (:func:`stages.lib.losses.
    batch_loss`; ``packed``: see :func:`stages.lib.sequences.completion_logprobs`)."""
    logps, n_tokens = completion_logprobs(model, batch, packed=packed)
    n_tokens = n_tokens.clamp(min=1)  # an empty completion has r = 0: its per-token mean is 0 too
    device = logps.device
    ref = batch["ref_logps"].to(device)
    w, l = batch["chosen"].to(device), batch["rejected"].to(device)
    if not config.listwise and not config.sft_weight:  # the pairs alone
        return preference_loss(logps[w], logps[l], ref[w], ref[l], n_tokens[w], n_tokens[l], config)
    groups, rewards = batch.get("groups"), batch.get("rewards")
    return batch_loss(
        logps,
        ref,
        n_tokens,
        w,
        l,
        config,
        groups=None if groups is None else groups.to(device),
        rewards=None if rewards is None else rewards.to(device),
    )


def pair_sums(out: PreferenceLossOutput) -> torch.Tensor:
    """Sums over pairs of loss, reward margin, chosen and rejected reward, correct pairs; count.

    A listwise loss has one entry per prompt: its loss sum is the batch objective times the
    pairs, so the per-pair mean the trainer logs is the (pair-weighted) objective."""
    margin = out.chosen_rewards - out.rejected_rewards
    loss_sum = out.loss.detach() * margin.numel() if out.listwise else out.losses.detach().sum()
    return torch.stack(
        [
            loss_sum,
            margin.sum(),
            out.chosen_rewards.sum(),
            out.rejected_rewards.sum(),
            (margin > 0).float().sum(),
            torch.ones_like(margin).sum(),
        ]
    ).float()  # no host-to-device copy


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0, so the policy's log-probs are comparable with the
    reference's (computed in eval mode) and a step is deterministic."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class PreferenceTrainer(Trainer):
    """``Trainer`` for prompt items (see module docstring); ``loss_config`` picks the variant."""

    def __init__(
        self,
        *args,
        loss_config: LossConfig,
        variant: str,
        live_dir: str | None = None,
        packed: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.packed = packed  # False: the plain log-prob path (benchmarks compare the two)
        self.variant = variant
        self.model_accepts_loss_kwargs = (
            False  # our loss is a per-batch mean: Trainer scales for GA
        )
        self.loss_is_scaled_for_ga = False
        self._sums: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._first_bad: torch.Tensor | None = None  # [loss step, gradient step], 0 = none yet
        self.add_callback(_NonFiniteGuard(self))
        if live_dir is not None:
            live = None
            if self.is_world_process_zero():
                live = Live(live_dir, dvcyaml=False, save_dvc_exp=False, report=None)
                a = self.args
                live.log_params(
                    {
                        "variant": variant,
                        **loss_config.logged(),
                        "optimizer": getattr(a.optim, "value", a.optim),
                        "learning_rate": a.learning_rate,
                        "epochs": a.num_train_epochs,
                        "batch_prompts": a.per_device_train_batch_size,
                        "seed": a.seed,
                    }
                )
            self.add_callback(_StepAlignedDVCLive(live=live))

    # ------------------------------------------------------------------ loss and statistics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = grouped_preference_loss(model, inputs, self.loss_config, packed=self.packed)
        loss = out.loss
        split = "train" if model.training else "eval"
        with torch.no_grad():
            sums = pair_sums(out)
            self._sums[split] = sums if self._sums[split] is None else self._sums[split] + sums
            if model.training:
                self._record_bad(0, ~torch.isfinite(loss))
        return (loss, out) if return_outputs else loss

    def _record_bad(self, slot: int, bad: torch.Tensor) -> None:
        """Remember (on the device, without a sync) the first step where ``bad`` held."""
        if self._first_bad is None:
            self._first_bad = torch.zeros(2, dtype=torch.long, device=bad.device)
        step = self.state.global_step + 1
        current = self._first_bad[slot]
        self._first_bad[slot] = torch.where(
            (current == 0) & bad, torch.full_like(current, step), current
        )

    def check_gradients(self, model: nn.Module) -> None:
        """Record a non-finite gradient norm of this step (device-side, no sync)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
            self._record_bad(1, ~torch.isfinite(norm))

    def raise_if_nonfinite(self) -> None:
        """FloatingPointError naming the variant and the first step with a non-finite loss or gradient."""
        if self._first_bad is None:
            return
        loss_step, grad_step = self._first_bad.tolist()
        if not loss_step and not grad_step:
            return
        if loss_step and (not grad_step or loss_step <= grad_step):
            what, step = "loss", loss_step
        else:
            what, step = "gradient", grad_step
        c = self.loss_config
        alpha = f", alpha={c.alpha}" if c.alpha is not None else ""
        raise FloatingPointError(
            f"align@{self.variant}: non-finite {what} at step {step} of {self.state.max_steps} "
            f"(loss={c.loss}, divergence={c.divergence}, beta={c.beta}{alpha}, "
            f"learning_rate={self.args.learning_rate}); no model was written"
        )

    def _drain(self, split: str) -> dict[str, float]:
        """Reduce the accumulated sums across processes and return their per-pair means."""
        sums = self._sums[split]
        self._sums[split] = None
        if sums is None:
            return {}
        sums = self.accelerator.reduce(sums, reduction="sum").tolist()
        n = max(sums[-1], 1.0)
        return {f"{split}_{name}": value / n for name, value in zip(_STATS, sums[:-1])}

    # ------------------------------------------------------------------ logging and evaluation

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):
            logs.pop(key, None)  # timings would make the git-tracked curves differ on every run
        if "train_runtime" in logs:  # the end-of-training summary: run-mean loss
            logs["train_loss_mean"] = logs.pop("train_loss", float("nan"))
        elif "loss" in logs:  # a training window: exact pair-weighted means instead
            logs.pop("loss")
            logs.update(self._drain("train"))
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        self._sums["eval"] = None
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        for key, value in self._drain("eval").items():  # pair-weighted, replaces the batch mean
            output.metrics[f"{metric_key_prefix}_{key.removeprefix('eval_')}"] = value
        return output


class _NonFiniteGuard(TrainerCallback):
    """Checks gradients before each optimizer step and reads the guard when syncing is cheap."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainer.check_gradients(model)

    def on_step_end(self, args, state, control, **kwargs):
        every = max(int(args.logging_steps), 1)
        if (
            args.device.type == "cpu"
            or state.global_step % every == 0
            or state.global_step >= state.max_steps
        ):
            self.trainer.raise_if_nonfinite()


class _StepAlignedDVCLive(DVCLiveCallback):
    """transformers' DVCLive callback with the DVCLive step set to the optimizer step, so the
    train and eval curves share an x axis; the end-of-run summary goes to metrics.json only."""

    def setup(self, args, state, model):
        # The parent dumps all ~150 TrainingArguments as params, which DVCLive then re-parses at
        # every step; the trainer logs the variant's own settings instead.
        self._initialized = True

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or self.live is None:
            return
        self.live.step = state.global_step
        if "train_runtime" in (logs or {}):
            for key, value in logs.items():  # timings go to logs/timings: logs/ is deterministic
                if Metric.could_log(value) and not is_timing(key):
                    self.live.log_metric(
                        standardize_metric_name(key, "dvclive.huggingface"), value, plot=False
                    )
            self.live.make_summary()
            return
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)
