"""Reward scoring (stages/lib/scoring.py) on randomly initialised 1-layer classifiers saved like
hub checkpoints: batch independence, truncation, score kinds and head checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import NEGATIVE, POSITIVE, polar_rows, save_classifier

from stages.lib.scoring import (
    DEFAULT_MAX_LENGTH,
    SCORES,
    check_head,
    classifier_logits,
    load_reward_model,
    max_text_length,
    score_texts,
)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """``(model, tokenizer)`` of a saved tiny classifier, loaded as the stages load it."""
    return load_reward_model(str(save_classifier(tmp_path_factory.mktemp("rm") / "tiny")))


@pytest.mark.parametrize("arch", ["tiny", "distilbert", "gpt2"])
def test_scores_do_not_depend_on_batch_composition(tmp_path, arch):
    model, tokenizer = load_reward_model(str(save_classifier(tmp_path / arch, arch)))
    texts = [r["text"] for r in polar_rows(11, 3)] + ["Great.", POSITIVE + " " + NEGATIVE * 3]
    batched = score_texts(model, tokenizer, texts, score="logit", batch_size=4)
    alone = [score_texts(model, tokenizer, [t], score="logit")[0] for t in texts]
    shuffled = list(reversed(score_texts(model, tokenizer, texts[::-1], batch_size=5)))
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(shuffled, abs=1e-5)
    assert score_texts(model, tokenizer, []) == []
    assert all(map(math.isfinite, score_texts(model, tokenizer, ["", "Great."], batch_size=2)))


def test_score_kinds_are_functions_of_the_logits(tiny_rm):
    model, tokenizer = tiny_rm
    texts = [r["text"] for r in polar_rows(7, 2)]
    logits = classifier_logits(model, tokenizer, texts, batch_size=3)
    assert logits.shape == (7, 2) and logits.dtype == torch.float32
    scores = {
        kind: torch.tensor(score_texts(model, tokenizer, texts, score=kind, batch_size=3))
        for kind in SCORES
    }
    assert torch.allclose(scores["logit"], logits[:, 1], atol=1e-6)
    assert torch.allclose(scores["margin"], logits[:, 1] - logits[:, 0], atol=1e-6)
    assert torch.allclose(scores["prob"], torch.sigmoid(scores["margin"]), atol=1e-6)


def test_scores_cut_texts_at_max_length(tiny_rm):
    model, tokenizer = tiny_rm
    head = " ".join(["The acting was great."] * 3)
    ids = tokenizer(head)["input_ids"]
    long = head + " The plot was awful." * 50
    cut = score_texts(model, tokenizer, [long, head], max_length=len(ids))
    assert cut[0] == pytest.approx(cut[1], abs=1e-5)


def test_unknown_score_names_the_key(tiny_rm):
    model, tokenizer = tiny_rm
    with pytest.raises(
        ValueError,
        match=r"^params: reward\.score: must be one of logit, margin, "
        r"prob, got 'softmax'$",
    ):
        score_texts(model, tokenizer, ["x"], score="softmax")


def test_classifier_logits_restores_padding_side_and_mode(tiny_rm):
    model, tokenizer = tiny_rm
    tokenizer.padding_side = "left"
    model.train()
    try:
        classifier_logits(model, tokenizer, ["Great.", POSITIVE], batch_size=2)
        assert tokenizer.padding_side == "left" and model.training
    finally:
        tokenizer.padding_side = "right"
        model.eval()
    assert classifier_logits(model, tokenizer, []).shape == (0, 2)


def test_max_text_length_is_the_smallest_limit():
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128))
    assert max_text_length(model, SimpleNamespace(model_max_length=10**30), 64) == 64
    assert max_text_length(model, SimpleNamespace(model_max_length=100), None) == 100
    assert max_text_length(model, SimpleNamespace(model_max_length=10**30), None) == 128
    bare = SimpleNamespace(config=SimpleNamespace())
    assert (
        max_text_length(bare, SimpleNamespace(model_max_length=10**30), None) == DEFAULT_MAX_LENGTH
    )


def test_load_reward_model_is_in_eval_mode(tiny_rm):
    model, tokenizer = tiny_rm
    assert not model.training and tokenizer.pad_token == "<|pad|>"


def test_three_label_head_is_rejected(tmp_path):
    folder = save_classifier(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match=r"^reward\.model: the classifier head has 3 labels"):
        load_reward_model(str(folder))
    with pytest.raises(ValueError, match=r"^score\.model: the classifier head has 3 labels"):
        load_reward_model(str(folder), parameter="score.model")


def test_check_head_wants_label_1_positive():
    def model(id2label):
        return SimpleNamespace(config=SimpleNamespace(num_labels=2, id2label=id2label))

    check_head(model({0: "NEGATIVE", 1: "POSITIVE"}))
    check_head(model({0: "LABEL_0", 1: "LABEL_1"}))  # unnamed labels: 1 is taken as positive
    check_head(model(None))
    for swapped in ({0: "POSITIVE", 1: "NEGATIVE"}, {0: "neg", 1: "neg"}, {0: "pos", 1: "x"}):
        with pytest.raises(ValueError, match=r"^reward\.model: label 1 must be the positive"):
            check_head(model(swapped))
