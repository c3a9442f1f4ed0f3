"""The bring-your-own-preferences pipeline (byo/dvc.yaml, byo/params.yaml): its parameters read
as the stages read them, its stages never run (nor depend on) sample/score/pairs, and end to
end a trl-format dataset written here goes through ingest, sft, reference, two align variants,
evaluate (no reward model), an external policy and report under `dvc repro byo/dvc.yaml`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.lib.config import (
    EvaluateConfig,
    PairsConfig,
    ReferenceConfig,
    ReportConfig,
    SftConfig,
    read_external,
    read_section,
    read_seeds,
)
from stages.lib.ingest import IngestConfig

ROOT = Path(__file__).resolve().parents[1]
BYO = ROOT / "byo"
PARAMS = yaml.safe_load((BYO / "params.yaml").read_text())
STAGES = yaml.safe_load((BYO / "dvc.yaml").read_text())["stages"]


def test_every_key_is_commented():
    lines = (BYO / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        assert "#" in line or lines[i - 1].strip().startswith("#"), f"byo/params.yaml:{i + 1}"


def test_params_read_as_the_stages_read_them():
    from stages.align import variant_config
    from stages.ingest import policy_name
    from stages.report import variant_info

    ingest = read_section(PARAMS, "ingest", IngestConfig)
    read_section(PARAMS, "pairs", PairsConfig)
    read_section(PARAMS, "sft", SftConfig)
    assert policy_name(PARAMS) == PARAMS["sft"]["model"]
    reference = read_section(PARAMS, "reference", ReferenceConfig)
    evaluate = read_section(PARAMS, "evaluate", EvaluateConfig)
    assert evaluate.n_prompts <= ingest.n_eval_prompts
    assert read_section(PARAMS, "report", ReportConfig).baseline in PARAMS["align"]["variants"]
    assert read_seeds(PARAMS) and read_external(PARAMS) == []
    info = variant_info(PARAMS)
    for name in PARAMS["align"]["variants"]:
        train, loss = variant_config(PARAMS, name)
        assert train.max_length == reference.max_length, name
        assert info[name]["loss"] == loss.loss


def test_stages_run_this_checkouts_code_and_replace_sample_score_pairs():
    replaced = {"prepare", "reward", "sample", "score", "pairs"}
    for name, stage in STAGES.items():
        body = stage.get("do", stage)
        assert body["cmd"].startswith("PYTHONPATH=.. python -m stages "), name
        assert body["cmd"].split()[4] not in replaced, name
        for dep in body.get("deps", []):  # nothing the main pipeline writes
            assert not str(dep).startswith(("../data", "../models")), (name, dep)
    assert "ingest" in STAGES and not replaced & set(STAGES)


# --------------------------------------------------------------------------- end to end

VARIANTS = ("dpo", "fkl")
MICRO = {
    "seeds": [0],
    "ingest": {"n_eval_prompts": 6},
    "sft": {"epochs": 1, "batch_size": 8, "learning_rate": 1.0e-3, "eval_texts": 6},
    "align": {"common": {"epochs": 1, "batch_prompts": 8, "eval_steps": 4, "logging_steps": 2}},
    "evaluate": {"n_prompts": 6, "n_samples": 2, "max_new_tokens": 12, "bootstrap": 100},
    "report": {"bootstrap": 200},
    "external": ["elsewhere"],
}
WORDS = "the film movie was good bad great awful acting plot ending fun dull".split()


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _trl_rows(n: int, prefix: str, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)

    def text(k: int) -> str:
        return " " + " ".join(rng.choice(WORDS) for _ in range(k)) + "."

    return [
        {"prompt": f"{prefix} {i} was", "chosen": text(5), "rejected": text(6)} for i in range(n)
    ]


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC repository with the code, both pipelines, a trl-format dataset and an
    external policy (both `dvc add`ed), reproduced with `dvc repro byo/dvc.yaml`."""
    import torch
    from conftest import build_tiny_lm
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("byo")
    policy = build_tiny_lm(tmp_path_factory.mktemp("policy"))  # "trained elsewhere", outside
    shutil.copytree(ROOT / "stages", path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("dvc.yaml", "params.yaml", "byo/dvc.yaml"):
        (path / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / item, path / item)
    params = _merge(PARAMS, MICRO)
    params["ingest"]["source"] = "preferences"
    params["sft"]["model"] = str(policy)
    params["align"]["variants"] = {k: PARAMS["align"]["variants"][k] for k in VARIANTS}
    (path / "byo/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for split, n, prefix in (("train", 40, "the film"), ("test", 8, "a movie")):
        rows = _trl_rows(n, prefix, seed=len(split))
        (path / f"byo/preferences/{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (path / f"byo/preferences/{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    external = AutoModelForCausalLM.from_pretrained(policy)  # same tokenizer, other weights
    torch.manual_seed(5)
    with torch.no_grad():
        for p in external.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shutil.copytree(policy, path / "byo/models/external/elsewhere")
    external.save_pretrained(path / "byo/models/external/elsewhere")
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
    _run(dvc + ["config", "core.autostage", "true"], path, env)
    _run(dvc + ["add", "byo/preferences", "byo/models/external/elsewhere"], path, env)
    _run(["git", "add", "-A"], path, env)
    _run(["git", "commit", "-qm", "byo pipeline"], path, env)
    out = _run(dvc + ["repro", "byo/dvc.yaml"], path, env)
    _run(["git", "add", "-A"], path, env)
    _run(["git", "commit", "-qm", "reproduced"], path, env)
    return path, env, dvc, out


@pytest.mark.slow
def test_repro_runs_the_byo_stages_only(repo):
    path, _, _, out = repo
    ran = _ran(out)
    assert ran == {
        f"byo/dvc.yaml:{s}"
        for s in (
            "ingest",
            "sft",
            "reference",
            "report",
            "evaluate-sft@0",
            "evaluate-external@elsewhere-0",
            *(f"align@{v}-0" for v in VARIANTS),
            *(f"evaluate@{v}-0" for v in VARIANTS),
        )
    }
    assert (
        not (path / "data").exists() and not (path / "models").exists()
    )  # main pipeline: untouched
    byo = path / "byo"
    ingest = json.loads((byo / "metrics/ingest.json").read_text())
    assert ingest["format"] == "pairwise" and ingest["eval_source"] == "split 'test'"
    assert ingest["train"]["pairs"] + ingest["val"]["pairs"] == 40 and ingest["eval_prompts"] == 6
    assert json.loads((byo / "metrics/sft.json").read_text())["train_texts"] > 0  # fine-tuned


@pytest.mark.slow
def test_exported_pairs_load_and_report_has_no_reward_and_the_external_policy(repo):
    import datasets

    path, _, _, _ = repo
    byo = path / "byo"
    ingest = json.loads((byo / "metrics/ingest.json").read_text())
    pairs = datasets.load_dataset(str(byo / "data/pairs-trl"))
    assert len(pairs["train"]) == ingest["train"]["pairs"] and pairs["train"].column_names == [
        "prompt",
        "chosen",
        "rejected",
        "trl_differs",
    ]
    for policy in ("sft", *VARIANTS, "elsewhere"):
        metrics = json.loads((byo / f"metrics/eval/{policy}/seed-0.json").read_text())
        assert metrics["reward"] is None and metrics["entropy"] > 0 and metrics["nll"] > 0
        assert 0 < metrics["distinct_2"] <= 1
        assert (metrics["kl"] == 0.0) == (policy == "sft")
    summary = json.loads((byo / "metrics/summary.json").read_text())
    assert set(summary) == {"sft", *VARIANTS, "elsewhere"}
    assert all("reward" not in row and "kl" in row for row in summary.values())
    table = (byo / "reports/summary.md").read_text()
    assert "| elsewhere | external | – | – | n/a |" in table
    assert "Reward n/a for sft, dpo, fkl, elsewhere" in table
    for png in ("reward_vs_entropy.png", "reward_vs_kl.png"):
        assert (byo / "reports" / png).stat().st_size > 0


@pytest.mark.slow
def test_second_repro_runs_nothing_and_main_pipeline_lists_no_byo_stage(repo):
    path, env, dvc, _ = repo
    assert _ran(_run(dvc + ["repro", "byo/dvc.yaml"], path, env)) == set()
    main = _run(dvc + ["stage", "list"], path, env)
    assert "ingest" not in main and "prepare" in main
