"""The ``report`` stage on hand-made per-seed evaluation files for the variants of the
repository's params.yaml: the two-level bootstrap on constructed examples with known answers,
paired differences, tables, plots, DVC metrics, labels read through ``LossConfig``, bad input."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.lib.bootstrap import draw_resamples, interval, point_estimate, replicates
from stages.lib.config import load_params
from stages.lib.variants import read_variant
from stages.report import family_fit, plain_sigmoid, read_run, report, variant_info

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
SEEDS = PARAMS["seeds"]
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
#: policy -> (reward, entropy, kl): the exact means over seeds, prompts and samples.
POINTS = {
    "sft": (0.0, 3.0, 0.0),
    "hinge": (3.5, 2.2, 7.0),
    "ipo": (2.0, 2.5, 5.0),
    "jsd": (3.8, 2.1, 8.0),
    **{p: (4 - (h - 2) ** 2, h, 10.0 - h) for p, h in FAMILY.items()},
}
#: Seed effects (one per seed), prompt effects and sample deviations, each summing to 0, shared
#: by every policy: the policies differ by a constant, so paired differences are exact.
SEED_EFFECT = np.array([-0.3, 0.0, 0.3])
PROMPT_EFFECT = np.linspace(-1.0, 1.0, 6)
SAMPLE_DEV = np.array([0.1, -0.1])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_run(policy: str, seed_index: int, reward, entropy, kl, *, gold: bool = True) -> None:
    """``data/eval/<policy>/seed-<s>.jsonl``, its metrics file and (variants) align metrics."""
    seed = SEEDS[seed_index]
    rows, rewards = [], []
    for p, b in enumerate(PROMPT_EFFECT):
        r = [reward + SEED_EFFECT[seed_index] + b + e for e in SAMPLE_DEV]
        rewards += r
        row = {
            "prompt_id": f"test-{p}",
            "prompt": "The film was",
            "completions": [" good.", " bad"],
            "rewards": r,
            "logp": [-10.0, -12.0],
            "entropy": [entropy, entropy],
            "n_generated": [3, 5],
            "length": [2, 5],
            "finished": [True, False],
        }
        if policy != "sft":
            row["logp_sft"] = [lp - kl for lp in row["logp"]]
        if gold:
            row["gold"] = [v / 2 for v in r]
        rows.append(row)
    _write(
        Path(f"data/eval/{policy}/seed-{seed}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows)
    )
    mean = float(np.mean(rewards))
    metrics = {
        "reward": mean,
        "reward_lo": mean - 0.2,
        "reward_hi": mean + 0.3,
        "entropy": entropy,
        "nll": 11.0,
        "kl": kl,
        "distinct_1": 0.3,
        "distinct_2": 0.7,
        "length": 3.5,
        "gold": mean / 2 if gold else None,
        "gold_lo": mean / 2 - 0.1 if gold else None,
        "gold_hi": mean / 2 + 0.1 if gold else None,
        "n_prompts": len(PROMPT_EFFECT),
        "n_samples": len(SAMPLE_DEV),
    }
    _write(Path(f"metrics/eval/{policy}/seed-{seed}.json"), json.dumps(metrics))
    if policy != "sft":
        align = {"variant": policy, "val_accuracy": 0.6 + 0.01 * seed_index}
        _write(Path(f"metrics/align/{policy}/seed-{seed}.json"), json.dumps(align))


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for policy, point in POINTS.items():
        for i in range(len(SEEDS)):
            write_run(policy, i, *point)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def _invoke():
    from stages.report import main

    app = typer.Typer()
    app.command()(stage_command(main))
    return CliRunner().invoke(app, [])


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the bootstrap


def test_identical_seeds_reduce_to_the_prompt_bootstrap():
    """Zero between-seed variance: every resample is the prompt bootstrap's (same draws)."""
    x = np.random.default_rng(1).normal(size=40)
    num, den = np.tile(x, (3, 1)), np.ones((3, 40))
    draws = draw_resamples(3, 40, 500, seed=0)
    prompt_only = draws.prompt_weights @ x / 40
    np.testing.assert_allclose(replicates(num, den, draws), prompt_only, rtol=0, atol=1e-12)
    assert interval(replicates(num, den, draws)) == pytest.approx(interval(prompt_only), abs=1e-12)
    assert point_estimate(num, den) == pytest.approx(x.mean(), abs=1e-12)


def test_identical_prompts_reduce_to_the_seed_bootstrap():
    """Zero between-prompt variance: every resample is the mean of the resampled seeds."""
    c = np.array([1.0, 2.0, 4.0])
    num, den = np.repeat(c[:, None], 25, axis=1), np.ones((3, 25))
    draws = draw_resamples(3, 25, 500, seed=0)
    expected = c[draws.seeds].mean(1)
    np.testing.assert_allclose(replicates(num, den, draws), expected, rtol=0, atol=1e-12)
    lo, hi = interval(expected)
    assert 1.0 <= lo < 7 / 3 < hi <= 4.0


def test_the_interval_covers_seed_and_prompt_variation():
    """Prompt half-width ~ 1.96 sd / sqrt(P) when seeds do not matter; a seed effect widens it."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=400)
    draws = draw_resamples(3, 400, 4000, seed=3)
    lo, hi = interval(replicates(np.tile(x, (3, 1)), np.ones((3, 400)), draws))
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std() / np.sqrt(400), rel=0.1)
    shifted = np.tile(x, (3, 1)) + np.array([[-0.5], [0.0], [0.5]])  # a seed effect
    lo2, hi2 = interval(replicates(shifted, np.ones((3, 400)), draws))
    assert hi2 - lo2 > 3 * (hi - lo)


def test_ratio_estimates_are_token_weighted():
    """Entropy: Σ num / Σ den over the (resampled) prompts of each seed, then the seed mean."""
    num = np.array([[1.0, 9.0], [4.0, 4.0]])  # entropy sums per prompt
    den = np.array([[1.0, 3.0], [2.0, 2.0]])  # generated tokens per prompt
    assert point_estimate(num, den) == pytest.approx((10 / 4 + 8 / 4) / 2)
    draws = draw_resamples(2, 2, 50, seed=0)
    w, s = draws.prompt_weights, draws.seeds
    by_seed = (w @ num.T) / (w @ den.T)
    expected = np.array([by_seed[b, s[b]].mean() for b in range(50)])
    np.testing.assert_allclose(replicates(num, den, draws), expected, rtol=0, atol=1e-12)


def test_read_run_weights_entropy_by_generated_tokens(repo):
    """A sample's entropy counts once per generated position (``n_generated``, EOS included)."""
    run = read_run("dpo", SEEDS[0])
    assert run.num["entropy"][0] == pytest.approx(2.0 * 3 + 2.0 * 5)
    assert run.den["entropy"][0] == 8
    rows = [
        json.loads(line) for line in Path("data/eval/dpo/seed-0.jsonl").read_text().splitlines()
    ]
    rows[0]["entropy"], rows[0]["n_generated"] = [1.0, 3.0], [1, 3]
    Path("data/eval/dpo/seed-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_run("dpo", SEEDS[0]).num["entropy"][0] / 4 == pytest.approx(2.5)  # not 2.0


# --------------------------------------------------------------------------- the stage


def test_params_yaml_covers_every_kind_of_point():
    assert set(POINTS) == {"sft", *PARAMS["align"]["variants"]}
    assert PARAMS["report"]["baseline"] == "dpo" and len(SEEDS) == 3


def test_report_aggregates_over_seeds_and_prompts(repo):
    result = _invoke()
    assert result.exit_code == 0, result.output
    rows = _csv(repo / "reports/summary.csv")
    assert [r["policy"] for r in rows] == ["sft", *PARAMS["align"]["variants"]]
    by = {r["policy"]: r for r in rows}
    for policy, (reward, entropy, kl) in POINTS.items():
        r = by[policy]
        assert float(r["reward"]) == pytest.approx(reward, abs=1e-6)  # mean over seeds
        assert float(r["entropy"]) == pytest.approx(entropy, abs=1e-6)
        assert float(r["kl"]) == pytest.approx(kl, abs=1e-6)
        assert float(r["gold"]) == pytest.approx(reward / 2, abs=1e-6)
        assert int(r["n_seeds"]) == 3
        # seed and prompt effects make every policy's own interval wide ...
        assert float(r["reward_lo"]) < reward - 0.2 and float(r["reward_hi"]) > reward + 0.2
    hinge = by["hinge"]
    assert (hinge["loss"], hinge["divergence"], hinge["alpha"]) == ("hinge", "reverse_kl", "")
    assert by["alpha-0_5"]["alpha"] == "0.5" and by["sft"]["val_accuracy"] == ""
    assert float(hinge["val_accuracy"]) == pytest.approx(0.61)
    assert (hinge["val_accuracy_min"], hinge["val_accuracy_max"]) == ("0.6", "0.62")
    # ... while the paired difference against dpo (same seeds, same prompts) is exact
    assert float(hinge["d_reward"]) == pytest.approx(-0.5, abs=1e-6)
    assert float(hinge["d_reward_lo"]) == pytest.approx(-0.5, abs=1e-6)
    assert float(hinge["d_reward_hi"]) == pytest.approx(-0.5, abs=1e-6)
    assert hinge["d_reward_excludes_0"] == "True" and hinge["d_entropy_excludes_0"] == "True"
    dpo = by["dpo"]
    assert [dpo[f"d_{m}{s}"] for m in ("reward", "kl") for s in ("", "_lo", "_hi")] == ["0.0"] * 6
    assert dpo["d_reward_excludes_0"] == "False"


def test_identical_policies_differ_by_exactly_zero(repo):
    """A variant whose runs equal dpo's: paired difference 0 with a zero-width interval."""
    params = copy.deepcopy(PARAMS)
    params["align"]["variants"]["twin"] = dict(params["align"]["variants"]["dpo"])
    for i in range(len(SEEDS)):
        write_run("twin", i, *POINTS["dpo"])
    rows = {r["policy"]: r for r in report(params)}
    twin = rows["twin"]
    for m in ("reward", "gold", "entropy", "kl"):
        assert (twin[f"d_{m}"], twin[f"d_{m}_lo"], twin[f"d_{m}_hi"]) == (0.0, 0.0, 0.0), m
        assert twin[f"d_{m}_excludes_0"] is False
    assert (twin["reward_lo"], twin["reward_hi"]) == (
        rows["dpo"]["reward_lo"],
        rows["dpo"]["reward_hi"],
    )


def test_report_writes_tables_plots_and_metrics(repo):
    report(PARAMS)
    reports = repo / "reports"
    md = (reports / "summary.md").read_text()
    assert "seeds 0, 1, 2" in md and "two-level bootstrap over seeds and prompts" in md
    assert "| hinge | hinge | reverse_kl | – | 3.500 [" in md
    assert "## Paired differences against dpo" in md
    assert "| hinge | -0.500 [-0.500, -0.500] * |" in md
    assert "\n| dpo |" not in md.split("## Paired differences")[1]  # the baseline itself
    assert "Intervals that exclude 0: sft (reward, gold, entropy, kl); hinge (" in md
    assert (
        "through the means of dpo, fkl, alpha-0_1, alpha-0_3, alpha-0_5, alpha-0_7, alpha-0_9" in md
    )
    seeds = _csv(reports / "seeds.csv")
    assert len(seeds) == len(POINTS) * 3
    assert [(r["policy"], r["seed"]) for r in seeds[:4]] == [
        ("sft", "0"),
        ("sft", "1"),
        ("sft", "2"),
        ("dpo", "0"),
    ]
    assert float(seeds[3]["reward"]) == pytest.approx(4.0 + SEED_EFFECT[0])  # that run's own
    assert seeds[3]["val_accuracy"] == "0.6"
    for png in ("reward_vs_entropy.png", "reward_vs_kl.png"):
        data = (reports / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plot = json.loads((reports / "points.json").read_text())
    assert [r["policy"] for r in plot] == ["sft", *PARAMS["align"]["variants"]]
    fkl = next(r for r in plot if r["policy"] == "fkl")
    assert fkl["kl"] == pytest.approx(6.0) and fkl["divergence"] == "forward_kl"
    assert {"entropy_lo", "entropy_hi", "kl_lo", "kl_hi", "reward_lo"} <= set(fkl)
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert set(summary) == set(POINTS)
    assert summary["hinge"]["d_reward"] == pytest.approx(-0.5)
    assert summary["sft"]["reward"] == pytest.approx(0.0, abs=1e-9)
    assert all(isinstance(v, (int, float)) for m in summary.values() for v in m.values())


def test_family_fit_through_the_aggregated_alpha_family(repo):
    rows = report(PARAMS)
    coef, names = family_fit(rows)
    assert names == list(FAMILY)  # hinge, ipo, jsd, sft not fitted
    assert coef == pytest.approx([-1.0, 4.0, 0.0], abs=1e-6)  # 4 - (H - 2)^2
    assert family_fit(rows[:3]) is None  # too few family points


def test_labels_are_read_like_the_align_stage():
    """A variant that takes its loss and divergence from align.common is labelled with them."""
    params = copy.deepcopy(PARAMS)
    params["align"]["common"].update(loss="hinge", divergence="alpha")
    params["align"]["variants"]["shared"] = {"beta": 0.2, "alpha": 0.25}
    info = variant_info(params)
    assert info["shared"] == {"loss": "hinge", "divergence": "alpha", "alpha": 0.25}
    assert info["dpo"] == {"loss": "sigmoid", "divergence": "reverse_kl", "alpha": None}
    assert read_variant(params, "shared").loss().beta == 0.2


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda a: a["variants"]["dpo"].update(loss="logistic"),
            "params: align.variants.dpo.loss: must be one of sigmoid, hinge, ipo, robust, "
            "sigmoid_norm, apo_zero, slic_hf, plackett_luce, rrhf, got 'logistic'",
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


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "missing, message",
    [
        (
            "metrics/eval/fkl/seed-2.json",
            "error: metrics/eval/fkl/seed-2.json: not found (run `dvc repro evaluate@fkl-2`",
        ),
        (
            "data/eval/sft/seed-1.jsonl",
            "error: data/eval/sft/seed-1.jsonl: not found (run `dvc repro evaluate-sft@1`",
        ),
        (
            "metrics/align/ipo/seed-0.json",
            "error: metrics/align/ipo/seed-0.json: not found (run `dvc repro align@ipo-0`)",
        ),
    ],
)
def test_missing_seed_file_is_one_line_error(repo, missing, message):
    (repo / missing).unlink()
    result = _invoke()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(message), result.output


def test_every_seed_of_seeds_is_required(repo):
    params = {**PARAMS, "seeds": [*SEEDS, 7]}
    with pytest.raises(FileNotFoundError, match=r"^metrics/eval/sft/seed-7\.json: not found"):
        report(params)


def test_runs_on_other_prompts_fail(repo):
    path = repo / "data/eval/jsd/seed-1.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match=r"^data/eval/jsd/seed-1\.jsonl: mean reward"):
        report(PARAMS)  # the metrics file no longer matches its samples
    write_run("jsd", 1, *POINTS["jsd"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["prompt_id"] = "test-other"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"^data/eval/jsd/seed-1\.jsonl: its 6 prompts differ"):
        report(PARAMS)


def test_bad_rows_and_metrics_name_the_file(repo):
    path = repo / "data/eval/dpo/seed-0.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[2]["n_generated"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"^data/eval/dpo/seed-0\.jsonl:3: missing field 'n_gen"):
        report(PARAMS)
    write_run("dpo", 0, *POINTS["dpo"])
    bad = json.loads((repo / "metrics/eval/dpo/seed-0.json").read_text())
    bad["entropy"] = None
    (repo / "metrics/eval/dpo/seed-0.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"dpo/seed-0\.json: field 'entropy' missing"):
        report(PARAMS)


def test_baseline_must_be_a_variant(repo):
    for bad in ("sft", "nope"):
        params = {**PARAMS, "report": {**PARAMS["report"], "baseline": bad}}
        with pytest.raises(ValueError, match=r"^params: report\.baseline: must be a variant of"):
            report(params)


def test_missing_gold_is_left_blank(repo):
    for policy, point in POINTS.items():
        for i in range(len(SEEDS)):
            write_run(policy, i, *point, gold=False)
    rows = report(PARAMS)
    assert rows[0]["gold"] is None and rows[1]["d_gold"] is None
    header, first = (repo / "reports/summary.csv").read_text().splitlines()[:2]
    assert first.split(",")[header.split(",").index("gold")] == ""


def test_extra_files_are_noted_not_reported(repo, capsys):
    write_run("old-variant", 0, 1.0, 2.0, 3.0)
    _write(repo / "metrics/eval/dpo.json", "{}")  # the single-seed layout
    rows = report(PARAMS)
    assert "old-variant" not in [r["policy"] for r in rows]
    err = capsys.readouterr().err
    assert "note: ignoring 2 file(s) not in align.variants x seeds: " in err
    assert "metrics/eval/dpo.json" in err and "metrics/eval/old-variant/seed-0.json" in err


def test_family_fit_takes_only_plain_sigmoid_variants(repo):
    """RPO (an SFT term), cDPO (label smoothing) and a curriculum run are sigmoid-loss reverse
    KL variants too, but not the original's DPO form: the fit leaves them out."""
    params = copy.deepcopy(PARAMS)
    extra = {
        "rpo": {"sft_weight": 1.0},
        "cdpo": {"label_smoothing": 0.1},
        "dpo-easy": {"curriculum": "easy_to_hard"},
    }
    for name, change in extra.items():
        params["align"]["variants"][name] = {**params["align"]["variants"]["dpo"], **change}
        for i in range(len(SEEDS)):
            write_run(name, i, 9.0, 2.6, 1.0)  # far off the family's parabola
    assert plain_sigmoid(params) == set(FAMILY) | {"jsd"}
    rows = report(params)
    coef, names = family_fit(rows, plain_sigmoid(params))
    assert names == list(FAMILY)
    assert coef == pytest.approx([-1.0, 4.0, 0.0], abs=1e-6)
    assert family_fit(rows)[1] == [*FAMILY, *extra]  # without the filter they would count


# --------------------------------------------------------------------------- bring your own


def _drop_rewards(policy: str, seed: int) -> None:
    """The files `evaluate --no-reward` writes: no rewards (nor gold), reward null."""
    path = Path(f"data/eval/{policy}/seed-{seed}.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "rewards"}) + "\n" for r in rows)
    )
    metrics_path = Path(f"metrics/eval/{policy}/seed-{seed}.json")
    metrics = json.loads(metrics_path.read_text())
    metrics.update(reward=None, reward_lo=None, reward_hi=None)
    metrics_path.write_text(json.dumps(metrics))


def test_without_a_reward_model_reward_is_na_not_zero(repo):
    for policy, point in POINTS.items():
        for i, seed in enumerate(SEEDS):
            write_run(policy, i, *point, gold=False)
            _drop_rewards(policy, seed)
    rows = report(PARAMS)
    assert all(r["reward"] is None and r["d_reward"] is None for r in rows)
    fkl = next(r for r in rows if r["policy"] == "fkl")
    assert fkl["kl"] == pytest.approx(6.0) and fkl["entropy"] == pytest.approx(4.0)
    md = (repo / "reports/summary.md").read_text()
    assert "| fkl | sigmoid | forward_kl | – | n/a | – | 4.000 [" in md
    assert "| fkl | n/a | – | " in md.split("## Paired differences")[1]
    assert "Reward n/a for sft, dpo, hinge" in md and "`evaluate --no-reward`" in md
    assert "Frontier fit: fewer than 3" in md
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert all("reward" not in m and "d_reward" not in m and "kl" in m for m in summary.values())
    header, first = (repo / "reports/summary.csv").read_text().splitlines()[:2]
    assert first.split(",")[header.split(",").index("reward")] == ""  # blank, not 0
    for png in ("reward_vs_entropy.png", "reward_vs_kl.png"):
        assert (repo / "reports" / png).read_bytes()[:4] == b"\x89PNG"


def test_rewards_and_metrics_must_agree_on_having_a_reward(repo):
    _drop_rewards("ipo", SEEDS[1])
    write_run("ipo", 1, *POINTS["ipo"])  # rewards back in the samples file ...
    metrics = json.loads(Path(f"metrics/eval/ipo/seed-{SEEDS[1]}.json").read_text())
    metrics["reward"] = None  # ... but not in the metrics file
    Path(f"metrics/eval/ipo/seed-{SEEDS[1]}.json").write_text(json.dumps(metrics))
    with pytest.raises(
        ValueError, match=r"ipo/seed-1\.jsonl: rewards present but .* has reward None"
    ):
        report(PARAMS)


def test_external_policies_are_reported_labelled_external(repo):
    params = {**PARAMS, "external": ["trl-dpo"]}
    for i in range(len(SEEDS)):
        write_run("trl-dpo", i, 3.0, 2.4, 6.5)
    for seed in SEEDS:  # no align run behind an external policy
        Path(f"metrics/align/trl-dpo/seed-{seed}.json").unlink()
    rows = report(params)
    ext = rows[-1]
    assert (ext["policy"], ext["loss"], ext["val_accuracy"]) == ("trl-dpo", "external", None)
    assert ext["reward"] == pytest.approx(3.0) and ext["d_reward"] == pytest.approx(-1.0)
    md = (repo / "reports/summary.md").read_text()
    assert "| trl-dpo | external | – | – | 3.000 [" in md
    assert "External policies (trained elsewhere, `models/external/<name>`" in md
    assert "trl-dpo" in json.loads((repo / "metrics/summary.json").read_text())
    files = [Path(f"metrics/eval/trl-dpo/seed-{s}.json") for s in SEEDS]
    files[0].unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate-external@trl-dpo-0"):
        report(params)


@pytest.mark.parametrize(
    "external, message",
    [
        (["dpo"], "params: external: 'dpo' clashes with the name of a policy"),
        (["sft"], "params: external: 'sft' clashes"),
        ("trl-dpo", "params: external: must be a list of distinct folder names"),
        (["a.b"], "params: external: must be a list of distinct folder names"),
        (["x", "x"], "params: external: must be a list of distinct folder names"),
    ],
)
def test_bad_external_names(repo, external, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        report({**PARAMS, "external": external})


# --------------------------------------------------------------------------- the SFT policy's fit
# Issue 27 item 7: the old report never read metrics/sft.json, so a policy worse than uniform
# went unmentioned; the tests below that look for the warning failed on it.


def _sft_metrics(**fields) -> None:
    metrics = {"model": "../models/sft", "epochs": 0, "eval_texts": 200, "perplexity": 7.34}
    _write(Path("metrics/sft.json"), json.dumps({**metrics, **fields}))


def test_a_flagged_sft_policy_opens_the_summary_with_a_warning(repo, capsys):
    _sft_metrics(perplexity=4190.2, vocab_size=2048, perplexity_warning=True)
    report(PARAMS)
    lines = (repo / "reports/summary.md").read_text().splitlines()
    assert lines[:2] == ["# Evaluation summary", ""]
    assert lines[2] == (
        "**Warning:** the SFT policy's held-out perplexity is 4190.20 (metrics/sft.json), above "
        "its vocabulary size 2048 (worse than a uniform guess): it fits these texts poorly, and "
        "every policy here starts from it; fine-tune it (more) on them (`sft.epochs`) or pick a "
        "model that fits the data (`sft.model`)."
    )
    assert lines[3] == "" and lines[4].startswith("6 held-out prompts × 2 samples")
    assert "report: warning: the SFT policy's held-out perplexity is 4190.20" in (
        capsys.readouterr().err
    )


def test_the_warning_names_sft_max_perplexity_when_that_is_what_was_passed(repo):
    _sft_metrics(perplexity=60.0, vocab_size=2048, perplexity_warning=True, max_perplexity=50.0)
    report(PARAMS)
    md = (repo / "reports/summary.md").read_text()
    assert "perplexity is 60.00 (metrics/sft.json), above `sft.max_perplexity` 50: it fits" in md


def test_without_a_warning_the_summary_is_unchanged(repo):
    """No metrics/sft.json (tests, or a pipeline without it) and a policy that fits (the demo:
    7.34 with 2,048 tokens) give the same bytes: the committed summary stays as it is."""
    report(PARAMS)
    before = (repo / "reports/summary.md").read_bytes()
    _sft_metrics(perplexity=7.34, vocab_size=2048, perplexity_warning=False)
    report(PARAMS)
    assert (repo / "reports/summary.md").read_bytes() == before
    _sft_metrics()  # an older metrics file, without the keys
    report(PARAMS)
    assert (repo / "reports/summary.md").read_bytes() == before


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "byo/dvc.yaml"])
def test_report_depends_on_the_sft_metrics_it_reads(pipeline):
    import yaml

    stages = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
    assert "metrics/sft.json" in stages["report"]["deps"]
    sft_outs = [o if isinstance(o, str) else next(iter(o)) for o in stages["sft"]["outs"]]
    assert "metrics/sft.json" in sft_outs  # the file the sft stage of that pipeline writes


# --------------------------------------------------------------------------- wording
# Issue 27 item 8: the old tables wrote a KL of float noise as `-0.000` and a one-seed run as
# "seeds 0 ... mean over the seeds", "x 1 seeds"; both tests failed on it.


def test_a_negative_kl_of_float_noise_is_written_as_zero(repo):
    params = {**PARAMS, "external": ["trl-dpo"]}
    for i in range(len(SEEDS)):  # barely moved from SFT: KL -0.0002 on every prompt and seed
        write_run("trl-dpo", i, 0.0, 3.0, -0.0002)
    rows = report(params)
    assert rows[-1]["kl"] == pytest.approx(-0.0002) and rows[-1]["kl_hi"] < 0  # the values stay
    md = (repo / "reports/summary.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("| trl-dpo | external |")]
    assert "| 0.000 [0.000, 0.000] |" in line and "-0.000" not in line
    # a signed difference keeps its sign: it says on which side of 0 the value lies
    assert "| hinge | -0.500 [-0.500, -0.500] * |" in md


def test_one_seed_is_worded_in_the_singular(repo):
    params = {**PARAMS, "seeds": [SEEDS[0]]}
    result_rows = report(params)
    assert result_rows[0]["n_seeds"] == 1
    md = (repo / "reports/summary.md").read_text()
    assert "temperature 1; seed 0. Each value is that run's metric; brackets:" in md
    assert "seeds 0." not in md and "mean over the seeds of one run's metric" not in md
    assert "6 held-out prompts × 2 samples per policy and seed" in md
    Path("params.yaml").write_text(json.dumps(params))
    result = _invoke()
    assert result.exit_code == 0, result.output
    assert f"reported {len(POINTS)} policies x 1 seed -> reports/summary.md" in result.output
