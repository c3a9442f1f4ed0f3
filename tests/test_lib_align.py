"""Tests of stages.lib.align: the training settings, the prompt collator, the grouped loss, the
non-finite guard and the small helpers, on the shared tiny GPT-2 (``tiny_lm_dir``).

    .venv/bin/python -m pytest tests/test_trainer.py -q
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import WARMUP_STEPS, assert_warms_up_over, lr_schedule

from stages.lib import align as align_trainer
from stages.lib.align import (
    PreferenceTrainer,
    PromptCollator,
    TrainConfig,
    build_items,
    curriculum_order,
    disable_dropout,
    grouped_preference_loss,
    pair_sums,
    prompt_margin,
    training_arguments,
)
from stages.lib.config import load_params, read_mapping
from stages.lib.losses import preference_loss
from stages.lib.modeling import use_bf16
from stages.lib.sequences import completion_logprobs, encode_batch, reference_rows
from stages.lib.variants import LossConfig

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the film was good bad great awful plot acting boring fun dull story".split()


def common_config() -> TrainConfig:
    """``align.common`` of the repository's params.yaml, with run seed 0 (align adds the run's
    seed, ``--seed``)."""
    common = load_params(ROOT / "params.yaml")["align"]["common"]
    return read_mapping({**common, "seed": 0}, "align.common", TrainConfig)


def _rows(n_prompts: int = 16, k: int = 4, seed: int = 0, tokenizer=None) -> list[dict]:
    """Preference rows: k word-soup completions, two disjoint pairs, every 4th prompt 'val';
    with a tokenizer, their ids as sampling writes them (every other one finished with EOS)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        completions = [
            " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "."
            for _ in range(k)
        ]
        finished = [(i + j) % 2 == 0 for j in range(k)]
        if tokenizer is None:
            ids = [[j + 1] * (j + 1) for j in range(k)]
        else:
            toks = tokenizer(completions, add_special_tokens=False)["input_ids"]
            ids = [t + [tokenizer.eos_token_id] * f for t, f in zip(toks, finished)]
        pairs = [[0, 1], [3, 2]] if i % 2 else [[1, 0], [2, 3]]
        rows.append(
            {
                "prompt_id": f"p{i}",
                "prompt": "the film was",
                "completions": completions,
                "completion_ids": ids,
                "finished": finished,
                "rewards": [0.0] * k,
                "pairs": pairs,
                "split": "val" if i % 4 == 3 else "train",
            }
        )
    return rows


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture(scope="module")
def items(lm) -> list[dict]:
    """Prompt items with the tiny LM's own reference log-probs (what the reference stage writes)."""
    model, tokenizer = lm
    rows = _rows(tokenizer=tokenizer)
    refs = reference_rows(model, tokenizer, rows, batch_size=16, max_length=64, progress=False)
    return build_items(rows, refs)


# ------------------------------------------------------------------------------ TrainConfig


def test_params_align_common_is_a_train_config():
    cfg = common_config()
    assert cfg.optimizer == "adamw_torch_fused" and cfg.lr_scheduler == "cosine"
    assert isinstance(cfg.epochs, float) and isinstance(cfg.learning_rate, float)
    assert cfg.max_length == load_params(ROOT / "params.yaml")["reference"]["max_length"]


def test_training_arguments_follow_the_config(tmp_path):
    cfg = common_config()
    args = training_arguments(cfg, tmp_path, "dpo", has_eval=True)
    assert (getattr(args.optim, "value", args.optim), args.learning_rate) == (
        cfg.optimizer,
        cfg.learning_rate,
    )
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == cfg.lr_scheduler
    assert args.warmup_steps == cfg.warmup_ratio and args.weight_decay == cfg.weight_decay
    assert args.num_train_epochs == cfg.epochs
    assert args.per_device_train_batch_size == cfg.batch_prompts
    assert args.per_device_eval_batch_size == cfg.eval_batch_prompts
    assert args.gradient_accumulation_steps == cfg.grad_accum_steps
    assert args.max_grad_norm == cfg.max_grad_norm and args.logging_steps == cfg.logging_steps
    assert args.eval_steps == cfg.eval_steps and args.seed == args.data_seed == cfg.seed
    assert args.logging_first_step and not args.logging_nan_inf_filter
    assert args.run_name == "dpo" and args.output_dir == str(tmp_path)
    assert getattr(args.save_strategy, "value", args.save_strategy) == "no"
    no_eval = training_arguments(cfg, tmp_path, "dpo", has_eval=False)
    assert getattr(no_eval.eval_strategy, "value", no_eval.eval_strategy) == "no"
    assert no_eval.eval_steps is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer", "adam", "params: align.common.optimizer: must be one of "),
        ("lr_scheduler", "zigzag", "params: align.common.lr_scheduler: must be one of "),
        ("learning_rate", 0.0, "params: align.common.learning_rate: must be > 0, got 0.0"),
        ("warmup_ratio", 1.0, "params: align.common.warmup_ratio: must be in [0, 1), got 1.0"),
        ("epochs", float("inf"), "params: align.common.epochs: must be > 0, got inf"),
        ("batch_prompts", 0, "params: align.common.batch_prompts: must be >= 1, got 0"),
        ("max_grad_norm", -1, "params: align.common.max_grad_norm: must be >= 0 (0 = no clipping)"),
        ("max_length", 1, "params: align.common.max_length: must be >= 2, got 1"),
        ("seed", "zero", "params: align.common.seed: must be int, got 'zero'"),
        ("grad_accum_steps", 1.5, "params: align.common.grad_accum_steps: must be int, got 1.5"),
        (
            "curriculum",
            "easy",
            "params: align.common.curriculum: must be one of shuffle, easy_to_hard, "
            "hard_to_easy, got 'easy'",
        ),
    ],
)
def test_bad_train_settings_name_the_key(key, value, message):
    common = {**load_params(ROOT / "params.yaml")["align"]["common"], key: value}
    with pytest.raises(ValueError) as err:
        read_mapping(common, "align.common", TrainConfig)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_train_config_fields_are_documented():
    from stages.lib.config import field_docs

    assert all(doc for doc in field_docs(TrainConfig).values())


def test_a_curriculum_reads_the_items_in_turn(tmp_path):
    cfg = common_config()
    assert cfg.curriculum == "shuffle"
    assert training_arguments(cfg, tmp_path, "dpo", True).train_sampling_strategy == "random"
    for order in ("easy_to_hard", "hard_to_easy"):
        ordered = dataclasses.replace(cfg, curriculum=order)
        args = training_arguments(ordered, tmp_path, "dpo", True)
        assert args.train_sampling_strategy == "sequential"


def _margin_item(prompt_id: str, rewards: list[float], pairs: list[list[int]]) -> dict:
    return {"prompt_id": prompt_id, "rewards": rewards, "pairs": pairs}


def test_curriculum_orders_prompts_by_their_mean_reward_margin():
    items = [
        _margin_item("a", [0.0, 1.0, 2.0, 3.0], [[1, 0], [3, 2]]),  # margins 1, 1: mean 1
        _margin_item("b", [0.0, 5.0, 0.0, 0.0], [[1, 0]]),  # 5
        _margin_item("c", [2.0, 0.0, 1.5, 0.0], [[0, 1], [2, 3]]),  # 2, 1.5: mean 1.75
        _margin_item("d", [1.0, 0.0, 0.0, 0.0], [[0, 1]]),  # 1, ties with a: prompt_id order
    ]
    assert [prompt_margin(i) for i in items] == [1.0, 5.0, 1.75, 1.0]
    ids = lambda order: [i["prompt_id"] for i in curriculum_order(items, order)]  # noqa: E731
    assert ids("easy_to_hard") == ["b", "c", "a", "d"]
    assert ids("hard_to_easy") == ["a", "d", "c", "b"]
    assert ids("shuffle") == ["a", "b", "c", "d"]  # the Trainer's seeded sampler shuffles
    with pytest.raises(ValueError, match=r"^curriculum: must be one of shuffle, easy_to_hard"):
        curriculum_order(items, "random")


def test_curriculum_shuffles_within_its_difficulty_levels_by_seed():
    rng = random.Random(0)
    items = [_margin_item(f"p{i:03d}", [rng.uniform(0, 3), 0.0], [[0, 1]]) for i in range(95)]
    margins = lambda order: [prompt_margin(i) for i in order]  # noqa: E731
    for seed in (0, 1):
        order = curriculum_order(items, "easy_to_hard", seed)
        assert sorted(i["prompt_id"] for i in order) == [i["prompt_id"] for i in items]
        ranked = sorted(margins(items), reverse=True)
        bounds = [level * 95 // 10 for level in range(11)]  # levels of 9 or 10 prompts
        for lo, hi in zip(bounds, bounds[1:]):
            assert sorted(margins(order[lo:hi]), reverse=True) == ranked[lo:hi]
    first, second = (
        curriculum_order(items, "easy_to_hard", 0),
        curriculum_order(items, "easy_to_hard", 1),
    )
    assert first != second  # the seed varies the batches within a level
    assert first == curriculum_order(items, "easy_to_hard", 0)
    hard = curriculum_order(items, "hard_to_easy", 0)
    assert max(margins(hard[:9])) < min(margins(hard[-9:]))


# ------------------------------------------------------------------------------ items, collator


def test_build_items_joins_rows_and_drops_prompts_without_pairs():
    rows = _rows(4)
    rows[1]["pairs"] = []
    refs = [
        {"prompt_id": r["prompt_id"], "logps": [-1, -2, -3, -4], "n_tokens": [1, 2, 3, 4]}
        for r in rows
    ]
    items = build_items(rows, refs)
    assert [i["prompt_id"] for i in items] == ["p0", "p2", "p3"]
    assert items[0]["ref_logps"] == [-1.0, -2.0, -3.0, -4.0]
    assert all(isinstance(v, float) for v in items[0]["ref_logps"])
    assert items[0]["completion_ids"] == rows[0]["completion_ids"]
    assert items[0]["pairs"] == rows[0]["pairs"] and items[2]["split"] == "val"
    items[0]["pairs"].append([2, 1])  # copies: the rows are untouched
    assert rows[0]["pairs"] == [[1, 0], [2, 3]]
    with pytest.raises(ValueError):  # one reference row per preferences row
        build_items(rows, refs[:-1])


def _items_before_pairs_key(preferences: list[dict], reference: list[dict]) -> list[dict]:
    """build_items as it was before the ``pairs`` key (issue 29), verbatim: the no-op baseline."""
    items = []
    for pref, ref in zip(preferences, reference, strict=True):
        if not pref["pairs"]:
            continue
        items.append(
            {
                "prompt_id": pref["prompt_id"],
                "prompt": pref["prompt"],
                "completions": list(pref["completions"]),
                "completion_ids": [list(ids) for ids in pref["completion_ids"]],
                "pairs": [list(p) for p in pref["pairs"]],
                "ref_logps": [float(x) for x in ref["logps"]],
                "rewards": [float(x) for x in pref["rewards"]],
                "split": pref["split"],
            }
        )
    return items


def _ranked_rows(n_prompts: int = 24, seed: int = 3) -> list[dict]:
    """:func:`_rows` with integer rewards in [-2, 2] (ties happen), one prompt all tied and one
    with four distinct rewards; ``pairs`` are left as :func:`_rows` made them."""
    rng = random.Random(seed)
    rows = _rows(n_prompts)
    for row in rows:
        row["rewards"] = [float(rng.randint(-2, 2)) for _ in row["completions"]]
    rows[0]["rewards"] = [0.5, 0.5, 0.5, 0.5]
    rows[1]["rewards"] = [0.1, -1.0, 2.0, 0.7]
    return rows


def _refs(rows: list[dict]) -> list[dict]:
    return [{"prompt_id": r["prompt_id"], "logps": [-1.0] * 4, "n_tokens": [1] * 4} for r in rows]


def test_pairs_null_leaves_the_items_as_they_were():
    rows = _ranked_rows()
    rows[5]["pairs"] = []
    for r in rows:  # the file's pairs must be consistent with its rewards: keep the untied ones
        r["pairs"] = [[w, l] for w, l in r["pairs"] if r["rewards"][w] != r["rewards"][l]]
    refs = _refs(rows)
    before = _items_before_pairs_key(copy.deepcopy(rows), refs)
    assert build_items(rows, refs) == before
    assert build_items(rows, refs, None, 0) == before  # a global seed alone changes nothing
    assert build_items(rows, refs, pairs=None, seed=123) == before


def test_repairing_with_all_gives_every_untied_pair():
    rows = _ranked_rows()
    items = build_items(rows, _refs(rows), "all", 0)
    by_id = {i["prompt_id"]: i for i in items}
    assert "p0" not in by_id  # all four rewards tied: no pair, the prompt is dropped
    assert by_id["p1"]["pairs"] == [[0, 1], [2, 0], [3, 0], [2, 1], [3, 1], [2, 3]]  # all 6
    for row in rows:
        r = row["rewards"]
        want = {(i, j) for i in range(4) for j in range(4) if r[i] > r[j]}
        got = by_id[row["prompt_id"]]["pairs"] if row["prompt_id"] in by_id else []
        assert {tuple(p) for p in got} == want and len(got) == len(want), row["prompt_id"]
    assert {i["split"] for i in items} == {"train", "val"}  # val prompts are re-paired too
    assert len(items) == sum(len(set(r["rewards"])) > 1 for r in rows)
    with pytest.raises(ValueError, match="global seed"):
        build_items(rows, _refs(rows), "all")


@pytest.mark.parametrize("strategy", ["first_round", "tournament", "best_worst", "all"])
def test_repairing_with_the_files_strategy_gives_its_pairs_back(strategy):
    """The pairs stage's own build, then align's re-pairing with the same strategy and global
    seed: the same pairs, the same items; another global seed draws other pairs."""
    from stages.lib.config import PairsConfig
    from stages.lib.preferences import build_preferences

    scored = _ranked_rows(n_prompts=40)
    for n, r in enumerate(scored):
        del r["pairs"], r["split"]
        r["prompt"] = f"the film number {n} was"  # distinct texts: the val draw is by text
    prefs, _ = build_preferences(scored, PairsConfig(strategy=strategy, val_fraction=0.25), 7)
    assert 0 < len(prefs) < len(scored) and {p["split"] for p in prefs} == {"train", "val"}
    refs = _refs(prefs)
    assert build_items(prefs, refs, strategy, 7) == build_items(prefs, refs)
    if strategy != "all":  # the only strategy without a draw
        others = [build_items(prefs, refs, strategy, s) for s in range(8, 12)]
        assert any(o != build_items(prefs, refs) for o in others)


def test_an_unknown_pairs_strategy_names_the_key():
    common = {**load_params(ROOT / "params.yaml")["align"]["common"], "seed": 0}
    for bad in ("rso", "everything"):
        with pytest.raises(ValueError) as err:
            read_mapping({**common, "pairs": bad}, "align.common", TrainConfig)
        assert str(err.value) == (
            "params: align.common.pairs: must be null or one of first_round, tournament, "
            f"best_worst, all, got {bad!r}"
        )
    assert read_mapping({**common, "pairs": None}, "align.common", TrainConfig).pairs is None


def test_collator_encodes_each_completion_once(lm, items):
    _, tokenizer = lm
    items = [dict(i) for i in items[:3]]
    items[0]["pairs"] = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]  # all 6 pairs of 4
    batch = PromptCollator(tokenizer, 64)(items)
    assert batch["input_ids"].shape[0] == sum(len(i["completions"]) for i in items)
    assert batch["chosen"].tolist()[:6] == [0, 0, 0, 1, 1, 2]
    assert batch["rejected"].tolist()[:6] == [1, 2, 3, 2, 3, 3]
    assert batch["chosen"].tolist()[6:] == [4 + w for w, _ in items[1]["pairs"]] + [
        8 + w for w, _ in items[2]["pairs"]
    ]
    assert len(batch["chosen"]) == sum(len(i["pairs"]) for i in items)
    assert batch["ref_logps"].tolist() == pytest.approx([v for i in items for v in i["ref_logps"]])
    prompt = tokenizer(items[0]["prompt"], add_special_tokens=False)["input_ids"]
    for row, ids in enumerate(c for i in items for c in i["completion_ids"]):  # the sampled ids
        n = len(prompt) + len(ids)
        assert batch["input_ids"][row, :n].tolist() == prompt + ids
        assert batch["completion_mask"][row].sum() == len(ids)


def test_disable_dropout_zeroes_every_dropout():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_embd=16,
            n_head=2,
            vocab_size=50,
            n_positions=16,
            resid_pdrop=0.3,
            embd_pdrop=0.3,
            attn_pdrop=0.3,
        )
    )
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and any(m.p > 0 for m in dropouts)
    disable_dropout(model)
    assert all(m.p == 0.0 for m in dropouts)
    model.train()
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(x).logits, model(x).logits)  # deterministic in train mode


# ------------------------------------------------------------------------------ grouped loss


def test_fast_path_matches_the_plain_path(tiny_lm_dir, lm, items, torch_one_thread):
    """The fast step (fused GELU, head on completion positions, collator-built index) computes
    the plain step's per-pair losses and gradients to float32 rounding."""
    from stages.lib.modeling import fuse_activations

    _, tokenizer = lm
    batch = PromptCollator(tokenizer, 64)(items[:6])
    cfg = LossConfig("sigmoid", "jsd", 0.3)
    out = {}
    for fast in (False, True):
        model = _moved_model(tiny_lm_dir)
        if fast:
            fuse_activations(model)
        result = grouped_preference_loss(model, batch, cfg, packed=fast)
        result.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[fast] = result.losses.detach(), grads, model
    (plain, g_plain, m_plain), (fast, g_fast, m_fast) = out[False], out[True]
    assert type(m_plain.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    assert type(m_fast.transformer.h[0].mlp.act).__name__ == "GELUTanh"
    assert len(plain) == sum(len(i["pairs"]) for i in items[:6])
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)
    for name, g in g_plain.items():
        assert torch.allclose(g_fast[name], g, rtol=1e-4, atol=1e-6), name


def test_grouped_forward_matches_pairwise_forward(tiny_lm_dir, lm, items, torch_one_thread):
    model = _moved_model(tiny_lm_dir)
    _, tokenizer = lm
    items = items[:6]
    for cfg in (LossConfig("sigmoid", "alpha", 0.3, 0.5), LossConfig("ipo", "reverse_kl", 0.5)):
        model.zero_grad()
        grouped = grouped_preference_loss(model, PromptCollator(tokenizer, 64)(items), cfg).loss
        grouped.backward()
        grads = [p.grad.clone() for p in model.parameters()]

        model.zero_grad()
        losses = []
        for item in items:  # each pair forwarded on its own: 2 sequences per pair
            for w, l in item["pairs"]:
                batch = encode_batch(
                    tokenizer,
                    [item["prompt"]] * 2,
                    [item["completion_ids"][w], item["completion_ids"][l]],
                    64,
                )
                logps, n = completion_logprobs(model, batch)
                ref = torch.tensor([item["ref_logps"][w], item["ref_logps"][l]])
                losses.append(
                    preference_loss(
                        logps[:1], logps[1:], ref[:1], ref[1:], n[:1], n[1:], cfg
                    ).losses
                )
        pairwise = torch.cat(losses).mean()
        pairwise.backward()
        assert torch.allclose(grouped, pairwise, atol=1e-5, rtol=1e-5)
        for g, p in zip(grads, model.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


def test_ipo_with_an_empty_completion_stays_finite(tiny_lm_dir, lm):
    """Sampling can return an empty completion (0 tokens, r = 0): IPO's per-token mean is 0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    _, tokenizer = lm
    item = {
        "prompt": "the film was",
        "completions": [" great fun.", ""],
        "completion_ids": [tokenizer(" great fun.", add_special_tokens=False)["input_ids"], []],
        "pairs": [[0, 1]],
        "ref_logps": [-9.0, 0.0],
    }
    out = grouped_preference_loss(
        model, PromptCollator(tokenizer, 64)([item]), LossConfig("ipo", "reverse_kl", 0.5)
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_pair_sums_counts_pairs_and_correct_ones():
    x = torch.tensor([-1.0, -2.0, -3.0])
    out = preference_loss(
        x,
        torch.tensor([-2.0, -1.0, -4.0]),
        torch.full((3,), -2.0),
        torch.full((3,), -2.0),
        torch.ones(3),
        torch.ones(3),
        LossConfig("sigmoid", "reverse_kl", 0.5),
    )
    loss, margin, chosen, rejected, correct, n = pair_sums(out).tolist()
    assert n == 3 and correct == 2  # margins 0.5, -0.5, 0.5
    assert margin == pytest.approx(0.5) and loss == pytest.approx(out.losses.sum().item())
    assert chosen == pytest.approx(0.5 * (1 + 0 - 1)) and rejected == pytest.approx(
        0.5 * (0 + 1 - 2)
    )


# ------------------------------------------------------------------------------ step 0 under bf16


def _sharp(model):
    """A dropout-free copy of ``model`` with logits of O(10) (ln_f scaled by 15): bf16 rounding of
    its logits and hidden states is visible in the log-probs."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(15.0)
    disable_dropout(model)
    return model


def _step0(model, tokenizer, refs_rows, rows, device_type: str, prompts_per_batch: int = 4):
    """What the trainer's first steps compute under bf16 autocast, batch by batch: the loss and
    r = log π - log π_ref of every completion (in train mode, dropout off, as align runs it)."""
    items = build_items(rows, refs_rows)
    collator, losses, r = PromptCollator(tokenizer, 64), [], []
    model.train()
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
        for s in range(0, len(items), prompts_per_batch):
            batch = collator(items[s : s + prompts_per_batch])
            cfg = LossConfig("sigmoid", "reverse_kl", 0.1)
            losses.append(grouped_preference_loss(model, batch, cfg).loss.item())
            logps, _ = completion_logprobs(model, batch)
            r.append(logps.float().cpu() - batch["ref_logps"])
    model.eval()
    return losses, torch.cat(r)


@pytest.mark.parametrize("reference_batch, r_tol", [(64, 1e-5), (5, 5e-3)])
def test_untrained_policy_reproduces_the_reference_under_bf16(lm, reference_batch, r_tol):
    """Step 0 under CPU bf16 autocast, for the reference pass (``bf16=True``: what the reference
    stage does where the trainer runs bf16) and the trainer's forward: the sigmoid loss is log 2
    and r = 0 for every sequence. With the reference batched like the trainer's forward (same
    padding, same attention kernel) r agrees to float32 precision; batched differently, bf16
    rounding inside the decoder's attention differs by kernel (masked or not, batch size), which
    leaves ~1e-3 nats. The old reference pass ran in float32 (no autocast): it misses by more."""
    model, tokenizer = lm
    model = _sharp(model)
    rows = _rows(tokenizer=tokenizer)
    kw = {"batch_size": reference_batch, "max_length": 64, "progress": False}
    refs = reference_rows(model, tokenizer, rows, bf16=True, **kw)
    losses, r = _step0(model, tokenizer, refs, rows, "cpu")
    assert all(loss == pytest.approx(math.log(2), abs=1e-4) for loss in losses)
    assert r.abs().max() < r_tol, r.abs().max()
    old = reference_rows(model, tokenizer, rows, bf16=False, **kw)  # float32, as before
    _, r_old = _step0(model, tokenizer, old, rows, "cpu")
    assert r_old.abs().max() > max(2 * r_tol, 5e-3)


@pytest.mark.skipif(not use_bf16(), reason="needs a CUDA device with bf16")
def test_untrained_policy_reproduces_the_reference_on_a_bf16_gpu(lm, tmp_path):
    """The same on a GPU, as the stages run there: the reference pass with its default autocast
    (bf16 on this device) and the trainer's own (``training_arguments``: bf16); the first logged
    step of a real PreferenceTrainer has loss log 2 and zero rewards."""
    model, tokenizer = lm
    model = _sharp(model).cuda()
    rows = _rows(tokenizer=tokenizer)
    refs = reference_rows(model, tokenizer, rows, batch_size=16, max_length=64, progress=False)
    losses, r = _step0(model, tokenizer, refs, rows, "cuda")
    print(
        f"cuda bf16 step 0: max |r| {r.abs().max():.2e}, max |loss - log 2| "
        f"{max(abs(x - math.log(2)) for x in losses):.2e}"
    )
    assert all(loss == pytest.approx(math.log(2), abs=1e-4) for loss in losses)
    assert r.abs().max() < 5e-3
    cfg = dataclasses.replace(common_config(), epochs=1.0, batch_prompts=4, logging_steps=1)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(cfg, tmp_path / "out", "dpo", False),
        train_dataset=[i for i in build_items(rows, refs) if i["split"] == "train"],
        data_collator=PromptCollator(tokenizer, 64),
        processing_class=tokenizer,
        loss_config=LossConfig("sigmoid", "reverse_kl", 0.1),
        variant="dpo",
    )
    assert trainer.args.bf16
    trainer.train()
    first = next(h for h in trainer.state.log_history if "train_loss" in h)
    print(f"cuda bf16 first logged step: {first}")
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(first["train_chosen_reward"]) < 1e-3 and abs(first["train_margin"]) < 1e-3


# ------------------------------------------------------------------------------ non-finite guard


def test_nan_reference_logp_stops_with_variant_and_step(
    tiny_lm_dir, lm, items, tmp_path, torch_one_thread
):
    from transformers import AutoModelForCausalLM

    _, tokenizer = lm
    train = [dict(i, ref_logps=list(i["ref_logps"])) for i in items if i["split"] == "train"]
    train[5]["ref_logps"][train[5]["pairs"][0][0]] = float("nan")  # in the 2nd batch of 4
    cfg = dataclasses.replace(common_config(), epochs=1.0, batch_prompts=4)
    trainer = PreferenceTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        args=training_arguments(cfg, tmp_path / "out", "dpo", False),
        train_dataset=train,
        data_collator=PromptCollator(tokenizer, 64),
        processing_class=tokenizer,
        loss_config=LossConfig("sigmoid", "reverse_kl", 0.1),
        variant="dpo",
    )
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(train)
    with pytest.raises(
        FloatingPointError,
        match=r"^align@dpo: non-finite loss at step 2 of 3 "
        r"\(loss=sigmoid, divergence=reverse_kl, beta=0.1",
    ):
        trainer.train()


def test_alignment_warmup_ratio_is_a_share_of_the_steps(tmp_path):
    keys = {f.name for f in dataclasses.fields(align_trainer.TrainConfig)}
    settings = {
        **load_params(ROOT / "params.yaml")["align"]["common"],
        "seed": 0,
    }  # the seed may come from elsewhere
    settings.update(warmup_ratio=0.1, learning_rate=1e-3, lr_scheduler="cosine")
    cfg = read_mapping(
        {k: v for k, v in settings.items() if k in keys}, "align.common", align_trainer.TrainConfig
    )
    args = align_trainer.training_arguments(cfg, tmp_path, "dpo", has_eval=False)
    assert args.get_warmup_steps(WARMUP_STEPS) == 10
    assert_warms_up_over(lr_schedule(args), 1e-3, 10)


# ------------------------------------------------------------------------------ listwise losses, SFT term


def _ranked(items: list[dict]) -> list[dict]:
    """The items with distinct rewards that agree with their pairs (listwise losses rank by
    reward; the pairs only feed the logged accuracy and margin)."""
    out = []
    for item in items:
        (w0, _), (w1, _) = item["pairs"]
        rewards = [0.0, 3.0, 2.0, 1.0] if w0 == 1 else [3.0, 0.0, 1.0, 2.0]
        assert all(rewards[w] > rewards[l] for w, l in item["pairs"])
        out.append(dict(item, rewards=rewards))
    return out


def _moved_model(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    disable_dropout(model)
    with torch.no_grad():  # away from the reference: non-zero log-ratios
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_build_items_keeps_the_rewards():
    rows = _rows(2)
    rows[0]["rewards"] = [1, 2.5, -1, 0]
    refs = [{"prompt_id": r["prompt_id"], "logps": [-1] * 4, "n_tokens": [1] * 4} for r in rows]
    items = build_items(rows, refs)
    assert items[0]["rewards"] == [1.0, 2.5, -1.0, 0.0]
    assert all(isinstance(v, float) for v in items[0]["rewards"])


def test_collator_gives_each_prompt_its_rows_and_rewards(lm, items):
    _, tokenizer = lm
    ranked = _ranked(items[:3])
    ranked[1] = dict(
        ranked[1],
        completions=ranked[1]["completions"][:3],
        completion_ids=ranked[1]["completion_ids"][:3],
        ref_logps=ranked[1]["ref_logps"][:3],
        rewards=ranked[1]["rewards"][:3],
        pairs=[[1, 0]],
    )
    batch = PromptCollator(tokenizer, 64)(ranked)
    assert batch["groups"].tolist() == [[0, 1, 2, 3], [4, 5, 6, -1], [7, 8, 9, 10]]
    assert batch["rewards"].tolist() == [r for i in ranked for r in i["rewards"]]
    assert batch["input_ids"].shape[0] == 11
    no_rewards = [{k: v for k, v in i.items() if k != "rewards"} for i in ranked]
    assert "rewards" not in PromptCollator(tokenizer, 64)(no_rewards)


PAIRWISE_CONFIGS = [
    LossConfig("sigmoid", "reverse_kl", 0.1),
    LossConfig("sigmoid", "alpha", 0.3, 0.5),
    LossConfig("hinge", "forward_kl", 0.01),
    LossConfig("ipo", "reverse_kl", 0.5),
]


@pytest.mark.parametrize("cfg", PAIRWISE_CONFIGS, ids=lambda c: f"{c.loss}-{c.divergence}")
def test_pairwise_losses_are_unchanged_by_the_grouped_path(tiny_lm_dir, lm, items, cfg):
    """The original losses give bit-identical numbers: the trainer still calls preference_loss
    on the gathered pairs, and batch_loss (the listwise / SFT path) agrees bit for bit."""
    from stages.lib.losses import batch_loss

    _, tokenizer = lm
    model = _moved_model(tiny_lm_dir)
    batch = PromptCollator(tokenizer, 64)(_ranked(items[:6]))
    with torch.no_grad():
        logps, n = completion_logprobs(model, batch)
        out = grouped_preference_loss(model, batch, cfg)
    n = n.clamp(min=1)
    w, l, ref = batch["chosen"], batch["rejected"], batch["ref_logps"]
    direct = preference_loss(logps[w], logps[l], ref[w], ref[l], n[w], n[l], cfg)
    via_batch = batch_loss(logps, ref, n, w, l, cfg, batch["groups"], batch["rewards"])
    for o in (out, via_batch):
        assert torch.equal(o.losses, direct.losses)
        assert torch.equal(o.chosen_rewards, direct.chosen_rewards)
        assert torch.equal(o.rejected_rewards, direct.rejected_rewards)
        assert torch.equal(pair_sums(o), pair_sums(direct))


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig("plackett_luce", "jsd", 0.3),
        LossConfig("rrhf", sft_weight=0.5),  # sft_reduction sum: the paper's L_ft
        LossConfig("rrhf", sft_weight=0.5, sft_reduction="mean"),
        LossConfig("hinge", "reverse_kl", 0.3, sft_weight=0.5),
        LossConfig("slic_hf", margin=2.0, sft_weight=0.5),  # sum
    ],
    ids=lambda c: f"{c.loss}-{c.sft_reduction}",
)
def test_grouped_listwise_and_sft_loss_match_one_prompt_at_a_time(
    tiny_lm_dir, lm, items, cfg, torch_one_thread
):
    """The batch objective is the mean over prompts (listwise) or pairs (pairwise) plus λ·the
    NLL of the prompts' best completions, pooled per token (``sft_reduction`` mean) or summed
    per completion and averaged over the prompts (sum); computed prompt by prompt from separate
    forwards it gives the same value and gradient."""
    from stages.lib.losses import best_rows, jsd_score, plackett_luce_loss, rrhf_rank_loss

    _, tokenizer = lm
    model = _moved_model(tiny_lm_dir)
    ranked = _ranked(items[:5])
    collate = PromptCollator(tokenizer, 64)
    model.zero_grad()
    out = grouped_preference_loss(model, collate(ranked), cfg)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert out.listwise == cfg.listwise
    assert out.losses.shape == (len(ranked) if cfg.listwise else 2 * len(ranked),)

    model.zero_grad()
    per_prompt, nll, tokens = [], 0.0, 0.0
    for item in ranked:
        batch = collate([item])
        logps, n = completion_logprobs(model, batch)
        n = n.clamp(min=1)
        ref, rewards, mask = (
            batch["ref_logps"],
            batch["rewards"],
            torch.ones(1, 4, dtype=torch.bool),
        )
        if cfg.loss == "plackett_luce":
            u = cfg.beta * jsd_score(logps - ref)
            per_prompt.append(plackett_luce_loss(u[None], rewards[None], mask))
        elif cfg.loss == "rrhf":
            per_prompt.append(rrhf_rank_loss((logps / n)[None], rewards[None], mask))
        else:
            w, l = batch["chosen"], batch["rejected"]
            per_prompt.append(
                preference_loss(logps[w], logps[l], ref[w], ref[l], n[w], n[l], cfg).losses
            )
        best = best_rows(batch["groups"], rewards)
        nll = nll - logps[best].sum()
        tokens += float(n[best].sum())
    sft = nll / tokens if cfg.sft_reduction == "mean" else nll / len(ranked)
    reference = torch.cat(per_prompt).mean() + cfg.sft_weight * sft
    reference.backward()
    assert torch.allclose(out.loss, reference, rtol=1e-5, atol=1e-6)
    if cfg.sft_weight:
        assert torch.allclose(out.sft, sft.detach(), rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_pair_sums_of_a_listwise_loss_log_the_objective_per_pair():
    from stages.lib.losses import PreferenceLossOutput

    out = PreferenceLossOutput(
        torch.tensor([1.0, 3.0]),  # two prompts: objective 2
        torch.tensor([0.5, 0.1, -0.2]),  # three pairs
        torch.tensor([0.0, 0.3, 0.1]),
        listwise=True,
    )
    loss, margin, chosen, rejected, correct, n = pair_sums(out).tolist()
    assert n == 3 and loss / n == pytest.approx(2.0) and correct == 1
    assert margin == pytest.approx(0.5 - 0.2 - 0.3, abs=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [LossConfig("plackett_luce", "reverse_kl", 0.3), LossConfig("rrhf", sft_weight=1.0)],
    ids=lambda c: c.loss,
)
def test_listwise_variant_trains_a_few_steps(
    tiny_lm_dir, lm, items, tmp_path, cfg, torch_one_thread
):
    from transformers import AutoModelForCausalLM

    _, tokenizer = lm
    ranked = _ranked(items)
    train = [i for i in ranked if i["split"] == "train"]
    val = [i for i in ranked if i["split"] == "val"]
    settings = dataclasses.replace(
        common_config(),
        epochs=1.0,
        batch_prompts=4,
        eval_batch_prompts=8,
        logging_steps=1,
        eval_steps=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        optimizer="adamw_torch",
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    disable_dropout(model)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(settings, tmp_path / "out", cfg.loss, True),
        train_dataset=train,
        eval_dataset=val,
        data_collator=PromptCollator(tokenizer, 64),
        processing_class=tokenizer,
        loss_config=cfg,
        variant=cfg.loss,
        live_dir=str(tmp_path / "live"),
    )
    result = trainer.train()
    trainer.raise_if_nonfinite()
    assert result.global_step == 3
    windows = [h for h in trainer.state.log_history if "train_loss" in h]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(windows) == 3 and evals
    for h in windows:
        for key in ("train_loss", "train_accuracy", "train_margin", "train_chosen_reward"):
            assert math.isfinite(h[key]), (key, h)
        assert 0.0 <= h["train_accuracy"] <= 1.0
    assert all(math.isfinite(h["eval_loss"]) and 0 <= h["eval_accuracy"] <= 1 for h in evals)
    assert windows[-1]["train_loss"] < windows[0]["train_loss"] + 1.0
    logged = (tmp_path / "live" / "params.yaml").read_text()
    assert f"loss: {cfg.loss}" in logged and ("sft_weight" in logged) == bool(cfg.sft_weight)
