"""End to end: `dvc repro` of a micro configuration (two variants, two seeds) in a fresh git
repository, then `dvc exp run -S` on one variant re-runs only that variant's runs, every seed
(and the report)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

#: Every test here runs `dvc repro` or `dvc exp run` of the micro project (about 3 minutes).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("dpo", "alpha-0_5")
SEEDS = (0, 1)

MICRO = {
    "seeds": list(SEEDS),
    "data": {
        "synthetic": {"n_train": 400, "n_test": 100},
        "n_train_prompts": 48,
        "n_eval_prompts": 12,
    },
    "sft": {
        "max_length": 96,
        "batch_size": 16,
        "tiny": {"vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128},
    },
    "reward": {
        "epochs": 1,
        "max_length": 96,
        "eval_texts": 100,
        "tiny": {
            "vocab_size": 400,
            "n_layers": 1,
            "dim": 32,
            "n_heads": 2,
            "max_position_embeddings": 128,
        },
    },
    "sample": {"max_new_tokens": 16},
    "align": {"common": {"epochs": 1, "batch_prompts": 8, "eval_steps": 4, "logging_steps": 2}},
    "evaluate": {"n_prompts": 12, "n_samples": 2, "max_new_tokens": 16, "bootstrap": 100},
    "best_of_n": {"n_max": 4},
    "frontier": {"bootstrap": 200},
    "quality": {"reference_size": 20, "k": 3, "tfidf_dim": 16, "self_bleu_texts": 24},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def micro_params() -> dict:
    """The demo params shrunk to seconds per stage, with two variants and two seeds."""
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), MICRO)
    params["align"]["variants"] = {k: params["align"]["variants"][k] for k in VARIANTS}
    return params


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC repository holding the project's code and the micro params, reproduced."""
    path = tmp_path_factory.mktemp("pipeline")
    for item in ("stages", "conf", "dvc.yaml"):
        src = ROOT / item
        (
            shutil.copytree(src, path / item, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, path / item)
        )
    params = micro_params()
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / "conf" / "config.yaml").write_text(
        yaml.safe_dump({"defaults": ["_self_", {"profile": "demo"}], **params}, sort_keys=False)
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": "",
    }
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], path, env)
    _run(dvc + ["init", "-q"], path, env)
    _run(dvc + ["config", "hydra.enabled", "true"], path, env)
    _run(dvc + ["config", "core.autostage", "true"], path, env)
    _run(["git", "add", "-A"], path, env)
    _run(["git", "commit", "-qm", "micro pipeline"], path, env)
    out = _run(dvc + ["repro"], path, env)
    _run(["git", "add", "-A"], path, env)
    _run(["git", "commit", "-qm", "reproduced"], path, env)
    return path, env, dvc, out


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_writes_every_output(repo):
    path, _, _, out = repo
    policies = ("sft", *VARIANTS)
    assert _ran(out) == {
        "prepare",
        "sft",
        "reward",
        "sample",
        "score",
        "pairs",
        "reference",
        "quality-reference",
        "report",
        "frontier",
        *(f"evaluate-sft@{s}" for s in SEEDS),
        *(f"best-of-n@{s}" for s in SEEDS),
        *(f"align@{v}-{s}" for v in VARIANTS for s in SEEDS),
        *(f"evaluate@{v}-{s}" for v in VARIANTS for s in SEEDS),
    }
    for name in (
        "prepared/train.jsonl",
        "prepared/test.jsonl",
        "prompts/train.jsonl",
        "prompts/eval.jsonl",
        "samples.jsonl",
        "scored.jsonl",
        "preferences.jsonl",
        "reference.jsonl",
        *(f"eval/{p}/seed-{s}.jsonl" for p in policies for s in SEEDS),
    ):
        assert (path / "data" / name).stat().st_size > 0, name
    for model in ("sft", "reward", *(f"aligned/{v}/seed-{s}" for v in VARIANTS for s in SEEDS)):
        assert (path / "models" / model / "config.json").is_file(), model
    metrics = {
        p.relative_to(path / "metrics").as_posix(): json.loads(p.read_text())
        for p in (path / "metrics").rglob("*.json")
    }
    assert {"prepare.json", "sft.json", "reward.json", "pairs.json"} <= set(metrics)
    prompts = metrics["prepare.json"]["prompts"]
    assert prompts["train"] == 48 and prompts["eval"] == 12
    assert metrics["pairs.json"]["val_texts_in_train"] == 0
    assert 0.0 <= metrics["reward.json"]["accuracy"] <= 1.0
    assert metrics["sft.json"]["perplexity"] > 1.0
    for policy in policies:
        for s in SEEDS:
            ev = metrics[f"eval/{policy}/seed-{s}.json"]
            assert ev["reward_lo"] <= ev["reward"] <= ev["reward_hi"] and ev["entropy"] > 0
            assert ev["n_prompts"] == 12 and ev["n_samples"] == 2
    for variant in VARIANTS:
        for s in SEEDS:
            assert "val_accuracy" in json.dumps(metrics[f"align/{variant}/seed-{s}.json"])
        runs = [metrics[f"eval/{variant}/seed-{s}.json"]["reward"] for s in SEEDS]
        assert runs[0] != runs[1]  # two seeds, two runs
    summary = metrics["summary.json"]  # the aggregates over seeds
    assert set(summary) == set(policies)
    for policy in policies:
        agg = summary[policy]
        assert agg["n_seeds"] == len(SEEDS) and agg["reward_lo"] <= agg["reward_hi"]
        mean = sum(metrics[f"eval/{policy}/seed-{s}.json"]["reward"] for s in SEEDS) / len(SEEDS)
        assert agg["reward"] == pytest.approx(mean, abs=1e-4)
    assert summary["dpo"]["d_reward"] == 0.0 and "d_reward" in summary["alpha-0_5"]
    for report in (
        "summary.md",
        "summary.csv",
        "seeds.csv",
        "points.json",
        "reward_vs_entropy.png",
        "reward_vs_kl.png",
    ):
        assert (path / "reports" / report).stat().st_size > 0, report
    table = (path / "reports" / "summary.md").read_text()
    assert all(p in table for p in policies)
    for s in SEEDS:
        assert metrics[f"best_of_n/seed-{s}.json"]["n_4"]["kl"] == pytest.approx(0.636294)
        assert metrics[f"eval/sft/seed-{s}.json"]["context_tokens"] > 0
    assert "kl_levels" in metrics["frontier.json"]  # one β per family here: no level
    for name in ("matched_kl.md", "matched_kl.csv", "points.csv", "overview.png"):
        assert (path / "reports" / "frontier" / name).stat().st_size > 0, name
    # the quality-diversity measures run in every evaluate, and report aggregates them
    assert (path / "data/quality/spaces.npz").is_file()
    quality = metrics["quality.json"]
    for policy in policies:
        for s in SEEDS:
            ev = metrics[f"eval/{policy}/seed-{s}.json"]["quality"]
            assert 0 <= ev["coverage_tfidf_positive"] <= 1 and ev["vendi_hidden"] >= 1
        agg = quality[policy]
        assert agg["precision_tfidf_all_lo"] <= agg["precision_tfidf_all_hi"]
    assert quality["dpo"]["d_coverage_hidden_positive"] == 0.0
    for name in ("quality.md", "quality.csv", "precision_recall.png"):
        assert (path / "reports" / name).stat().st_size > 0, name


def test_plots_cover_every_training_run(repo):
    """`dvc plots show` finds every (variant, seed) run's curves, no hand-written entry each."""
    path, env, dvc, _ = repo
    shown = json.loads(_run(dvc + ["plots", "show", "--json"], path, env))
    assert not shown.get("errors"), shown.get("errors")
    for v in VARIANTS:
        for s in SEEDS:
            assert f"logs/align/{v}/seed-{s}/plots/metrics/train/loss.tsv" in shown["data"]
    assert "reports/reward_vs_entropy.png" in shown["data"] and "reward_vs_entropy" in shown["data"]


def test_exp_run_reruns_only_the_changed_variant(repo):
    path, env, dvc, _ = repo
    out = _run(dvc + ["exp", "run", "-S", "align.variants.dpo.beta=0.2"], path, env)
    assert _ran(out) == {
        *(f"align@dpo-{s}" for s in SEEDS),
        *(f"evaluate@dpo-{s}" for s in SEEDS),
        "report",
        "frontier",
    }
    shown = json.loads(_run(dvc + ["metrics", "diff", "--json"], path, env))
    assert any("eval/dpo/seed-0.json" in name for name in shown)
    assert any("summary.json" in name for name in shown)  # the aggregates
    assert not any("alpha-0_5" in name for name in shown)
