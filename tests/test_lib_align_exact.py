"""Exact checks of the trainer's arithmetic on the CPU in float32 (stages.lib.align): the logged
metrics (the first window of an untrained policy is log 2, every window is the mean of its own
steps, ``evaluate()`` is the pair-weighted mean over the validation pairs), gradient
accumulation, and the non-finite gradient guard through the align stage.

    .venv/bin/python -m pytest tests/test_lib_align_exact.py -q
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_align import _params, make_micro_project
from test_lib_align import _moved_model, _rows, common_config

import stages.align
from stages.lib.align import (
    PreferenceTrainer,
    PromptCollator,
    build_items,
    disable_dropout,
    training_arguments,
)
from stages.lib.sequences import reference_rows
from stages.lib.variants import LossConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DPO = LossConfig("sigmoid", "reverse_kl", 0.1)
#: Every pair of 4 completions, winner first (a prompt's pairs are a prefix of it).
ALL_PAIRS = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


class RecordingTrainer(PreferenceTrainer):
    """A PreferenceTrainer that keeps, for each training micro-batch, the optimizer step it
    belongs to and the per-pair loss outputs (what the logged windows must average)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, object]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, out = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            self.seen.append((self.state.global_step + 1, out))
        return (loss, out) if return_outputs else loss


def _policy(tiny_lm_dir):
    """The tiny LM in float32 with dropout off, as align trains it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    disable_dropout(model)
    return model


def _items(model, tokenizer, n_prompts: int) -> list[dict]:
    """Prompt items of :func:`test_lib_align._rows` with ``model``'s float32 log-probs as the
    reference (so ``model`` itself is the untrained policy)."""
    assert next(model.parameters()).dtype == torch.float32
    rows = _rows(n_prompts, tokenizer=tokenizer)
    kw = {"batch_size": 16, "max_length": 64, "progress": False, "bf16": False}
    return build_items(rows, reference_rows(model, tokenizer, rows, **kw))


def _trainer(model, tokenizer, tmp_path, train, val=None, cls=PreferenceTrainer, **settings):
    """A trainer on the CPU in float32, constant learning rate, items read in order."""
    base = {"epochs": 1.0, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_grad_norm": 0.0}
    cfg = dataclasses.replace(common_config(), **{**base, **settings})
    trainer = cls(
        model=model,
        args=training_arguments(cfg, tmp_path / "out", "dpo", val is not None),
        train_dataset=train,
        eval_dataset=val,
        data_collator=PromptCollator(tokenizer, 64),
        processing_class=tokenizer,
        loss_config=DPO,
        variant="dpo",
    )
    assert not trainer.args.bf16 and next(model.parameters()).dtype == torch.float32
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(train)
    return trainer


def _means(outs) -> dict[str, float]:
    """Per-pair means of loss outputs, pooled over their pairs (float64)."""
    loss = torch.cat([o.losses.detach() for o in outs]).double()
    chosen = torch.cat([o.chosen_rewards.detach() for o in outs]).double()
    rejected = torch.cat([o.rejected_rewards.detach() for o in outs]).double()
    margin = chosen - rejected
    return {
        "loss": loss.mean().item(),
        "margin": margin.mean().item(),
        "chosen_reward": chosen.mean().item(),
        "rejected_reward": rejected.mean().item(),
        "accuracy": (margin > 0).double().mean().item(),
    }


# ------------------------------------------------------------------------------ logged windows


def test_logged_windows_start_at_log_2_and_average_their_own_steps(tiny_lm_dir, tiny_lm, tmp_path):
    """The untrained policy is its own reference: every margin is 0 and the first logged loss
    is log 2. Each logged window (steps 1, 2-3, 4-6) is the pair-weighted mean of its own steps'
    pairs, not a running mean since the start."""
    _, tokenizer = tiny_lm
    model = _policy(tiny_lm_dir)
    train = [i for i in _items(model, tokenizer, 16) if i["split"] == "train"]
    for j, item in enumerate(train):  # 1 to 3 pairs per prompt: pair-weighted != prompt-weighted
        item["pairs"] = ALL_PAIRS[: j % 3 + 1]
    trainer = _trainer(
        model,
        tokenizer,
        tmp_path,
        train,
        cls=RecordingTrainer,
        batch_prompts=2,
        logging_steps=3,
        optimizer="adamw_torch",
        learning_rate=1e-2,
    )
    trainer.train()
    windows = [h for h in trainer.state.log_history if "train_loss" in h]
    assert [h["step"] for h in windows] == [1, 3, 6]
    first = windows[0]
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("train_margin", "train_chosen_reward", "train_rejected_reward"):
        assert abs(first[key]) < 1e-6, (key, first)
    for h, steps in zip(windows, ([1], [2, 3], [4, 5, 6])):
        want = _means([out for step, out in trainer.seen if step in steps])
        got = {key: h[f"train_{key}"] for key in want}
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (steps, got, want)
    running = _means([out for step, out in trainer.seen if step <= 3])  # what it must not be
    assert abs(running["loss"] - windows[1]["train_loss"]) > 1e-4
    assert abs(running["chosen_reward"] - windows[1]["train_chosen_reward"]) > 1e-2


# ------------------------------------------------------------------------------ evaluate()


def _logprob(model, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """log π(ids | prompt): one sequence, no padding, log-softmax in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)[len(prompt_ids) - 1 : -1]
    return logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum()


def test_evaluate_is_the_pair_weighted_mean_over_the_validation_pairs(
    tiny_lm_dir, tiny_lm, tmp_path
):
    """``evaluate()`` gives the DPO loss, accuracy and margin averaged over every validation
    pair, computed here one sequence at a time, with 5 prompts of 1-3 pairs in batches of 2
    (batches of 3, 4 and 2 pairs: a mean of batch means would differ)."""
    reference, tokenizer = tiny_lm
    items = _items(reference, tokenizer, 20)
    val = [i for i in items if i["split"] == "val"]
    for j, item in enumerate(val):
        item["pairs"] = ALL_PAIRS[: j % 3 + 1]
    assert [len(i["pairs"]) for i in val] == [1, 2, 3, 1, 2]
    policy = _moved_model(tiny_lm_dir)  # away from the reference: margins of both signs
    train = [i for i in items if i["split"] == "train"]
    trainer = _trainer(policy, tokenizer, tmp_path, train, val, eval_batch_prompts=2)
    metrics = trainer.evaluate()

    policy.eval()
    batch_losses, losses, margins = [], [], []
    for start in range(0, len(val), 2):
        in_batch = []
        for item in val[start : start + 2]:
            prompt = tokenizer(item["prompt"], add_special_tokens=False)["input_ids"]
            r = [
                _logprob(policy, prompt, ids) - ref
                for ids, ref in zip(item["completion_ids"], item["ref_logps"])
            ]
            for w, l in item["pairs"]:
                margin = DPO.beta * (r[w] - r[l])
                margins.append(margin.item())
                in_batch.append(-F.logsigmoid(margin).item())
        losses += in_batch
        batch_losses.append(sum(in_batch) / len(in_batch))
    n = len(margins)
    assert n == 9 and 0 < sum(m > 0 for m in margins) < n
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / n, rel=1e-5)
    assert metrics["eval_margin"] == pytest.approx(sum(margins) / n, rel=1e-4, abs=1e-7)
    assert metrics["eval_accuracy"] == sum(m > 0 for m in margins) / n
    batch_mean = sum(batch_losses) / len(batch_losses)
    assert abs(batch_mean - sum(losses) / n) > 1e-4  # the batch-mean mix-up would be caught


# ------------------------------------------------------------------------------ accumulation


def test_accumulating_two_batches_of_two_equals_one_batch_of_four(tiny_lm_dir, tiny_lm, tmp_path):
    """One SGD step on 4 prompts (2 pairs each) with accumulation 1 gives the weights of 2
    prompts per batch with accumulation 2: Trainer divides each micro-batch's mean loss by the
    accumulation steps, and our loss must not be scaled again (or not at all)."""
    _, tokenizer = tiny_lm
    start = _policy(tiny_lm_dir)
    train = [i for i in _items(start, tokenizer, 8) if i["split"] == "train"][:4]
    weights = {}
    for batch, accumulation in ((4, 1), (2, 2)):
        model = _policy(tiny_lm_dir)
        trainer = _trainer(
            model,
            tokenizer,
            tmp_path / str(accumulation),
            train,
            batch_prompts=batch,
            grad_accum_steps=accumulation,
            optimizer="sgd",
            learning_rate=1.0,
        )
        trainer.train()
        assert trainer.state.global_step == 1
        weights[accumulation] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = start.state_dict()
    moved = max((weights[1][k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-3  # the step is far above float32 rounding
    for name, value in weights[1].items():
        assert torch.allclose(weights[2][name], value, rtol=1e-5, atol=1e-6), name


# ------------------------------------------------------------------------------ gradient guard


def test_an_infinite_gradient_stops_align_naming_the_step_and_writes_no_model(
    tmp_path, monkeypatch
):
    """A backward hook makes one weight's gradient infinite at step 2 while the loss stays
    finite: align stops with the guard's one-line error naming the gradient and step 2, and no
    model, staging folder or metrics file is left."""
    make_micro_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    real, calls = stages.align.load_causal_lm, {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return torch.full_like(grad, math.inf) if calls["n"] == 2 else grad

    def load_with_hook(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        model.transformer.h[0].mlp.c_fc.weight.register_hook(poison)
        return model, tokenizer

    monkeypatch.setattr(stages.align, "load_causal_lm", load_with_hook)
    params = _params(epochs=1, eval_steps=100)
    train = sum(
        '"split": "train"' in line and '"pairs": []' not in line
        for line in Path("data/preferences.jsonl").read_text().splitlines()
    )
    with pytest.raises(FloatingPointError) as err:
        stages.align.align("dpo", params)
    _, loss = stages.align.variant_config(params, "dpo")
    assert str(err.value) == (
        f"align@dpo-0: non-finite gradient at step 2 of {math.ceil(train / 4)} "
        f"(loss={loss.loss}, divergence={loss.divergence}, beta={loss.beta}, "
        f"learning_rate=0.003); no model was written"
    )
    assert calls["n"] == 2  # stopped at the step it happened
    aligned = Path("models/aligned")
    assert not (aligned / "dpo/seed-0").exists() and not list(aligned.rglob(".*"))  # no staging
    assert not [p for p in aligned.rglob("*") if p.is_file()]
    assert not Path("metrics/align/dpo/seed-0.json").exists()
