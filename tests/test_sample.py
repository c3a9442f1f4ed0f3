"""The ``sample`` stage: K completions per train prompt from the SFT policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.lib.common import write_jsonl
from stages.lib.config import SampleConfig, load_params, read_section, read_seed
from stages.lib.contracts import SAMPLES, read_rows
from stages.lib.generation import generate_completions
from stages.lib.modeling import load_causal_lm
from stages.lib.sampling import sample_rows
from stages.sample import main, sample

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: The repository's params; tests override single keys of it.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
PROMPTS = ["the film was", "I loved this movie and the acting was", "bad", "the plot is not"]


def _params(**sample_keys) -> dict:
    """The repository's params with small ``sample`` settings for a tiny model."""
    small = {"n_per_prompt": 3, "max_new_tokens": 10, "batch_size": 4}
    return {**PARAMS, "sample": {**PARAMS["sample"], **small, **sample_keys}}


def _stage_dir(tmp_path: Path, tiny_lm_dir: Path) -> None:
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    write_jsonl(
        tmp_path / "data/prompts/train.jsonl",
        [{"prompt_id": f"train-{i}", "prompt": p} for i, p in enumerate(PROMPTS)],
    )


def test_sample_stage_writes_samples(tmp_path, monkeypatch, tiny_lm_dir):
    _stage_dir(tmp_path, tiny_lm_dir)
    monkeypatch.chdir(tmp_path)
    summary = sample(_params(), progress=False)
    rows = read_rows("data/samples.jsonl", SAMPLES)
    assert [r["prompt_id"] for r in rows] == [f"train-{i}" for i in range(4)]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(len(r["completions"]) == 3 for r in rows)
    assert list(rows[0]) == ["prompt_id", "prompt", "completions", "completion_ids", "finished"]
    assert summary["prompts"] == 4 and summary["completions"] == 12
    assert summary["tokens_per_second"] > 0 and 1 <= summary["mean_tokens"] <= 10
    first = Path("data/samples.jsonl").read_text()
    sample(_params(), progress=False)
    assert Path("data/samples.jsonl").read_text() == first  # reproducible


def test_sample_rows_are_the_generations(tiny_lm_dir):
    """The stage's rows are ``generate_completions`` under ``sample.*`` and the global seed."""
    params = _params(temperature=0.9)
    cfg, seed = read_section(params, "sample", SampleConfig), read_seed(params)
    model, tokenizer = load_causal_lm(tiny_lm_dir)
    prompts = [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    rows, out = sample_rows(model, tokenizer, prompts, cfg, seed, progress=False)
    want = generate_completions(
        model,
        tokenizer,
        PROMPTS,
        n_per_prompt=3,
        temperature=0.9,
        max_new_tokens=10,
        batch_size=4,
        seed=seed,
        stream="sample",
        progress=False,
    )
    assert out.token_ids == want.token_ids
    assert [r["completions"] for r in rows] == want.texts
    assert [r["completion_ids"] for r in rows] == want.token_ids  # what the reference scores
    assert [r["finished"] for r in rows] == want.finished


def test_sample_rows_keep_the_eos_the_policy_emitted(tiny_lm):
    """A policy that always stops: every completion is finished, its ids are [EOS] and its text
    is empty (the text drops special tokens; the ids keep them)."""
    import copy

    import torch

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: o.index_add_(-1, torch.tensor([eos]), torch.full((*o.shape[:-1], 1), 1e4))
    )
    params = _params()
    cfg, seed = read_section(params, "sample", SampleConfig), read_seed(params)
    prompts = [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    rows, _ = sample_rows(model, tokenizer, prompts, cfg, seed, progress=False)
    for row in rows:
        assert row["completion_ids"] == [[eos]] * 3 and row["finished"] == [True] * 3
        assert row["completions"] == [""] * 3


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("n_per_prompt", 1, "params: sample.n_per_prompt: must be >= 2"),
        ("temperature", 0, "params: sample.temperature: must be > 0, got 0.0"),
        ("max_new_tokens", 0, "params: sample.max_new_tokens: must be >= 1, got 0"),
        ("batch_size", "8", "params: sample.batch_size: must be int, got '8'"),
        ("top_k", 5, "params: sample.top_k: not a known key"),
    ],
)
def test_sample_bad_params_one_line(tmp_path, monkeypatch, tiny_lm_dir, key, value, needle):
    _stage_dir(tmp_path, tiny_lm_dir)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(_params(**{key: value})))
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, ["--params", "params.yaml"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {needle}"), lines
    assert not Path("data/samples.jsonl").exists()


def test_missing_sft_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/prompts/train.jsonl", [{"prompt_id": "train-0", "prompt": "the film"}])
    with pytest.raises(FileNotFoundError, match=r"^models/sft: no model found"):
        sample(_params(), progress=False)
