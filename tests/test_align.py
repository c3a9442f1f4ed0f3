"""Tests of the align stage and its trainer on a micro preference set built in tmp.

    .venv/bin/python -m pytest tests/test_align.py -q

The micro project is a 1-layer, 32-wide GPT-2 with a byte-level BPE tokenizer trained on a few
sentences, 16 prompts × 4 completions scored by counting sentiment words, first-round pairs, and
reference log-probs computed with ``stages.sequences`` (what the reference stage writes).
"""
from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from stages.align import align, variant_config
from stages.common import StageError
from stages.losses import preference_loss
from stages.sequences import completion_logprobs, encode_batch
from stages.trainer import (LossConfig, PreferenceTrainer, PromptCollator, build_items,
                            disable_dropout, grouped_preference_loss)

#: Mirror of params.yaml's ``align`` section (the default variants with their real settings).
DEFAULT_ALIGN = {
    "common": {
        "optimizer": "adamw_torch", "learning_rate": 5.0e-4, "lr_scheduler": "cosine",
        "warmup_ratio": 0.1, "weight_decay": 0.0, "epochs": 2, "batch_prompts": 16,
        "eval_batch_prompts": 128, "grad_accum_steps": 1, "max_grad_norm": 1.0, "max_length": 64,
        "logging_steps": 5, "eval_steps": 40, "seed": 0,
    },
    "variants": {
        "dpo": {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.3},
        "hinge": {"loss": "hinge", "divergence": "reverse_kl", "beta": 0.3},
        "ipo": {"loss": "ipo", "divergence": "reverse_kl", "beta": 5.0, "learning_rate": 2.0e-4},
        "fkl": {"loss": "sigmoid", "divergence": "forward_kl", "beta": 0.01, "learning_rate": 3.0e-4},
        "jsd": {"loss": "sigmoid", "divergence": "jsd", "beta": 0.3},
        "alpha-0_1": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.1, "beta": 0.3},
        "alpha-0_3": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.3, "beta": 0.3},
        "alpha-0_5": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.5, "beta": 0.1,
                      "learning_rate": 3.0e-4},
        "alpha-0_7": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.7, "beta": 0.03,
                      "learning_rate": 3.0e-4},
        "alpha-0_9": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.9, "beta": 0.01,
                      "learning_rate": 3.0e-4},
    },
}

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "clumsy"]
NEUTRAL = ["the", "plot", "acting", "was", "and", "film", "story", "score", "ending", "cast"]
PROMPTS = ["The film was", "I thought the", "This movie is", "The acting in", "Overall the story"]


# ------------------------------------------------------------------------------ micro project


def _tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _rows(n_prompts: int, k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        completions, rewards = [], []
        for _ in range(k):
            words = [rng.choice(rng.choice([POSITIVE, NEGATIVE, NEUTRAL, NEUTRAL]))
                     for _ in range(rng.randint(3, 7))]
            completions.append(" " + " ".join(words) + ".")
            rewards.append(float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)))
        order = list(range(k))
        rng.shuffle(order)
        pairs = []
        for a, b in zip(order[0::2], order[1::2]):  # first-round pairs, ties dropped
            if rewards[a] != rewards[b]:
                pairs.append([a, b] if rewards[a] > rewards[b] else [b, a])
        rows.append({"prompt_id": f"p{i}", "prompt": PROMPTS[i % len(PROMPTS)],
                     "completions": completions, "rewards": rewards, "pairs": pairs,
                     "split": "val" if i % 4 == 3 else "train"})
    return rows


def make_micro_project(root: Path, n_prompts: int = 16, k: int = 4, seed: int = 0) -> list[dict]:
    """Write models/sft, data/preferences.jsonl and data/reference.jsonl under ``root``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    rows = _rows(n_prompts, k, seed)
    tokenizer = _tokenizer([r["prompt"] + c for r in rows for c in r["completions"]] * 3)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64,
                                       vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0,
                                       pad_token_id=0))
    model.eval()
    (root / "models").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root / "models/sft")
    tokenizer.save_pretrained(root / "models/sft")
    refs = []
    with torch.no_grad():
        for r in rows:
            batch = encode_batch(tokenizer, [r["prompt"]] * k, r["completions"], 64)
            logps, n = completion_logprobs(model, batch)
            refs.append({"prompt_id": r["prompt_id"], "logps": logps.tolist(), "n_tokens": n.tolist()})
    (root / "data").mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "data/preferences.jsonl", rows)
    _write_jsonl(root / "data/reference.jsonl", refs)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _params(**common) -> dict:
    """The mirrored params with test-sized common settings (variant settings untouched)."""
    align_section = copy.deepcopy(DEFAULT_ALIGN)
    align_section["common"].update({"epochs": 4, "batch_prompts": 4, "eval_batch_prompts": 8,
                                    "logging_steps": 2, "eval_steps": 6, "warmup_ratio": 0.0,
                                    "learning_rate": 3e-3, **common})
    return {"seed": 0, "align": align_section}


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models gain nothing from intra-op threads; one thread keeps timings stable on a
    shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("micro")
    make_micro_project(root)
    return root


@pytest.fixture
def project(micro, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the micro project as the working directory."""
    import shutil

    for sub in ("models", "data"):
        shutil.copytree(micro / sub, tmp_path / sub)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _dataset_loss(model_dir: Path, items: list[dict], cfg: LossConfig) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    collator = PromptCollator(AutoTokenizer.from_pretrained(model_dir), 64)
    with torch.no_grad():
        return grouped_preference_loss(model, collator(items), cfg).loss.item()


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("variant", list(DEFAULT_ALIGN["variants"]))
def test_training_lowers_loss_for_every_default_variant(project, variant):
    params = _params()
    metrics = align(variant, params)
    cfg = variant_config(params, variant)
    loss_cfg = LossConfig(cfg["loss"], cfg["divergence"], cfg["beta"], cfg["alpha"])
    items = build_items(_read_jsonl(Path("data/preferences.jsonl")),
                        _read_jsonl(Path("data/reference.jsonl")))
    train = [i for i in items if i["split"] == "train"]
    before = _dataset_loss(Path("models/sft"), train, loss_cfg)
    after = _dataset_loss(Path("models/aligned") / variant, train, loss_cfg)
    assert math.isfinite(after) and after < before, (variant, before, after)
    assert metrics["steps"] == 4 * math.ceil(len(train) / 4)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    saved = json.loads(Path(f"metrics/align/{variant}.json").read_text())
    assert saved["variant"] == variant and saved["steps"] == metrics["steps"]
    curves = Path(f"logs/align/{variant}/plots/metrics")
    assert (curves / "train/loss.tsv").is_file() and (curves / "eval/accuracy.tsv").is_file()
    assert (Path("models/aligned") / variant / "tokenizer.json").is_file()
    assert not list(Path("models/aligned").glob(".*"))  # no staging folder left


def test_grouped_forward_matches_pairwise_forward(micro):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(micro / "models/sft", dtype=torch.float32)
    disable_dropout(model)
    with torch.no_grad():  # move away from the reference so log-ratios are not all zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokenizer = AutoTokenizer.from_pretrained(micro / "models/sft")
    items = build_items(_read_jsonl(micro / "data/preferences.jsonl"),
                        _read_jsonl(micro / "data/reference.jsonl"))[:6]
    for cfg in (LossConfig("sigmoid", "alpha", 0.3, 0.5), LossConfig("ipo", "reverse_kl", 0.5)):
        model.zero_grad()
        grouped = grouped_preference_loss(model, PromptCollator(tokenizer, 64)(items), cfg).loss
        grouped.backward()
        grads = [p.grad.clone() for p in model.parameters()]

        model.zero_grad()
        losses = []
        for item in items:  # each pair forwarded on its own: 2 sequences per pair
            for w, l in item["pairs"]:
                batch = encode_batch(tokenizer, [item["prompt"]] * 2,
                                     [item["completions"][w], item["completions"][l]], 64)
                logps, n = completion_logprobs(model, batch)
                ref = torch.tensor([item["ref_logps"][w], item["ref_logps"][l]])
                losses.append(preference_loss(logps[:1], logps[1:], ref[:1], ref[1:], n[:1], n[1:],
                                              loss=cfg.loss, divergence=cfg.divergence,
                                              beta=cfg.beta, alpha=cfg.alpha).losses)
        pairwise = torch.cat(losses).mean()
        pairwise.backward()
        assert torch.allclose(grouped, pairwise, atol=1e-5, rtol=1e-5)
        for g, p in zip(grads, model.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


def test_ipo_with_an_empty_completion_stays_finite(micro):
    """Sampling can return an empty completion (0 tokens, r = 0): IPO's per-token mean is 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro / "models/sft", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(micro / "models/sft")
    item = {"prompt": "The film was", "completions": [" great fun.", ""], "pairs": [[0, 1]],
            "ref_logps": [-9.0, 0.0]}
    out = grouped_preference_loss(model, PromptCollator(tokenizer, 64)([item]),
                                  LossConfig("ipo", "reverse_kl", 0.5))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_collator_encodes_each_completion_once(micro):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro / "models/sft")
    items = build_items(_read_jsonl(micro / "data/preferences.jsonl"),
                        _read_jsonl(micro / "data/reference.jsonl"))[:3]
    items[0]["pairs"] = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]  # all 6 pairs of 4
    batch = PromptCollator(tokenizer, 64)(items)
    assert batch["input_ids"].shape[0] == sum(len(i["completions"]) for i in items)
    assert batch["chosen"].tolist()[:6] == [0, 0, 0, 1, 1, 2]
    assert batch["rejected"].tolist()[:6] == [1, 2, 3, 2, 3, 3]
    assert len(batch["chosen"]) == sum(len(i["pairs"]) for i in items)


# ------------------------------------------------------------------------------ non-finite values


def test_nan_reference_logp_stops_with_variant_and_step(micro, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.align import training_arguments, variant_config

    tokenizer = AutoTokenizer.from_pretrained(micro / "models/sft")
    items = build_items(_read_jsonl(micro / "data/preferences.jsonl"),
                        _read_jsonl(micro / "data/reference.jsonl"))
    train = [i for i in items if i["split"] == "train"]
    train[5]["ref_logps"][train[5]["pairs"][0][0]] = float("nan")  # seen in the 2nd batch of 4
    cfg = variant_config(_params(), "dpo")
    trainer = PreferenceTrainer(
        model=AutoModelForCausalLM.from_pretrained(micro / "models/sft"),
        args=training_arguments({**cfg, "epochs": 1, "batch_prompts": 4}, tmp_path / "out", "dpo", False),
        train_dataset=train, data_collator=PromptCollator(tokenizer, 64), processing_class=tokenizer,
        loss_config=LossConfig("sigmoid", "reverse_kl", 0.1), variant="dpo")
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(train)
    with pytest.raises(StageError, match=r"align@dpo: non-finite loss at step 2 "):
        trainer.train()


def test_nonfinite_loss_leaves_no_model(project, monkeypatch):
    import stages.trainer

    real = stages.trainer.preference_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the 3rd training step
            return type(out)(out.losses * float("inf"), out.chosen_rewards, out.rejected_rewards)
        return out

    monkeypatch.setattr(stages.trainer, "preference_loss", poisoned)
    with pytest.raises(StageError) as err:
        align("alpha-0_5", _params(eval_steps=100))
    msg = str(err.value)
    assert msg.startswith("align@alpha-0_5: non-finite loss at step 3 ") and "\n" not in msg
    assert not Path("models/aligned/alpha-0_5").exists()
    assert not list(Path("models/aligned").glob(".*")) if Path("models/aligned").exists() else True
    assert not Path("metrics/align/alpha-0_5.json").exists()


# ------------------------------------------------------------------------------ bad inputs


def _set(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


@pytest.mark.parametrize("variant, dotted, value, expected", [
    ("dpo", "align.variants.dpo.loss", "logistic", r"align@dpo: .*align\.variants\.dpo\.loss"),
    ("jsd", "align.variants.jsd.divergence", "tv", r"align@jsd: .*align\.variants\.jsd\.divergence"),
    ("alpha-0_5", "align.variants.alpha-0_5.alpha", 1.0,
     r"align@alpha-0_5: .*align\.variants\.alpha-0_5\.alpha"),
    ("alpha-0_1", "align.variants.alpha-0_1.alpha", 0.0, r"align@alpha-0_1: .*alpha-0_1\.alpha"),
    ("dpo", "align.variants.dpo.beta", 0.0, r"align@dpo: .*align\.variants\.dpo\.beta"),
    ("hinge", "align.variants.hinge.beta", -1.0, r"align@hinge: .*align\.variants\.hinge\.beta"),
    ("dpo", "align.common.learning_rate", -1e-3, r"align@dpo: .*align\.common\.learning_rate"),
    ("dpo", "align.common.batch_prompts", 0, r"align@dpo: .*align\.common\.batch_prompts"),
    ("dpo", "align.variants.dpo.learning_rate", "fast", r"align@dpo: .*align\.variants\.dpo\.learning_rate"),
    ("dpo", "align.variants.dpo.lr", 1e-3, r"align@dpo: .*align\.variants\.dpo\.lr .*not a known key"),
    ("fkl", "align.variants.fkl.alpha", 0.5, r"align@fkl: .*align\.variants\.fkl\.alpha"),
    ("dpo", "align.common.lr_scheduler", "zigzag", r"align@dpo: .*align\.common\.lr_scheduler"),
    ("ipo", "align.variants.ipo.divergence", "jsd", r"align@ipo: .*align\.variants\.ipo\.divergence"),
    ("dpo", "align.variants.dpo", None, r"align@dpo: .*align\.variants\.dpo\.loss is missing"),
    ("alpha-0_3", "align.variants.alpha-0_3.alpha", None,
     r"align@alpha-0_3: .*align\.variants\.alpha-0_3\.alpha: required"),
    ("dpo", "align.common.seed", "zero", r"align@dpo: .*align\.common\.seed must be int"),
])
def test_bad_params_fail_before_training(project, variant, dotted, value, expected):
    with pytest.raises(StageError, match=expected) as err:
        align(variant, _set(_params(), dotted, value))
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


@pytest.mark.parametrize("name, expected", [
    ("alpha-0.1", r"align@alpha-0\.1: variant name 'alpha-0\.1' must match .*'alpha-0_1'"),
    ("-dpo", r"align@-dpo: variant name"),
    ("dpo@2", r"align@dpo@2: variant name"),
    ("sft", r"align@sft: params: align\.variants\.sft is missing"),
])
def test_bad_variant_names(project, name, expected):
    params = _params()
    params["align"]["variants"][name] = {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1}
    if name == "sft":
        del params["align"]["variants"][name]
    with pytest.raises(StageError, match=expected):
        align(name, params)


def _edit_jsonl(path: str, edit) -> None:
    rows = _read_jsonl(Path(path))
    rows = edit(rows)
    _write_jsonl(Path(path), rows)


@pytest.mark.parametrize("path, edit, expected", [
    ("data/preferences.jsonl", lambda rows: [{**r, "pairs": []} for r in rows],
     r"align@dpo: data/preferences\.jsonl: no preference pairs in split 'train'"),
    ("data/preferences.jsonl", lambda rows: [{**r, "split": "test"} for r in rows],
     r"align@dpo: data/preferences\.jsonl: row 1: split must be"),
    ("data/reference.jsonl", lambda rows: rows[:-1],
     r"align@dpo: data/reference\.jsonl: 15 rows for 16 preferences rows"),
    ("data/reference.jsonl", lambda rows: [rows[1], rows[0], *rows[2:]],
     r"align@dpo: data/reference\.jsonl:1: row 'p1' .* does not match preferences row 'p0'"),
    ("data/reference.jsonl", lambda rows: [{**rows[0], "logps": rows[0]["logps"][:3],
                                            "n_tokens": rows[0]["n_tokens"][:3]}, *rows[1:]],
     r"align@dpo: data/reference\.jsonl:1: row 'p0' with 3 log-probs does not match .* 4 completions"),
    ("data/reference.jsonl", lambda rows: [{**rows[0], "logps": [float("nan")] * 4}, *rows[1:]],
     r"align@dpo: data/reference\.jsonl:1: logps must hold finite numbers"),
    ("data/reference.jsonl", lambda rows: [{**rows[0], "n_tokens": [n + 1 for n in rows[0]["n_tokens"]]},
                                           *rows[1:]],
     r"align@dpo: params: align\.common\.max_length=64 gives token counts"),
])
def test_bad_data_fails_before_training(project, path, edit, expected):
    _edit_jsonl(path, edit)
    with pytest.raises(StageError, match=expected) as err:
        align("dpo", _params())
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


def test_reference_truncated_by_max_length_is_detected(project):
    with pytest.raises(StageError, match=r"align@dpo: params: align\.common\.max_length=10 "):
        align("dpo", _params(max_length=10))


def test_cpu_training_is_deterministic(project):
    first = align("jsd", _params(epochs=1))
    second = align("jsd", _params(epochs=1))
    for key in ("train_loss", "val_loss", "val_accuracy", "val_margin"):
        assert first[key] == second[key], key
