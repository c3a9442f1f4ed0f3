"""The ``ingest`` stage: a trl-format or ranked dataset becomes the files sample/score/pairs would
have written (and reference and align run on them unchanged); bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.ingest import ingest, main
from stages.lib.config import load_params
from stages.lib.contracts import PREFERENCES, PREPARED, PROMPTS, read_rows

BYO = load_params(Path(__file__).resolve().parents[1] / "byo" / "params.yaml")
OUTPUTS = ("data", "metrics")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _params(policy: Path, **ingest_keys) -> dict:
    return {
        **BYO,
        "ingest": {**BYO["ingest"], "source": "prefs", **ingest_keys},
        "sft": {**BYO["sft"], "model": str(policy)},
    }


def _pairwise(n: int, prefix: str) -> list[dict]:
    return [
        {"prompt": f"{prefix} {i} was", "chosen": f" good {i}.", "rejected": f" bad {i}."}
        for i in range(n)
    ]


def test_writes_what_sample_score_pairs_would(tmp_path, monkeypatch, tiny_lm_dir):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(Path("prefs/train.jsonl"), _pairwise(30, "the film"))
    _write_jsonl(Path("prefs/test.jsonl"), _pairwise(8, "a movie"))
    out = ingest(_params(tiny_lm_dir))
    prefs = read_rows("data/preferences.jsonl", PREFERENCES)
    assert prefs == out.preferences and len(prefs) == 30
    assert len(read_rows("data/prompts/eval.jsonl", PROMPTS)) == 8
    assert len(read_rows("data/prompts/train.jsonl", PROMPTS)) == 30
    assert len(read_rows("data/prepared/train.jsonl", PREPARED)) == out.metrics["train"]["prompts"]
    assert len(read_rows("data/prepared/test.jsonl", PREPARED)) == 8
    exported = datasets.load_from_disk("data/pairs-trl")
    assert len(exported["train"]) == out.metrics["train"]["pairs"]
    assert len(exported["test"]) == out.metrics["val"]["pairs"] == 3
    assert json.loads(Path("metrics/ingest.json").read_text()) == out.metrics


def _app():
    app = typer.Typer()
    app.command()(stage_command(main))
    app.command("noop")(lambda: None)
    return app


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p, rows: rows.__setitem__(3, {**rows[3], "rejected": rows[3]["chosen"]}),
            "error: ingest.source: prefs/train.jsonl:4: field 'rejected' is identical to 'chosen'",
        ),
        (
            lambda p, rows: rows.__setitem__(5, {**rows[5], "chosen": ""}),
            "error: ingest.source: prefs/train.jsonl:6: field 'chosen' is empty",
        ),
        (
            lambda p, rows: p["sft"].__setitem__("model", "tiny"),
            "error: params: sft.model: must be a pretrained policy",
        ),
        (
            lambda p, rows: p["ingest"].__setitem__("source", "./missing"),
            "error: ingest.source: './missing' is not an existing file or folder",
        ),
        (
            lambda p, rows: p["ingest"].__setitem__("eval_fraction", 1.5),
            "error: params: ingest.eval_fraction: must be in [0, 1), got 1.5",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch, tiny_lm_dir, edit, message
):
    monkeypatch.chdir(tmp_path)
    params, rows = _params(tiny_lm_dir), _pairwise(10, "the film")
    edit(params, rows)
    _write_jsonl(Path("prefs/train.jsonl"), rows)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(_app(), ["main"])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert not any(Path(d).exists() for d in OUTPUTS)


def test_ranked_rows_train_a_listwise_loss(tmp_path, monkeypatch, tiny_lm_dir, torch_one_thread):
    """Ranked rows keep all K completions and their rewards: reference scores every one and a
    Plackett-Luce variant trains on the full ranking, as on sampled rows."""
    from stages.align import align
    from stages.lib.modeling import load_causal_lm, save_pretrained
    from stages.reference import reference

    monkeypatch.chdir(tmp_path)
    rows = [
        {
            "prompt": f"the film {i} was",
            "completions": [f" good {i}.", f" fine {i}.", f" bad {i}."],
            "rewards": [2.0, 1.0, -1.0],
        }
        for i in range(24)
    ]
    _write_jsonl(Path("prefs/train.jsonl"), rows)
    params = _params(tiny_lm_dir, eval_fraction=0.2)
    params["seeds"] = [0]
    params["align"] = {
        "common": {**BYO["align"]["common"], "epochs": 1, "batch_prompts": 4, "eval_steps": 2},
        "variants": {"pl": {"loss": "plackett_luce", "divergence": "reverse_kl", "beta": 0.3}},
    }
    out = ingest(params)
    assert out.metrics["format"] == "ranked"
    assert all(len(r["completion_ids"]) == 3 and r["rewards"][0] == 2.0 for r in out.preferences)
    save_pretrained(*load_causal_lm(tiny_lm_dir), "models/sft")  # what sft (epochs 0) writes
    summary = reference(params, progress=False)
    assert summary["completions"] == 3 * len(out.preferences) and summary["cut"] == 0
    metrics = align("pl", params, seed=0)
    assert metrics["steps"] >= 1 and Path("models/aligned/pl/seed-0/config.json").is_file()
