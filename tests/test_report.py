"""The ``report`` stage on hand-made metrics files for the variants of the repository's
params.yaml: table, CSV, plots, DVC plot data, labels read through ``LossConfig``, bad input."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.lib.config import load_params
from stages.report import family_fit, read_metrics, report, variant_info, variant_loss

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
#: Entropy of each sigmoid-loss divergence-family policy; its reward lies on 4 - (H - 2)^2.
FAMILY = {
    "dpo": 2.0,
    "fkl": 4.0,
    "alpha-0_1": 2.2,
    "alpha-0_3": 2.5,
    "alpha-0_5": 3.0,
    "alpha-0_7": 3.5,
    "alpha-0_9": 3.8,
}
#: policy -> (reward, entropy, kl)
POINTS = {
    "sft": (0.0, 3.0, 0.0),
    "hinge": (3.5, 2.2, 7.0),
    "ipo": (2.0, 2.5, 5.0),
    "jsd": (3.8, 2.1, 8.0),
    **{p: (4 - (h - 2) ** 2, h, 10.0 - h) for p, h in FAMILY.items()},
}


def _metrics(reward: float, entropy: float, kl: float) -> dict:
    return {
        "reward": reward,
        "reward_lo": reward - 0.2,
        "reward_hi": reward + 0.3,
        "entropy": entropy,
        "nll": 20 * entropy,
        "kl": kl,
        "distinct_1": 0.3,
        "distinct_2": 0.7,
        "length": 30.5,
        "gold": reward / 2,
        "gold_lo": reward / 2 - 0.1,
        "gold_hi": reward / 2 + 0.1,
        "n_prompts": 100,
        "n_samples": 4,
    }


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "metrics/eval"
    folder.mkdir(parents=True)
    for policy, point in POINTS.items():
        (folder / f"{policy}.json").write_text(json.dumps(_metrics(*point)))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def _invoke():
    from stages.report import main

    app = typer.Typer()
    app.command()(stage_command(main))
    return CliRunner().invoke(app, [])


def test_params_yaml_covers_every_kind_of_point():
    assert set(POINTS) == {"sft", *PARAMS["align"]["variants"]}


def test_report_writes_table_plots_and_plot_data(repo):
    result = _invoke()
    assert result.exit_code == 0, result.output
    reports = repo / "reports"
    with (reports / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["policy"] for r in rows] == ["sft", *PARAMS["align"]["variants"]]
    by_policy = {r["policy"]: r for r in rows}
    hinge = by_policy["hinge"]
    assert (hinge["loss"], hinge["divergence"]) == ("hinge", "reverse_kl")
    assert float(hinge["reward"]) == 3.5 and float(hinge["reward_hi"]) == 3.8
    assert by_policy["alpha-0_5"]["alpha"] == "0.5" and by_policy["sft"]["alpha"] == ""
    assert by_policy["fkl"]["alpha"] == ""
    md = (reports / "summary.md").read_text()
    assert "| hinge | hinge | reverse_kl | – | 3.500 [3.300, 3.800] | 2.200 |" in md
    assert "| sft | – | – | – | 0.000 [-0.200, 0.300] | 3.000 |" in md
    assert "over dpo, fkl, alpha-0_1, alpha-0_3, alpha-0_5, alpha-0_7, alpha-0_9" in md
    for png in ("frontier.png", "reward_vs_kl.png"):
        data = (reports / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plot = json.loads((reports / "frontier.json").read_text())
    assert [r["policy"] for r in plot] == [r["policy"] for r in rows]
    assert {"policy", "reward", "reward_lo", "reward_hi", "entropy", "kl"} <= set(plot[1])
    fkl = next(r for r in plot if r["policy"] == "fkl")
    assert fkl["kl"] == 6.0 and fkl["divergence"] == "forward_kl" and fkl["alpha"] is None


def test_family_fit_through_alpha_family_with_kl_limits(repo):
    rows = read_metrics(variant_info(PARAMS), repo / "metrics/eval")
    coef, names = family_fit(rows)
    assert names == list(FAMILY)  # hinge, ipo, jsd, sft not fitted
    assert coef == pytest.approx([-1.0, 4.0, 0.0], abs=1e-9)  # 4 - (H - 2)^2
    assert family_fit(rows[:3]) is None  # too few family points


def test_labels_are_read_like_the_align_stage():
    """A variant that takes its loss and divergence from align.common is labelled with them."""
    params = copy.deepcopy(PARAMS)
    params["align"]["common"].update(loss="hinge", divergence="alpha")
    params["align"]["variants"]["shared"] = {"beta": 0.2, "alpha": 0.25}
    info = variant_info(params)
    assert info["shared"] == {"loss": "hinge", "divergence": "alpha", "alpha": 0.25}
    assert info["dpo"] == {"loss": "sigmoid", "divergence": "reverse_kl", "alpha": None}
    assert variant_loss(params["align"], "shared").beta == 0.2


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda a: a["variants"]["dpo"].update(loss="logistic"),
            "params: align.variants.dpo.loss: must be one of sigmoid, hinge, ipo, got 'logistic'",
        ),
        (
            lambda a: a["variants"]["dpo"].update(beta=-1.0),
            "params: align.variants.dpo.beta: must be a finite number > 0, got -1.0",
        ),
        (
            lambda a: a["variants"]["dpo"].pop("divergence"),
            "params: align.variants.dpo.divergence: is missing (",
        ),
        (
            lambda a: (a["variants"]["dpo"].pop("divergence"), a["common"].update(divergence="tv")),
            "params: align.common.divergence: must be one of reverse_kl, forward_kl, jsd, alpha, got 'tv'",
        ),
        (
            lambda a: a["variants"]["alpha-0_5"].pop("alpha"),
            "params: align.variants.alpha-0_5.alpha: required for divergence 'alpha'",
        ),
        (
            lambda a: a["variants"].update(dpo=["sigmoid"]),
            "params: align.variants.dpo: must be a mapping, got ['sigmoid']",
        ),
        (
            lambda a: a["variants"].update(sft={"loss": "sigmoid"}),
            "params: align.variants.sft: clashes with the SFT policy's name",
        ),
        (
            lambda a: a.update(variants={}),
            "params: align.variants: must be a non-empty mapping, got {}",
        ),
        (
            lambda a: a.pop("variants"),
            "params: align.variants: must be a non-empty mapping, got None",
        ),
    ],
)
def test_bad_variants_are_one_line_errors_naming_the_key(edit, message):
    params = copy.deepcopy(PARAMS)
    edit(params["align"])
    with pytest.raises(ValueError) as err:
        variant_info(params)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_missing_metrics_file_is_one_line_error(repo):
    (repo / "metrics/eval/fkl.json").unlink()
    result = _invoke()
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "metrics/eval/fkl.json: not found" in result.output


def test_non_finite_metric_fails(repo):
    bad = _metrics(1.0, 2.0, 3.0)
    bad["entropy"] = None
    (repo / "metrics/eval/dpo.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="dpo.json: field 'entropy'"):
        report(PARAMS)


def test_missing_gold_is_left_blank(repo):
    for policy, point in POINTS.items():
        m = {**_metrics(*point), "gold": None, "gold_lo": None, "gold_hi": None}
        (repo / f"metrics/eval/{policy}.json").write_text(json.dumps(m))
    rows = report(PARAMS)
    assert rows[0]["gold"] is None
    assert (repo / "reports/summary.csv").read_text().splitlines()[1].split(",")[13] == ""


def test_extra_metrics_files_are_noted_not_reported(repo, capsys):
    (repo / "metrics/eval/old-variant.json").write_text(json.dumps(_metrics(1.0, 2.0, 3.0)))
    rows = report(PARAMS)
    assert "old-variant" not in [r["policy"] for r in rows]
    assert "ignoring metrics/eval/{old-variant}.json" in capsys.readouterr().err
