"""``stages.lib.runs``: evaluated runs as [seeds x prompts] arrays, the per-prompt metrics
defined once, the same-prompts check and the estimates, on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.lib.bootstrap import draw_resamples, interval, point_estimate, replicates
from stages.lib.runs import (
    METRICS,
    check_same_prompts,
    estimate,
    eval_stage,
    excludes_0,
    load_runs,
    per_prompt,
    read_eval,
    stack,
)


def _row(p: int, **extra) -> dict:
    row = {
        "prompt_id": f"test-{p}",
        "prompt": "The film was",
        "rewards": [1.0, 3.0],
        "gold": [0.0, 1.0],
        "logp": [-5.0, -7.0],
        "logp_sft": [-6.0, -10.0],
        "entropy": [2.0, 4.0],
        "n_generated": [1, 3],
        "entropy_first_k": [1.0, 2.0],
        "n_first_k": [1, 2],
    }
    return {**row, **extra}


def _write(policy: str, seed: int, rows: list[dict]) -> None:
    path = Path(f"data/eval/{policy}/seed-{seed}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_metric_is_a_ratio_per_prompt():
    rows = [_row(0, context_entropy=3.0, context_tokens=5), _row(1)]
    num, den = per_prompt(rows, sft=False, where="f")
    assert set(num) == set(den) == {m for m in METRICS if "<" not in m}  # no quality fields
    np.testing.assert_allclose(num["reward"], [2.0, 2.0])
    np.testing.assert_allclose(num["gold"], [0.5, 0.5])
    np.testing.assert_allclose(num["kl"], [2.0, 2.0])
    np.testing.assert_allclose((num["entropy"], den["entropy"]), [[14.0, 14.0], [4.0, 4.0]])
    np.testing.assert_allclose(num["entropy_first_k"], [5.0, 5.0])
    np.testing.assert_allclose(den["entropy_first_k"], [3.0, 3.0])
    np.testing.assert_allclose((num["context_entropy"], den["context_entropy"]), [[15, 0], [5, 0]])


def test_metrics_a_run_lacks_are_left_out():
    """No reward model (no rewards), no gold scorer, an evaluate without first-k or contexts."""
    rows = [{k: v for k, v in _row(0).items() if k not in ("rewards", "gold", "n_first_k")}]
    num, den = per_prompt(rows, sft=True, where="f")
    assert set(num) == set(den) == {"entropy", "kl"}
    assert num["kl"][0] == 0.0  # the SFT policy against itself
    with pytest.raises(ValueError, match="^f: field 'logp_sft' missing"):
        per_prompt([{k: v for k, v in rows[0].items() if k != "logp_sft"}], sft=False, where="f")
    rows = [_row(0), {k: v for k, v in _row(1).items() if k != "rewards"}]
    assert "reward" not in per_prompt(rows, sft=False, where="f")[0]  # one row without


def test_runs_load_into_seeds_by_prompts_on_the_same_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for policy in ("sft", "dpo"):
        for seed in (0, 1):
            _write(policy, seed, [_row(p) for p in range(3)])
    runs = load_runs(["sft", "dpo"], [0, 1])
    assert [(r.policy, r.seed) for r in runs["dpo"]] == [("dpo", 0), ("dpo", 1)]
    assert runs["sft"][0].prompt_ids == ["test-0", "test-1", "test-2"]
    num, den = stack(runs["dpo"], ("reward", "kl", "nope"))
    assert set(num) == {"reward", "kl"} and num["reward"].shape == (2, 3)
    _write("dpo", 1, [_row(p) for p in (0, 2, 1)])
    with pytest.raises(ValueError, match=r"^data/eval/dpo/seed-1\.jsonl: its 3 prompts differ"):
        load_runs(["sft", "dpo"], [0, 1])
    with pytest.raises(FileNotFoundError, match=r"\(run `dvc repro evaluate@dpo-7`\)$"):
        read_eval("dpo", 7)


def test_stack_leaves_out_a_metric_one_run_lacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write("dpo", 0, [_row(0)])
    _write("dpo", 1, [{k: v for k, v in _row(0).items() if k != "gold"}])
    num, _ = stack(load_runs(["dpo"], [0, 1])["dpo"], METRICS)
    assert "gold" not in num and "reward" in num


def test_stage_names_and_prompt_check():
    assert eval_stage("sft", 2) == "evaluate-sft@2"
    assert eval_stage("dpo", 2) == "evaluate@dpo-2"
    assert eval_stage("trl", 2, external=True) == "evaluate-external@trl-2"
    check_same_prompts(["a", "b"], ["a", "b"], Path("x"), Path("y"))
    with pytest.raises(ValueError, match=r"^x: its 1 prompts differ from the 2 of y; "):
        check_same_prompts(["a"], ["a", "b"], Path("x"), Path("y"))


def test_estimate_is_the_bootstrap_of_the_ratio():
    rng = np.random.default_rng(0)
    num, den = {"m": rng.normal(size=(3, 20))}, {"m": rng.integers(1, 5, size=(3, 20)) * 1.0}
    draws = draw_resamples(3, 20, 200, seed=0)
    est = estimate(num, den, draws)["m"]
    assert est["value"] == point_estimate(num["m"], den["m"])
    np.testing.assert_array_equal(est["reps"], replicates(num["m"], den["m"], draws))
    assert est["ci"] == interval(est["reps"])
    np.testing.assert_allclose(est["seeds"], num["m"].sum(1) / den["m"].sum(1))


def test_excludes_0_at_six_decimals():
    assert excludes_0(0.1, 0.2) and excludes_0(-0.2, -0.1)
    assert not excludes_0(-0.1, 0.1) and not excludes_0(0.0000001, 0.2)
