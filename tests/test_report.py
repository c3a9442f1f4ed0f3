"""The ``report`` stage on hand-made metrics files: table, CSV, plots, DVC plot data, bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from stages.common import StageError, stage_command
from stages.report import family_fit, report, variant_info

VARIANTS = {
    "dpo": {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1},
    "hinge": {"loss": "hinge", "divergence": "reverse_kl", "beta": 0.1},
    "fkl": {"loss": "sigmoid", "divergence": "forward_kl", "beta": 1e-5},
    "alpha-0.5": {"loss": "sigmoid", "divergence": "alpha", "alpha": 0.5, "beta": 0.01},
}
#: policy -> (reward, entropy, kl); the sigmoid family lies on reward = 4 - (H - 2)^2.
POINTS = {"sft": (0.0, 3.0, 0.0), "dpo": (4.0, 2.0, 9.0), "hinge": (3.5, 2.2, 7.0),
          "fkl": (0.0, 4.0, 1.0), "alpha-0.5": (3.0, 3.0, 4.0)}


def _metrics(reward: float, entropy: float, kl: float) -> dict:
    return {"reward": reward, "reward_lo": reward - 0.2, "reward_hi": reward + 0.3,
            "entropy": entropy, "nll": 20 * entropy, "kl": kl, "distinct_1": 0.3,
            "distinct_2": 0.7, "length": 30.5, "gold": reward / 2, "gold_lo": reward / 2 - 0.1,
            "gold_hi": reward / 2 + 0.1, "n_prompts": 100, "n_samples": 4}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "metrics/eval"
    folder.mkdir(parents=True)
    for policy, point in POINTS.items():
        (folder / f"{policy}.json").write_text(json.dumps(_metrics(*point)))
    params = {"align": {"variants": VARIANTS}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _invoke():
    from stages.report import main

    app = typer.Typer()
    app.command()(stage_command(main))
    return CliRunner().invoke(app, [])


def test_report_writes_table_plots_and_plot_data(repo):
    result = _invoke()
    assert result.exit_code == 0, result.output
    reports = repo / "reports"
    with (reports / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["policy"] for r in rows] == ["sft", "dpo", "hinge", "fkl", "alpha-0.5"]
    hinge = rows[2]
    assert (hinge["loss"], hinge["divergence"]) == ("hinge", "reverse_kl")
    assert float(hinge["reward"]) == 3.5 and float(hinge["reward_hi"]) == 3.8
    assert rows[4]["alpha"] == "0.5" and rows[0]["alpha"] == ""
    md = (reports / "summary.md").read_text()
    assert "| hinge | hinge | reverse_kl | – | 3.500 [3.300, 3.800] | 2.200 |" in md
    assert "over dpo, fkl, alpha-0.5" in md
    for png in ("frontier.png", "reward_vs_kl.png"):
        data = (reports / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plot = json.loads((reports / "frontier.json").read_text())
    assert [r["policy"] for r in plot] == list(POINTS)
    assert {"policy", "reward", "reward_lo", "reward_hi", "entropy", "kl"} <= set(plot[1])
    assert plot[3]["kl"] == 1.0 and plot[3]["divergence"] == "forward_kl"


def test_family_fit_through_alpha_family_with_kl_limits(repo):
    from stages.report import read_metrics

    rows = read_metrics(variant_info({"align": {"variants": VARIANTS}}), repo / "metrics/eval")
    coef, names = family_fit(rows)
    assert names == ["dpo", "fkl", "alpha-0.5"]              # hinge and sft are not fitted
    assert coef == pytest.approx([-1.0, 4.0, 0.0], abs=1e-9)   # 4 - (H - 2)^2
    assert family_fit(rows[:2]) is None                       # too few family points


def test_missing_metrics_file_is_one_line_error(repo):
    (repo / "metrics/eval/fkl.json").unlink()
    result = _invoke()
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "metrics/eval/fkl.json: not found" in result.output


def test_bad_metrics_and_params():
    with pytest.raises(StageError, match="align.variants"):
        variant_info({"align": {}})
    with pytest.raises(StageError, match="clashes"):
        variant_info({"align": {"variants": {"sft": {"loss": "sigmoid"}}}})


def test_non_finite_metric_fails(repo):
    bad = _metrics(1.0, 2.0, 3.0)
    bad["entropy"] = None
    (repo / "metrics/eval/dpo.json").write_text(json.dumps(bad))
    with pytest.raises(StageError, match="dpo.json: field 'entropy'"):
        report({"align": {"variants": VARIANTS}})


def test_missing_gold_is_left_blank(repo):
    for policy, point in POINTS.items():
        m = {**_metrics(*point), "gold": None, "gold_lo": None, "gold_hi": None}
        (repo / f"metrics/eval/{policy}.json").write_text(json.dumps(m))
    rows = report({"align": {"variants": VARIANTS}})
    assert rows[0]["gold"] is None
    assert (repo / "reports/summary.csv").read_text().splitlines()[1].split(",")[13] == ""
