"""Entropy that measures the policy (stages/lib/policy_entropy.py) on a tiny GPT-2: the first-k
entropy is the full pass's at those positions, contexts are the eval prompts' own reviews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.lib.evaluate import sequence_stats
from stages.lib.policy_entropy import context_ids, first_k_stats, ratio, review_index

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _per_position_entropy(model, prompt: list[int], gen: list[int]) -> np.ndarray:
    """The predictive entropy at every generated position, from the model's own logits."""
    ids = torch.tensor([prompt + gen])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent[len(prompt) - 1 : len(prompt) + len(gen) - 1].double().numpy()


def test_first_k_is_the_entropy_at_the_first_k_positions(tiny_lm):
    model, tok = tiny_lm
    prompts = [tok("the film was", add_special_tokens=False)["input_ids"]] * 3
    gen = [
        tok(" good and fun but not very", add_special_tokens=False)["input_ids"],
        tok(" bad", add_special_tokens=False)["input_ids"],
        tok(" dull plot and a boring ending", add_special_tokens=False)["input_ids"],
    ]
    k = 3
    stats = first_k_stats(model, prompts, gen, k=k, batch_size=2, chunk=4)
    for i, (p, g) in enumerate(zip(prompts, gen)):
        expected = _per_position_entropy(model, p, g)[:k]
        assert stats["n"][i] == min(k, len(g))
        assert stats["entropy"][i] == pytest.approx(expected.sum(), rel=1e-5)
    full = sequence_stats(model, prompts, gen, batch_size=2, chunk=4)
    short = int(np.argmin([len(g) for g in gen]))
    assert stats["entropy"][short] == pytest.approx(full["entropy"][short], rel=1e-6)
    assert ratio(stats["entropy"], stats["n"]) == pytest.approx(
        round(stats["entropy"].sum() / stats["n"].sum(), 6)
    )
    assert ratio(np.zeros(2), np.zeros(2)) is None


def test_contexts_are_the_prompts_own_reviews(tiny_lm):
    _, tok = tiny_lm
    test_rows = [
        {"text": "the film was good and the acting was great", "label": 1},
        {"text": "it was a dull plot and a boring ending", "label": 0},
    ]
    rows = [
        {"prompt_id": "test-1", "prompt": "it was a dull"},
        {"prompt_id": "test-0", "prompt": "the film was good"},
    ]
    p_ids, c_ids = context_ids(tok, rows, test_rows, n=5, max_tokens=3)
    assert len(p_ids) == 2  # n is capped by the prompts given
    assert p_ids[0] == tok("it was a dull", add_special_tokens=False)["input_ids"]
    rest = tok(" plot and a boring ending", add_special_tokens=False)["input_ids"]
    assert c_ids[0] == rest[:3]
    assert len(context_ids(tok, rows, test_rows, n=1, max_tokens=3)[0]) == 1


def test_bad_prompt_ids_and_prefixes_name_the_prompt(tiny_lm):
    _, tok = tiny_lm
    assert review_index("test-12", 13, "f") == 12
    for bad in ("train-1", "test-13", "test-x", "12"):
        with pytest.raises(ValueError, match=rf"^f: prompt_id '{bad}' is not 'test-<row>'"):
            review_index(bad, 13, "f")
    rows = [{"prompt_id": "test-0", "prompt": "a different start"}]
    with pytest.raises(ValueError, match="prompt 'test-0' is not the start of its review"):
        context_ids(tok, rows, [{"text": "the film was good", "label": 1}], n=1, max_tokens=3)
