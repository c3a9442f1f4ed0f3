"""Best-of-n: the estimator and the analytic KL (stages/lib/best_of_n.py) on known arrays, and
the ``best-of-n`` stage end to end on tiny models (stages/best_of_n.py)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from stages.best_of_n import main, summary
from stages.cli import stage_command
from stages.lib.best_of_n import best_of_n, best_of_n_kl, n_values, subset_weights
from stages.lib.config import TinyClassifierConfig, TinyGPT2Config, load_params
from stages.lib.contracts import BEST_OF_N, read_rows
from stages.lib.modeling import save_pretrained, tiny_classifier, tiny_gpt2, train_bpe_tokenizer
from stages.lib.synthetic import generate_splits

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")

# --------------------------------------------------------------------------- the estimator


def test_analytic_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert best_of_n_kl(16) == pytest.approx(2.7725887 - 0.9375, abs=1e-6)  # 1.8351
    kls = [best_of_n_kl(n) for n in n_values(16)]
    assert kls == sorted(kls)
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n_kl(0)


def test_n_values_are_powers_of_two_up_to_n_max():
    assert n_values(16) == [1, 2, 4, 8, 16]
    assert n_values(12) == [1, 2, 4, 8, 12] and n_values(1) == [1]


def test_estimator_on_a_small_known_array():
    rewards = np.array([[3.0, 1.0, 2.0, 0.0]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert best_of_n(rewards, 1)[0] == pytest.approx(1.5)  # the mean
    # pairs of {0,1,2,3}: maxima 1,2,3,2,3,3 -> 14/6
    assert best_of_n(rewards, 2)[0] == pytest.approx(14 / 6)
    assert best_of_n(rewards, 4)[0] == 3.0  # the maximum
    # gold of the reward-best: pairs pick draws 0 (reward 3) in 3 of 6, draw 2 in 2, draw 1 in 1
    assert best_of_n(rewards, 2, gold)[0] == pytest.approx((3 * 10 + 2 * 30 + 20) / 6)
    np.testing.assert_allclose(subset_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6])
    assert subset_weights(16, 8).sum() == pytest.approx(1.0)


def test_estimator_equals_the_mean_over_all_subsets():
    rng = np.random.default_rng(0)
    rewards, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in (1, 2, 3, 7):
        brute = [
            np.mean(
                [
                    gold[p][max(s, key=lambda i: rewards[p][i])]
                    for s in itertools.combinations(range(7), n)
                ]
            )
            for p in range(3)
        ]
        np.testing.assert_allclose(best_of_n(rewards, n, gold), brute, rtol=1e-12)


def test_estimator_errors():
    with pytest.raises(ValueError, match=r"n must be in \[1, 4\]"):
        best_of_n(np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="rewards must be"):
        best_of_n(np.zeros(4), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        best_of_n(np.zeros((2, 4)), 2, np.zeros((2, 3)))


def test_summary_per_n():
    rewards = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    out = summary(rewards, None, 4)
    assert set(out) == {"n_max", "n_prompts", "n_1", "n_2", "n_4"}
    assert out["n_4"] == {"kl": round(best_of_n_kl(4), 6), "reward": 3.5}
    assert out["n_1"]["reward"] == pytest.approx((1.5 + 1.0) / 2)


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tmp repo with eval prompts, a tiny models/sft and models/reward."""
    root = tmp_path_factory.mktemp("bon")
    train, test = generate_splits(30, 8, 1)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    cfg = TinyGPT2Config(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    save_pretrained(tiny_gpt2(tok, cfg).eval(), tok, root / "models/sft")
    rm = tiny_classifier(
        tok,
        TinyClassifierConfig(
            vocab_size=300, n_layers=1, dim=16, n_heads=2, max_position_embeddings=128
        ),
    )
    save_pretrained(rm, tok, root / "models/reward")
    prompts = root / "data/prompts/eval.jsonl"
    prompts.parent.mkdir(parents=True)
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"test-{i}", "prompt": " ".join(r["text"].split()[:4])}) + "\n"
            for i, r in enumerate(test)
        )
    )
    return root


def _run(root: Path, monkeypatch, args: list[str], **sections):
    monkeypatch.chdir(root)
    params = json.loads(json.dumps(PARAMS))
    params["evaluate"].update(n_prompts=3, max_new_tokens=6, batch_size=8)
    params["best_of_n"] = {"n_max": 4}
    for key, value in sections.items():
        params[key] = value
    (root / "params.yaml").write_text(json.dumps(params))
    app = typer.Typer()
    app.command()(stage_command(main))
    return CliRunner().invoke(app, args)


@pytest.mark.usefixtures("torch_one_thread")
def test_stage_writes_draws_and_metrics(workspace, monkeypatch):
    result = _run(workspace, monkeypatch, ["--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = read_rows(workspace / "data/best_of_n/seed-1.jsonl", BEST_OF_N)
    assert [r["prompt_id"] for r in rows] == ["test-0", "test-1", "test-2"]
    assert all(len(r["rewards"]) == 4 == len(r["gold"]) == len(r["completions"]) for r in rows)
    metrics = json.loads((workspace / "metrics/best_of_n/seed-1.json").read_text())
    assert (metrics["n_max"], metrics["n_prompts"]) == (4, 3)
    rewards = np.array([r["rewards"] for r in rows])
    assert metrics["n_4"]["reward"] == pytest.approx(rewards.max(1).mean(), abs=1e-5)
    assert metrics["n_1"]["reward"] == pytest.approx(rewards.mean(), abs=1e-5)
    assert metrics["n_1"]["reward"] <= metrics["n_2"]["reward"] <= metrics["n_4"]["reward"]
    # seeded: the same seed draws the same completions, another seed others
    first = (workspace / "data/best_of_n/seed-1.jsonl").read_text()
    assert _run(workspace, monkeypatch, ["--seed", "1"]).exit_code == 0
    assert (workspace / "data/best_of_n/seed-1.jsonl").read_text() == first
    assert _run(workspace, monkeypatch, ["--seed", "2"]).exit_code == 0
    assert (workspace / "data/best_of_n/seed-2.jsonl").read_text() != first


def test_stage_errors_are_one_line(workspace, monkeypatch):
    ev = {**PARAMS["evaluate"], "n_prompts": 99}
    result = _run(workspace, monkeypatch, [], evaluate=ev)
    assert result.exit_code == 1
    assert result.output.startswith("error: params: evaluate.n_prompts: must be <= the 8")
    result = _run(workspace, monkeypatch, [], best_of_n={"n_max": 0})
    assert result.output.strip() == "error: params: best_of_n.n_max: must be >= 1, got 0"
