"""The ``frontier`` stage on hand-made evaluation and best-of-n files with known answers: two
families along β, a single-β family, SFT and best-of-n; tables, plots, metrics, bad input."""

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
from stages.frontier import frontier, main
from stages.lib.best_of_n import best_of_n_kl
from stages.lib.config import load_params
from stages.lib.frontier import variant_settings
from stages.lib.frontier_tables import SFT_CHORD

ROOT = Path(__file__).resolve().parents[1]
BASE = load_params(ROOT / "params.yaml")
SEEDS = BASE["seeds"]
#: variant -> (settings, KL, reward): family rkl has reward 1 + KL/2 (KL 2, 4, 6), family jsd
#: 0.5 + KL/2 (KL 3, 5): at every KL in [3, 5] jsd is exactly 0.5 below; hinge is one point.
VARIANTS = {
    "dpo": ({"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.3}, 4.0),
    "rkl-lo": ({"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1}, 6.0),
    "rkl-hi": ({"loss": "sigmoid", "divergence": "reverse_kl", "beta": 1.0}, 2.0),
    "jsd": ({"loss": "sigmoid", "divergence": "jsd", "beta": 0.3}, 3.0),
    "jsd-lo": ({"loss": "sigmoid", "divergence": "jsd", "beta": 0.1}, 5.0),
    "hinge": ({"loss": "hinge", "divergence": "reverse_kl", "beta": 0.3}, 3.0),
}
OFFSET = {"dpo": 1.0, "rkl-lo": 1.0, "rkl-hi": 1.0, "jsd": 0.5, "jsd-lo": 0.5, "hinge": 0.0}
SEED_EFFECT = np.array([-0.3, 0.0, 0.3])
PROMPT_EFFECT = np.linspace(-1.0, 1.0, 6)
SAMPLE_DEV = np.array([0.1, -0.1])


def _params() -> dict:
    params = copy.deepcopy(BASE)
    params["align"]["variants"] = {k: dict(v[0]) for k, v in VARIANTS.items()}
    params["frontier"] = {"baseline": "dpo", "bootstrap": 300}
    return params


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_eval(
    policy: str, seed_index: int, reward: float, kl: float, entropy: float, step: int = 0
) -> None:
    """One run's rows (the final policy's, or with ``step`` its checkpoint's)."""
    rows = []
    for p, b in enumerate(PROMPT_EFFECT):
        r = [reward + SEED_EFFECT[seed_index] + b + e for e in SAMPLE_DEV]
        row = {
            "prompt_id": f"test-{p}",
            "prompt": "The film was",
            "rewards": r,
            "gold": [v / 2 for v in r],
            "logp": [-10.0, -12.0],
            "entropy": [entropy, entropy],
            "n_generated": [3, 5],
            "entropy_first_k": [3 + kl / 10, 3 + kl / 10],
            "n_first_k": [2, 2],
        }
        if p < 4:  # fixed contexts: the first 4 prompts only
            row.update(context_entropy=4 + kl / 10, context_tokens=7)
        if policy != "sft":
            row["logp_sft"] = [lp - kl for lp in row["logp"]]
        rows.append(row)
    seed = SEEDS[seed_index]
    if step:
        _write(Path(f"data/trajectory/{policy}/seed-{seed}/step-{step}.jsonl"), rows)
    else:
        _write(Path(f"data/eval/{policy}/seed-{seed}.jsonl"), rows)


def write_best_of_n(seed_index: int, n_prompts: int = len(PROMPT_EFFECT)) -> None:
    rows = [
        {
            "prompt_id": f"test-{p}",
            "prompt": "The film was",
            "completions": ["a", "b", "c", "d"],
            "rewards": [0.0, 1.0, 2.0, 3.0],
            "gold": [0.0, 0.5, 1.0, 1.5],
        }
        for p in range(n_prompts)
    ]
    _write(Path(f"data/best_of_n/seed-{SEEDS[seed_index]}.jsonl"), rows)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for i in range(len(SEEDS)):
        write_eval("sft", i, 0.0, 0.0, 2.0)
        for name, (_, kl) in VARIANTS.items():
            write_eval(name, i, OFFSET[name] + kl / 2, kl, 2.0 + kl / 10)
        write_best_of_n(i)
    (tmp_path / "params.yaml").write_text(json.dumps(_params()))
    return tmp_path


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_matched_kl_reads_each_family_off_its_beta_curve(repo):
    result = frontier(_params())
    levels = list(result["metrics"]["kl_levels"].values())
    assert levels == pytest.approx([3.5, 4.0, 4.5])  # quartiles of [3, 5] = rkl [2,6] ∩ jsd [3,5]
    by = {(r["kl"], r["family"]): r for r in result["matched"]}
    for level in levels:
        rkl, jsd = by[level, "sigmoid-reverse_kl"], by[level, "sigmoid-jsd"]
        assert rkl["reward"] == pytest.approx(1 + level / 2)
        assert jsd["reward"] == pytest.approx(0.5 + level / 2)
        assert jsd["gold"] == pytest.approx((0.5 + level / 2) / 2)
        assert jsd["entropy"] == pytest.approx(2 + level / 10)
        assert jsd["entropy_first_k"] == pytest.approx(3 + level / 10)
        assert jsd["context_entropy"] == pytest.approx(4 + level / 10)
        assert jsd["context_entropy_lo"] == pytest.approx(4 + level / 10)  # no prompt effect
        assert rkl["reward_lo"] < rkl["reward"] - 0.2 and rkl["reward_hi"] > rkl["reward"] + 0.2
        assert (jsd["d_reward"], jsd["d_reward_lo"], jsd["d_reward_hi"]) == pytest.approx(
            (-0.5, -0.5, -0.5)
        )
        assert jsd["d_reward_excludes_0"] and not jsd["d_entropy_excludes_0"]
        assert by[level, "hinge-reverse_kl"]["status"] == "fewer than 2 β values"
        assert by[level, "best-of-n"]["status"] == "KL level outside the family's range"


def test_best_of_n_and_pareto_points(repo):
    result = frontier(_params())
    bon = {r["n"]: r for r in result["best_of_n"]}
    assert sorted(bon) == [1, 2, 4]
    assert bon[1]["reward"] == pytest.approx(1.5) and bon[4]["reward"] == pytest.approx(3.0)
    assert bon[2]["reward"] == pytest.approx(14 / 6) and bon[2]["gold"] == pytest.approx(7 / 6)
    assert bon[2]["kl"] == pytest.approx(best_of_n_kl(2))
    assert bon[4]["reward_lo"] == pytest.approx(3.0)  # identical draws on every prompt and seed
    points = {r["policy"]: r for r in result["points"]}
    assert points["jsd"]["family"] == "sigmoid-jsd" and points["jsd"]["beta"] == 0.3
    # reward vs KL: jsd (3, 2) and hinge (3, 1.5) are dominated by rkl-hi (2, 2), jsd-lo
    # (5, 3) by dpo (4, 3)
    front = sorted(p for p, r in points.items() if r["front_reward_kl"])
    assert front == ["dpo", "rkl-hi", "rkl-lo", "sft"]
    assert points["sft"]["reward"] == pytest.approx(0.0, abs=1e-12)


def test_stage_writes_tables_plots_and_metrics(repo):
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "KL levels 3.50, 4.00, 4.50" in result.output
    out = repo / "reports/frontier"
    md = (out / "matched_kl.md").read_text()
    assert "3.500, 4.000, 4.500 nats: the 0.25, 0.5, 0.75 quantiles of [3.000, 5.000]" in md
    assert "| **sigmoid-reverse_kl** (baseline) | 3 | dpo (0.3), rkl-lo (0.1), rkl-hi (1) |" in md
    assert "| sigmoid-jsd | 2.500 [" in md and "-0.500 [-0.500, -0.500] * |" in md
    assert "fewer than 2 β values" in md and "outside its KL range [0.000, 0.636]" in md
    assert (
        "Δ intervals that exclude 0 (sign of the difference): sigmoid-jsd (reward −, gold −)" in md
    )
    assert "| family | entropy [95% CI] | Δ entropy [95% CI] | entropy_first_k [95% CI] |" in md
    assert "context_entropy [95% CI]" in md
    rows = _csv(out / "matched_kl.csv")
    assert len(rows) == 2 * 3 * 4  # fits x levels x (3 families + best-of-n)
    assert [r["fit"] for r in rows] == ["isotonic"] * 12 + ["linear"] * 12  # primary first
    assert "## Sensitivity analysis: the linear fit" in md
    assert {r["status"] for r in rows} == {
        "ok",
        "fewer than 2 β values",
        "KL level outside the family's range",
    }
    assert len(_csv(out / "points.csv")) == 1 + len(VARIANTS)
    assert [r["n"] for r in _csv(out / "best_of_n.csv")] == ["1", "2", "4"]
    for png in ("overview.png", "families.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    metrics = json.loads((repo / "metrics/frontier.json").read_text())
    assert metrics["sigmoid-jsd"]["kl2"]["d_reward"] == pytest.approx(-0.5)
    assert "hinge-reverse_kl" not in metrics and "best-of-n" not in metrics
    assert all(
        isinstance(v, (int, float))
        for fam in metrics.values()
        for level in fam.values()
        for v in (level.values() if isinstance(level, dict) else [level])
    )


def test_without_curves_there_is_no_level(repo):
    params = _params()
    params["align"]["variants"] = {
        k: v for k, v in params["align"]["variants"].items() if k in ("dpo", "jsd")
    }
    result = frontier(params)
    assert result["metrics"] == {"kl_levels": {}}
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    assert "no family has 2 or more β values" in md and "### KL =" not in md


def test_missing_gold_drops_the_metric(repo):
    for path in Path("data").rglob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        _write(path, [{k: v for k, v in r.items() if k != "gold"} for r in rows])
    result = frontier(_params())
    assert all("gold" not in r for r in result["matched"])
    assert "gold" not in (repo / "reports/frontier/matched_kl.md").read_text().split("## Pareto")[0]


def test_families_are_read_like_the_align_stage():
    params = _params()
    params["align"]["common"]["divergence"] = "alpha"
    params["align"]["variants"]["shared"] = {"loss": "sigmoid", "beta": 0.2, "alpha": 0.25}
    settings = variant_settings(params)
    assert settings["shared"]["divergence"] == "alpha" and settings["shared"]["alpha"] == 0.25
    assert settings["dpo"]["curriculum"] == "shuffle"


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["frontier"].update(baseline="nope"),
            "params: frontier.baseline: must be a variant of align.variants (dpo, ",
        ),
        (
            lambda p: p["frontier"].update(bootstrap=0),
            "params: frontier.bootstrap: must be >= 1, got 0",
        ),
        (
            lambda p: p["frontier"].update(fit="spline"),
            "params: frontier.fit: must be one of isotonic, linear, got 'spline'",
        ),
        (
            lambda p: p["align"]["variants"]["dpo"].update(beta=-1.0),
            "params: align.variants.dpo.beta: must be a finite number > 0, got -1.0",
        ),
    ],
)
def test_bad_params_are_one_line_errors(repo, edit, message):
    params = _params()
    edit(params)
    with pytest.raises(ValueError) as err:
        frontier(params)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not Path("reports").exists() and not Path("metrics").exists()  # nothing written


def test_missing_and_mismatched_files_name_the_file(repo):
    Path("data/best_of_n/seed-1.jsonl").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"^data/best_of_n/seed-1\.jsonl: not found \(run `dvc repro best-of-n@1`\)",
    ):
        frontier(_params())
    write_best_of_n(1, n_prompts=5)
    with pytest.raises(
        ValueError, match=r"^data/best_of_n/seed-1\.jsonl: its 5 prompts differ from the 6"
    ):
        frontier(_params())
    write_best_of_n(1)
    Path("data/eval/jsd-lo/seed-2.jsonl").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"^data/eval/jsd-lo/seed-2\.jsonl: not found \(run `dvc repro evaluate@jsd-lo-2`\)",
    ):
        frontier(_params())


def test_kl_levels_given_on_the_command_line_go_to_their_own_folder(repo):
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, ["--kl-levels", "2.5,3.5", "--out", "reports/low"])
    assert result.exit_code == 0, result.output
    assert "KL levels 2.50, 3.50" in result.output
    md = (repo / "reports/low/matched_kl.md").read_text()
    assert "given with --kl-levels" in md
    rows = {(float(r["kl"]), r["family"]): r for r in _csv(repo / "reports/low/matched_kl.csv")}
    assert float(rows[2.5, "sigmoid-reverse_kl"]["reward"]) == pytest.approx(1 + 2.5 / 2)
    assert rows[2.5, "sigmoid-jsd"]["status"] == "KL level outside the family's range"
    assert float(rows[3.5, "sigmoid-jsd"]["d_reward"]) == pytest.approx(-0.5)
    assert (repo / "reports/low/frontier.json").is_file()
    assert not (repo / "metrics/frontier.json").exists()  # the pipeline's metrics untouched
    assert not (repo / "reports/frontier").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kl-levels", "3,x", "--out", "r"], "--kl-levels: must be comma-separated numbers"),
        (["--kl-levels", "4,3", "--out", "r"], "--kl-levels: must be increasing"),
        (["--kl-levels", "3,4"], "--kl-levels: give --out another folder"),
    ],
)
def test_bad_kl_levels_are_one_line_errors(repo, args, message):
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and message in result.output, result.output


# Issue 27 item 8: the old tables wrote a KL of float noise as `-0.000` and a one-seed run as
# "seeds 0", "1 variants"; both tests failed on it.


def test_a_negative_kl_of_float_noise_is_written_as_zero(repo):
    for i in range(len(SEEDS)):  # the single-β family, barely moved from SFT
        write_eval("hinge", i, 0.0, -0.0002, 2.0)
    frontier(_params())
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    assert "| hinge-reverse_kl | 1 | hinge (0.3) | 0.000 (one β) |" in md
    assert "-0.000 (one β)" not in md


def test_one_seed_is_worded_in_the_singular(repo):
    params = _params()
    params["seeds"] = [SEEDS[0]]
    params["align"]["variants"] = {"dpo": params["align"]["variants"]["dpo"]}
    Path("params.yaml").write_text(json.dumps(params))
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "frontier: 1 variant, KL levels none" in result.output
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    assert "6 held-out prompts per policy and seed; seed 0. Brackets:" in md
    assert "(300 resamples shared by every policy" in md


# --------------------------------------------------------------------------- linear vs isotonic


def test_both_fits_agree_on_monotone_points_and_the_linear_one_is_kept(repo):
    """On points that lie on a line (every seed, every prompt shifted alike) the per-seed
    isotonic fit and the linear interpolation give the same values and intervals; the CSV
    holds both (``fit`` column), the primary is ``frontier.fit``. Catches a sensitivity
    section computed with the primary fit again, and a primary that ignores the param."""
    iso = frontier(_params())
    params = _params()
    params["frontier"]["fit"] = "linear"
    lin = frontier(params)
    assert {r["fit"] for r in iso["matched"]} == {"isotonic"}
    assert {r["fit"] for r in iso["sensitivity"]} == {"linear"}
    assert {r["fit"] for r in lin["matched"]} == {"linear"}
    for a, b in zip(iso["matched"], lin["matched"]):
        for k in ("reward", "reward_lo", "d_reward", "d_reward_hi", "entropy", "gold_hi"):
            assert (k in a) == (k in b)
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-9), k
    assert lin["matched"] == [{**r} for r in iso["sensitivity"]]
    ok = [r for r in iso["matched"] if r["status"] == "ok" and r["family"] != BON_NAME]
    assert ok and all(r["reward_direction"] == 1 for r in ok)
    assert all(0 <= r["d_reward_p"] <= 1 for r in ok if "d_reward_p" in r)
    jsd = next(r for r in ok if r["family"] == "sigmoid-jsd")
    assert jsd["d_reward_p"] == 0.0  # every replicate's Δ is -0.5


BON_NAME = "best-of-n"


# --------------------------------------------------------------------------- trajectories

#: dpo's checkpoints: step -> KL (reward 1 + KL/2 like its family's β points).
STEPS = {10: 1.0, 20: 2.5}


def write_trajectory(variant: str = "dpo", steps: dict = STEPS, seeds=range(len(SEEDS))):
    for i in seeds:
        for n, kl in steps.items():
            write_eval(variant, i, OFFSET[variant] + kl / 2, kl, 2.0 + kl / 10, step=n)
        summary = {"variant": variant, "seed": SEEDS[i], "steps": sorted(steps), "checkpoints": {}}
        _write(Path(f"data/trajectory/{variant}/seed-{SEEDS[i]}/summary.json"), [summary])


def _traj_params(fit: str = "isotonic") -> dict:
    params = _params()
    params["align"]["variants"]["dpo"]["checkpoints"] = sorted(STEPS)
    params["frontier"]["fit"] = fit
    return params


def test_without_trajectories_the_outputs_say_so(repo):
    """No variant with checkpoints: trajectory.md says so, trajectory.csv is a header, the
    metrics have no ``trajectory`` key, the PNG is a notice. Catches a stage that fails or
    leaves its declared outputs unwritten in the demo profile."""
    frontier(_params())
    out = repo / "reports/frontier"
    assert "No trajectories in this profile" in (out / "trajectory.md").read_text()
    assert (out / "trajectory.csv").read_text().startswith("kl,family,n_betas,")
    assert _csv(out / "trajectory.csv") == []
    assert "trajectory" not in json.loads((repo / "metrics/frontier.json").read_text())
    assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fit", ["isotonic", "linear"])
def test_trajectory_frontier_on_fabricated_checkpoints(repo, fit):
    """dpo has checkpoints at KL 1 and 2.5. Each family's curve runs from SFT (KL 0, reward 0)
    through its checkpoints and β endpoints; K* = 3 (hinge's only point: the smallest largest
    KL), levels 0.75, 1.5, 2.25. Known values: rkl 1.125, 1.75, 2.125 (via the checkpoints),
    jsd and hinge on their straight line from SFT. Catches the SFT point left out (hinge would
    have no curve), checkpoints left out (rkl would run straight from SFT to KL 2), K* taken
    from the largest KL, and trajectory points leaking into the β frontier."""
    before = frontier(_params() | {"frontier": {**_params()["frontier"], "fit": fit}})
    write_trajectory()
    result = frontier(_traj_params(fit))
    assert result["matched"] == before["matched"]  # the β frontier is unchanged
    metrics = json.loads((repo / "metrics/frontier.json").read_text())
    levels = list(metrics["trajectory"]["kl_levels"].values())
    assert levels == pytest.approx([0.75, 1.5, 2.25])
    by = {(round(r["kl"], 9), r["family"]): r for r in result["trajectory"]["matched"]}
    want = {
        "sigmoid-reverse_kl": (1.125, 1.75, 2.125),
        "sigmoid-jsd": (0.5, 1.0, 1.5),  # 0 -> 2 over KL 0 -> 3
        "hinge-reverse_kl": (0.375, 0.75, 1.125),  # 0 -> 1.5 over KL 0 -> 3
    }
    for fam, values in want.items():
        for level, v in zip(levels, values):
            row = by[round(level, 9), fam]
            assert row["fit"] == fit and row["status"] == "ok"
            assert row["reward"] == pytest.approx(v), (fam, level)
            assert row["reward_coverage"] == 1.0
    # below a curve's first point after SFT a value is read on the line from SFT: flagged
    # (rkl's first checkpoint is at KL 1; jsd's and hinge's first points at KL >= 3)
    chord = {
        (i, fam)
        for (lv, fam), r in by.items()
        for i, x in enumerate(levels)
        if lv == round(x, 9) and r.get("sft_chord")
    }
    assert chord == {(0, "sigmoid-reverse_kl")} | {
        (i, f) for i in range(3) for f in ("sigmoid-jsd", "hinge-reverse_kl")
    }
    rkl = metrics["trajectory"]["sigmoid-reverse_kl"]["kl2"]
    assert rkl["reward"] == pytest.approx(1.75)
    assert metrics["trajectory"]["sigmoid-jsd"]["kl2"]["d_reward"] == pytest.approx(-0.75)
    out = repo / "reports/frontier"
    md = (out / "trajectory.md").read_text()
    assert "K* = 3.000 the smallest, over families and seeds" in md
    assert "(family hinge-reverse_kl, seed 0)" in md
    assert "dpo (β 0.3): 10, 20" in md and "rkl-lo (β 0.1): endpoint only" in md
    assert md.count(SFT_CHORD) >= 7  # the seven flagged cells of the primary fit's tables
    assert f"## Sensitivity analysis: the {'linear' if fit == 'isotonic' else 'isotonic'} fit" in md
    rows = _csv(out / "trajectory.csv")
    assert len(rows) == 2 * 3 * 4 and rows[0]["fit"] == fit
    png = (out / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000


def test_checkpoints_do_not_split_a_family(repo):
    """dpo with checkpoints stays in sigmoid-reverse_kl with rkl-lo and rkl-hi. Catches
    ``checkpoints`` read as a family setting (a family of its own, or a name with steps)."""
    write_trajectory()
    result = frontier(_traj_params())
    families = {r["family"] for r in result["points"] if r["policy"] != "sft"}
    assert families == {"sigmoid-reverse_kl", "sigmoid-jsd", "hinge-reverse_kl"}


def test_trajectory_read_errors_name_the_file(repo):
    """Catches a missing trajectory read as "no steps", a listed step without its file
    skipped, checkpoint rows on other prompts accepted, and seeds with different steps."""
    params = _traj_params()
    with pytest.raises(
        FileNotFoundError,
        match=r"^data/trajectory/dpo/seed-0: not found \(run `dvc repro evaluate@dpo-0`\)$",
    ):
        frontier(params)
    write_trajectory()
    Path("data/trajectory/dpo/seed-1/step-20.jsonl").unlink()
    with pytest.raises(ValueError) as err:
        frontier(params)
    assert str(err.value).startswith(
        "data/trajectory/dpo/seed-1/step-20.jsonl: not found, but "
        "data/trajectory/dpo/seed-1/summary.json lists step 20"
    )
    assert "\n" not in str(err.value)
    write_trajectory()
    path = Path("data/trajectory/dpo/seed-2/step-10.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    _write(path, rows[:-1])
    with pytest.raises(
        ValueError, match=r"^data/trajectory/dpo/seed-2/step-10\.jsonl: its 5 prompts differ"
    ):
        frontier(params)
    write_trajectory()
    write_trajectory(steps={10: 1.0}, seeds=[1])
    Path("data/trajectory/dpo/seed-1/step-20.jsonl").unlink()
    with pytest.raises(ValueError, match=r"^data/trajectory/dpo/seed-1/summary\.json: steps"):
        frontier(params)


def test_read_trajectory_returns_steps_in_order(repo):
    """The reader's own contract: (step, run) ascending, runs that read like data/eval's;
    [] for a summary without steps."""
    from stages.lib.runs import read_trajectory

    write_trajectory()
    got = read_trajectory("dpo", SEEDS[0])
    assert [n for n, _ in got] == [10, 20]
    assert got[0][1].num["kl"] == pytest.approx(np.full(len(PROMPT_EFFECT), 1.0))
    assert str(got[1][1].path) == "data/trajectory/dpo/seed-0/step-20.jsonl"
    summary = {"variant": "jsd", "seed": SEEDS[0], "steps": [], "checkpoints": {}}
    _write(Path(f"data/trajectory/jsd/seed-{SEEDS[0]}/summary.json"), [summary])
    assert read_trajectory("jsd", SEEDS[0]) == []
    summary["steps"] = [20, 10]
    _write(Path(f"data/trajectory/jsd/seed-{SEEDS[0]}/summary.json"), [summary])
    with pytest.raises(ValueError, match=r"^data/trajectory/jsd/seed-0/summary\.json: must"):
        read_trajectory("jsd", SEEDS[0])


def test_a_family_that_never_leaves_sft_gives_no_trajectory_level(repo):
    """hinge ends at KL -0.0002 (float noise) in every seed: K* is 0, so there is no level
    (three levels at 0 would compare SFT with itself). Catches levels built from K* <= 0."""
    for i in range(len(SEEDS)):
        write_eval("hinge", i, 0.0, -0.0002, 2.0)
    write_trajectory()
    result = frontier(_traj_params())
    assert result["trajectory"]["matched"] == []
    assert result["metrics"]["trajectory"] == {"kl_levels": {}}
    md = (repo / "reports/frontier/trajectory.md").read_text()
    assert "no KL level: 1/4, 1/2 and 3/4 of the common range [0, K*], K* = 0.000" in md
    assert "### KL =" not in md


def test_confirmatory_comparisons_are_holm_corrected_and_set_k_star(repo):
    """frontier.confirmatory: the named families' paired differences against the baseline at
    the trajectory levels, Holm-corrected, in confirmatory.md/.csv and the metrics; K* is taken
    over those families and the baseline only (hinge, whose largest KL 3 sets K* over every
    family, is left out, so the levels move up). Catches K* over every family, a hypothesis
    left out of m, and a verdict without the correction."""
    write_trajectory()
    frontier(_traj_params())
    before = json.loads(Path("metrics/frontier.json").read_text())["trajectory"]["kl_levels"]
    params = _traj_params()
    params["frontier"].update(confirmatory=["jsd"], endpoints=["reward"])
    frontier(params)
    metrics = json.loads(Path("metrics/frontier.json").read_text())
    levels = list(metrics["trajectory"]["kl_levels"].values())
    assert levels[0] > list(before.values())[0]  # K* no longer hinge's 3
    rows = _csv(Path("reports/frontier/confirmatory.csv"))
    assert [(r["family"], r["endpoint"], r["level"]) for r in rows] == [
        ("sigmoid-jsd", "reward", str(i)) for i in (1, 2, 3)
    ]
    assert all(r["verdict"] == "lower" and float(r["p_holm"]) <= 0.05 for r in rows)
    cell = metrics["confirmatory"]["sigmoid-jsd"]["reward_L2"]
    assert cell["rejected"] and cell["delta"] < 0
    md = Path("reports/frontier/confirmatory.md").read_text()
    assert "Holm-adjusted p over all 3 hypotheses" in md and "trajectory frontier" in md


def test_k_star_from_names_the_families_that_set_the_levels(repo):
    """frontier.k_star_from: K* over the named families only (hinge, whose largest KL 3 sets K*
    over every family, is left out, so the levels move up exactly as with confirmatory: [jsd]),
    and no hypothesis is tested. Catches the key being ignored or turned into comparisons."""
    write_trajectory()
    frontier(_traj_params())
    every = json.loads(Path("metrics/frontier.json").read_text())["trajectory"]["kl_levels"]
    params = _traj_params()
    params["frontier"].update(confirmatory=["jsd"], endpoints=["reward"])
    frontier(params)
    chosen = json.loads(Path("metrics/frontier.json").read_text())["trajectory"]["kl_levels"]
    params = _traj_params()
    params["frontier"].update(k_star_from=["rkl-lo", "jsd"])
    frontier(params)
    metrics = json.loads(Path("metrics/frontier.json").read_text())
    assert metrics["trajectory"]["kl_levels"] == chosen != every
    assert "confirmatory" not in metrics


def test_without_confirmatory_families_the_file_says_so(repo):
    frontier(_params())
    assert "None in this profile" in Path("reports/frontier/confirmatory.md").read_text()
    assert _csv(Path("reports/frontier/confirmatory.csv")) == []
    assert "confirmatory" not in json.loads(Path("metrics/frontier.json").read_text())


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"confirmatory": ["nope"]}, "params: frontier.confirmatory: 'nope' is not a variant"),
        (
            {"confirmatory": ["rkl-lo"]},
            "params: frontier.confirmatory: 'rkl-lo' is in the baseline's",
        ),
        (
            {"confirmatory": ["jsd"], "endpoints": ["bleu"]},
            "params: frontier.endpoints: 'bleu' is not a measure of every run",
        ),
        (
            {"confirmatory": ["jsd", "jsd"]},
            "params: frontier.confirmatory: must be a list of distinct",
        ),
        ({"k_star_from": ["nope"]}, "params: frontier.k_star_from: 'nope' is not a variant"),
        (
            {"k_star_from": ["jsd", "jsd"]},
            "params: frontier.k_star_from: must be a list of distinct",
        ),
    ],
)
def test_bad_confirmatory_params_are_one_line_errors(repo, updates, message):
    params = _params()
    params["frontier"].update({"endpoints": ["reward"], **updates})
    with pytest.raises(ValueError) as err:
        frontier(params)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not Path("reports").exists() and not Path("metrics").exists()
