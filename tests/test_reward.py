"""The ``reward`` stage and :func:`stages.reward.score_texts`, on micro corpora, 1-layer models.

Every test runs the stage in ``tmp_path`` (never touching the repository's data) and loads
models from folders through the same ``from_pretrained`` code path a hub id uses.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from stages.common import StageError
from stages.modeling import load_pretrained, save_pretrained, tiny_classifier, train_bpe_tokenizer
from stages.reward import load_reward_model, run_reward, score_texts

TINY = {"vocab_size": 300, "n_layers": 1, "dim": 32, "n_heads": 2,
        "max_position_embeddings": 128, "dropout": 0.0}
GOOD = "great wonderful brilliant superb moving delightful charming".split()
BAD = "awful boring terrible dull clumsy dreadful tedious".split()
ASPECTS = ["The acting", "The plot", "The score", "The ending", "The dialogue", "The pacing"]
FILLER = ["It runs two hours.", "It was shot in Rome.", "The cast is large.", "I saw it twice."]
POSITIVE = "The plot was wonderful and the acting was superb. I loved it."
NEGATIVE = "The plot was dreadful and the acting was boring. I hated it."


def polar_rows(n: int, seed: int) -> list[dict]:
    """Short reviews whose sentiment words all share the label's polarity."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = GOOD if label else BAD
        aspects = rng.sample(ASPECTS, rng.randint(1, 3))
        sentences = [f"{a} was {rng.choice(words)}." for a in aspects]
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(FILLER))
        rows.append({"text": " ".join(sentences), "label": label})
    return rows


def write_corpus(root, n_train: int = 120, n_test: int = 40, seed: int = 0) -> list[str]:
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = polar_rows(n_train, seed), polar_rows(n_test, seed + 1)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["text"] for r in train]


def reward_params(**overrides) -> dict:
    reward = {"model": "tiny", "score": "logit", "epochs": 4, "max_length": 64,
              "max_train_texts": None, "batch_size": 8, "learning_rate": 3.0e-3, "warmup": 0.0,
              "weight_decay": 0.0, "logging_steps": 1, "eval_texts": 40, "tiny": dict(TINY)}
    tiny = overrides.pop("tiny", {})
    reward.update(overrides)
    reward["tiny"].update(tiny)
    return {"seed": 0, "reward": reward}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path)
    return tmp_path


def save_classifier(folder, arch: str = "tiny", num_labels: int = 2, seed: int = 1, **config):
    """A randomly initialised classifier + BPE tokenizer saved like a hub checkpoint."""
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification)

    tokenizer = train_bpe_tokenizer([r["text"] for r in polar_rows(80, 5)], 300,
                                    model_max_length=128)
    torch.manual_seed(seed)
    common = {"vocab_size": len(tokenizer), "num_labels": num_labels,
              "pad_token_id": tokenizer.pad_token_id, **config}
    if arch == "tiny":
        model = tiny_classifier(tokenizer, TINY)
        if num_labels != 2 or config:
            model.config.update(config)
            model.config.num_labels = num_labels
            model = type(model)(model.config)
    elif arch == "distilbert":
        model = DistilBertForSequenceClassification(DistilBertConfig(
            n_layers=1, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=128, **common))
    else:  # gpt2 with pad = eos, as for hub GPT-2 reward models
        tokenizer.pad_token = tokenizer.eos_token
        common["pad_token_id"] = tokenizer.eos_token_id
        model = GPT2ForSequenceClassification(GPT2Config(
            n_layer=1, n_embd=32, n_head=2, n_positions=128, **common))
    save_pretrained(model, tokenizer, folder)
    return folder


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tiny_reward_trains_ranks_and_saves(workdir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    metrics = run_reward(reward_params())
    assert metrics["final_train_loss"] < metrics["first_train_loss"] - 0.3
    assert metrics["train_texts"] == 120 and metrics["eval_texts"] == 40
    assert metrics["accuracy"] >= 0.9
    assert json.loads((workdir / "metrics/reward.json").read_text()) == pytest.approx(metrics)
    assert (workdir / "logs/reward/metrics.json").is_file()  # DVCLive training curves
    saved = AutoModelForSequenceClassification.from_pretrained("models/reward")
    assert saved.config.num_labels == 2
    assert AutoTokenizer.from_pretrained("models/reward").pad_token == "<|pad|>"
    model, tokenizer = load_reward_model("models/reward")
    assert not model.training
    for kind in ("logit", "margin", "prob"):
        pos, neg = score_texts(model, tokenizer, [POSITIVE, NEGATIVE], score=kind)
        assert pos > neg, kind


def test_reward_same_seed_gives_identical_weights(tmp_path, monkeypatch):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        write_corpus(tmp_path / name, n_train=40, n_test=10)
        run_reward(reward_params(epochs=1))
        runs.append(weights(load_pretrained("models/reward", "classifier", "reward.model")[0]))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("arch", ["tiny", "distilbert", "gpt2"])
def test_scores_do_not_depend_on_batch_composition(tmp_path, arch):
    model, tokenizer = load_reward_model(str(save_classifier(tmp_path / arch, arch)))
    texts = [r["text"] for r in polar_rows(11, 3)] + ["Great.", POSITIVE + " " + NEGATIVE * 3]
    batched = score_texts(model, tokenizer, texts, score="logit", batch_size=4)
    alone = [score_texts(model, tokenizer, [t], score="logit")[0] for t in texts]
    shuffled = list(reversed(score_texts(model, tokenizer, texts[::-1], batch_size=5)))
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(shuffled, abs=1e-5)
    margin = torch.tensor(score_texts(model, tokenizer, texts, score="margin", batch_size=3))
    prob = torch.tensor(score_texts(model, tokenizer, texts, score="prob", batch_size=3))
    assert torch.allclose(prob, torch.sigmoid(margin), atol=1e-6)
    assert score_texts(model, tokenizer, []) == []
    assert all(map(math.isfinite, score_texts(model, tokenizer, ["", "Great."], batch_size=2)))


def test_scores_cut_texts_at_max_length(tmp_path):
    model, tokenizer = load_reward_model(str(save_classifier(tmp_path / "m")))
    head = " ".join(["The acting was great."] * 3)
    ids = tokenizer(head)["input_ids"]
    long = head + " The plot was awful." * 50
    cut = score_texts(model, tokenizer, [long, head], max_length=len(ids))
    assert cut[0] == pytest.approx(cut[1], abs=1e-5)


def test_trained_folder_is_copied_with_epochs_0(workdir):
    source = save_classifier(workdir / "pretrained")
    metrics = run_reward(reward_params(model="./pretrained", epochs=0))
    assert metrics["train_texts"] == 0 and 0 <= metrics["accuracy"] <= 1
    a, tok_a = load_reward_model(str(source))
    b, tok_b = load_reward_model("models/reward")
    pair = [POSITIVE, NEGATIVE]
    assert score_texts(a, tok_a, pair) == score_texts(b, tok_b, pair)
    assert all(torch.equal(v, weights(b)[k]) for k, v in weights(a).items())


def test_pretrained_folder_is_fine_tuned(workdir):
    save_classifier(workdir / "pretrained", "distilbert")
    metrics = run_reward(reward_params(model="pretrained", epochs=2))
    assert metrics["final_train_loss"] < metrics["first_train_loss"]
    assert (workdir / "models/reward/config.json").is_file()


def test_three_label_head_names_the_parameter(workdir):
    save_classifier(workdir / "three", num_labels=3)
    with pytest.raises(StageError, match=r"^reward\.model: the classifier head has 3 labels"):
        run_reward(reward_params(model="three", epochs=0))
    with pytest.raises(StageError, match=r"^reward\.model: the classifier head has 3 labels"):
        load_reward_model("three")
    assert not (workdir / "models/reward").exists()


def test_swapped_labels_are_rejected(workdir):
    save_classifier(workdir / "swapped", id2label={0: "POSITIVE", 1: "NEGATIVE"},
                    label2id={"POSITIVE": 0, "NEGATIVE": 1})
    with pytest.raises(StageError, match=r"reward\.model: label 1 must be the positive class"):
        run_reward(reward_params(model="swapped", epochs=0))


def test_base_model_without_a_trained_head_cannot_be_copied(workdir):
    from transformers import ModernBertModel

    folder = save_classifier(workdir / "clf")
    base = ModernBertModel(load_pretrained(str(folder), "classifier", "reward.model")[0].config)
    base.save_pretrained(folder)  # overwrite with a headless checkpoint
    with pytest.raises(StageError, match=r"^reward\.model: 'clf' has no trained weights"):
        run_reward(reward_params(model="clf", epochs=0))


@pytest.mark.parametrize("name", ["./missing-model", "/nonexistent/folder", "not a hub id!"])
def test_unloadable_model_names_the_parameter(workdir, name):
    with pytest.raises(StageError, match=r"^reward\.model: .*(no such folder)"):
        run_reward(reward_params(model=name, epochs=1))


def test_bad_params_name_the_key(workdir, tmp_path):
    with pytest.raises(StageError, match=r"reward\.max_length=200 exceeds the model's context"):
        run_reward(reward_params(max_length=200))
    with pytest.raises(StageError, match=r"reward\.epochs is 0 but reward\.model is 'tiny'"):
        run_reward(reward_params(epochs=0))
    with pytest.raises(StageError, match=r"reward\.tiny\.dim=33 must be divisible"):
        run_reward(reward_params(tiny={"dim": 33}))
    model, tokenizer = load_reward_model(str(save_classifier(tmp_path / "m")))
    with pytest.raises(StageError, match=r"reward\.score must be one of logit, margin, prob"):
        score_texts(model, tokenizer, ["x"], score="softmax")
