"""The ``score`` stage: rewards (and gold scores) attached to every sampled completion."""

from __future__ import annotations

from pathlib import Path

import pytest

import stages.score
from stages.lib.common import write_jsonl
from stages.lib.config import load_params
from stages.lib.contracts import SCORED, read_rows
from stages.lib.scored import attach_scores, full_texts, score_rows
from stages.lib.synthetic import gold_score
from stages.score import score

#: The repository's params; tests override single keys of it.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def _params(score_kind: str, source: str) -> dict:
    return {
        **PARAMS,
        "reward": {**PARAMS["reward"], "score": score_kind},
        "data": {**PARAMS["data"], "source": source},
    }


def _samples(n: int = 5, k: int = 3) -> list[dict]:
    return [
        {
            "prompt_id": f"train-{i}",
            "prompt": "The film was",
            "completions": [" great fun.", " not good.", " dull, but the acting was great."][:k],
            "completion_ids": [[11, 12, 0], [13, 14], [15, 16, 17, 0]][:k],
            "finished": [True, False, True][:k],
        }
        for i in range(n)
    ]


def test_full_texts_are_prompt_plus_completion_row_by_row():
    rows = _samples(2, k=2)
    rows[1]["prompt"] = "It"
    assert full_texts(rows) == [
        "The film was great fun.",
        "The film was not good.",
        "It great fun.",
        "It not good.",
    ]


def test_score_rows_attaches_rewards_and_gold():
    seen = []

    def reward_fn(texts):
        seen.extend(texts)
        return [float(len(t)) for t in texts]

    out = score_rows(_samples(2), reward_fn, gold_fn=lambda t: 1.0 if "great" in t else -1.0)
    assert seen[:3] == [
        "The film was great fun.",
        "The film was not good.",
        "The film was dull, but the acting was great.",
    ]
    assert out[0]["rewards"] == [float(len(t)) for t in seen[:3]]
    assert out[0]["gold"] == [1.0, -1.0, 1.0]
    assert list(out[0]) == [
        "prompt_id",
        "prompt",
        "completions",
        "completion_ids",
        "finished",
        "rewards",
        "gold",
    ]
    assert out[1]["completion_ids"] == _samples()[1]["completion_ids"]  # carried untouched
    assert "gold" not in score_rows(_samples(1), reward_fn)[0]


def test_attach_scores_count_mismatch_and_bad_values():
    with pytest.raises(ValueError, match="2 rewards for 6 completions"):
        attach_scores(_samples(2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"scored row 1 \(train-0\): rewards must hold finite"):
        attach_scores(_samples(1), [0.0, float("nan"), 1.0])


@pytest.fixture
def fake_reward_model(monkeypatch):
    """Replace the reward model by a scorer counting 'great' (records its calls)."""
    calls = []

    def load_reward_model(path):
        calls.append(("load", path))
        return "model", "tokenizer"

    def score_texts(model, tokenizer, texts, *, score="logit", batch_size=64):
        calls.append(("score", score, len(texts)))
        return [float(t.count("great")) for t in texts]

    monkeypatch.setattr(stages.score, "load_reward_model", load_reward_model)
    monkeypatch.setattr(stages.score, "score_texts", score_texts)
    return calls


@pytest.mark.parametrize("source", ["synthetic", "/some/folder"])
def test_score_stage(tmp_path, monkeypatch, fake_reward_model, source):
    monkeypatch.chdir(tmp_path)
    Path("models/reward").mkdir(parents=True)
    write_jsonl("data/samples.jsonl", _samples(4))
    summary = score(_params("prob", source))
    rows = read_rows("data/scored.jsonl", SCORED)
    assert fake_reward_model == [("load", "models/reward"), ("score", "prob", 12)]
    assert rows[0]["rewards"] == [1.0, 0.0, 1.0] and summary["completions"] == 12
    assert [r["completion_ids"] for r in rows] == [r["completion_ids"] for r in _samples(4)]
    assert rows[0]["finished"] == [True, False, True]
    assert summary["mean_reward"] == pytest.approx(8 / 12)
    assert ("gold" in rows[0]) == (source == "synthetic") == ("mean_gold" in summary)
    if source == "synthetic":
        assert rows[0]["gold"][1] == gold_score("The film was not good.")


def test_missing_reward_model(tmp_path, monkeypatch, fake_reward_model):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/samples.jsonl", _samples(1))
    with pytest.raises(FileNotFoundError, match=r"models/reward: reward model not found"):
        score(_params("logit", "synthetic"))
    assert not Path("data/scored.jsonl").exists() and fake_reward_model == []


@pytest.mark.parametrize(
    "params, needle",
    [
        (
            _params("rank", "synthetic"),
            "params: reward.score: must be one of logit, margin, prob, got 'rank'",
        ),
        (_params("logit", " "), "params: data.source: must be a non-empty string"),
        ({k: v for k, v in PARAMS.items() if k != "data"}, "params: section 'data' is missing"),
    ],
)
def test_bad_params(tmp_path, monkeypatch, fake_reward_model, params, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        score(params)
    assert str(err.value).startswith(needle)
