"""The on-policy policies (issue #30) in ``report`` and ``frontier``, on fabricated evaluation
files with known answers: the list from params (:mod:`stages.lib.online_policies`), their place
in the report, their curves beside the offline families at the families' own KL levels."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from test_frontier import OFFSET, SEEDS, VARIANTS, write_best_of_n, write_eval, write_trajectory
from test_frontier import _params as frontier_params
from test_report import POINTS, write_run

from stages.frontier import frontier
from stages.lib.config import load_params
from stages.lib.matched_kl import OUTSIDE
from stages.lib.online_policies import online_curves, online_policies
from stages.report import report, variant_info
from stages.tools.params import compose

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
#: On-policy policy -> (KL, reward): the dpo rounds lie 1 above the rkl family (reward
#: 2 + KL/2) and reach KL 1 .. 7, wider than the offline levels' [3, 5]; RLOO lies 0.2 below
#: the rkl family (0.8 + KL/2) over [3.8, 4.8]: were it allowed to, it would move the levels.
ONLINE = {
    "online-dpo-r1": (1.0, 2.5),
    "online-dpo-r2": (3.0, 3.5),
    "online-dpo-r3": (7.0, 5.5),
    "rloo-a": (3.8, 2.7),
    "rloo-b": (4.8, 3.2),
}
RL_SETTINGS = {"a": 0.1, "b": 0.02}


def _online(params: dict, rl_settings=RL_SETTINGS) -> dict:
    params = copy.deepcopy(params)
    params["online"].update(variants=["dpo"], rl_settings=dict(rl_settings))
    return params


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """test_frontier's fabricated families (levels 3.5, 4, 4.5) plus the on-policy runs."""
    monkeypatch.chdir(tmp_path)
    for i in range(len(SEEDS)):
        write_eval("sft", i, 0.0, 0.0, 2.0)
        for name, (_, kl) in VARIANTS.items():
            write_eval(name, i, OFFSET[name] + kl / 2, kl, 2.0 + kl / 10)
        for name, (kl, reward) in ONLINE.items():
            write_eval(name, i, reward, kl, 2.0 + kl / 10)
        write_best_of_n(i)
    return tmp_path


# --------------------------------------------------------------------------- the list


def test_the_demo_params_give_exactly_the_former_policy_list():
    assert online_curves(PARAMS) == [] and online_policies(PARAMS) == []
    assert list(variant_info(PARAMS)) == ["sft", *PARAMS["align"]["variants"]]
    assert online_policies({k: v for k, v in PARAMS.items() if k != "online"}) == []  # byo


def test_the_online_profile_lists_rounds_and_rloo_settings():
    params = compose("online")
    curves = online_curves(params)
    assert [(c.name, c.kind) for c in curves] == [("online-dpo", "rounds"), ("rloo", "rl")]
    assert online_policies(params) == [
        "online-dpo-r1",
        "online-dpo-r2",
        "online-dpo-r3",
        "rloo-kl0_02",
        "rloo-kl0_1",
    ]
    assert curves[1].knobs == (0.02, 0.1)
    assert curves[0].eval_stage("online-dpo-r2", 1) == "evaluate-online@dpo-1-from1"
    assert curves[1].eval_stage("rloo-kl0_1", 2) == "evaluate-rl@kl0_1-2"
    info = variant_info(params)
    assert list(info)[-5:] == online_policies(params)  # after the offline variants
    assert info["online-dpo-r3"] == info["dpo"]  # a round carries its variant's loss labels
    assert info["rloo-kl0_1"]["loss"] == "rloo"


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"variants": ["nope"]}, r"^params: online\.variants: 'nope' is not a variant"),
        ({"rl_settings": {"a": -1}}, r"^params: online\.rl_settings\.a: the KL coefficient"),
        ({"rl_settings": [0.1]}, r"^params: online\.rl_settings: must be a mapping"),
        ({"rounds": [{"round": 2, "start": 1}]}, r"^params: online\.rounds\[0\]: must be"),
    ],
)
def test_bad_online_params_are_one_line_errors(edit, message):
    params = _online(PARAMS)
    params["online"].update(edit)
    with pytest.raises(ValueError, match=message):
        online_curves(params)


def test_an_online_name_may_not_clash_with_a_variant():
    params = _online(PARAMS)
    params["align"]["variants"]["online-dpo-r1"] = dict(params["align"]["variants"]["dpo"])
    with pytest.raises(ValueError, match=r"^params: online\.variants: the on-policy name"):
        variant_info(params)


# --------------------------------------------------------------------------- report


def test_report_lists_online_policies_with_paired_differences(tmp_path, monkeypatch):
    """Every on-policy policy is a row with its variant's labels (rounds) or ``rloo``, no val
    accuracy, and its exact paired difference against the baseline; the summary names them."""
    monkeypatch.chdir(tmp_path)
    params = _online(PARAMS)
    params["online"]["rounds"] = params["online"]["rounds"][:2]
    extra = {"online-dpo-r1": (5.0, 2.0, 4.0), "online-dpo-r2": (6.0, 2.0, 5.0)}
    extra |= {"rloo-a": (4.5, 2.5, 3.0), "rloo-b": (3.0, 2.5, 1.0)}
    for policy, point in {**POINTS, **extra}.items():
        for i in range(len(SEEDS)):
            write_run(policy, i, *point)
    for name in extra:  # no align run behind an on-policy policy
        for seed in SEEDS:
            Path(f"metrics/align/{name}/seed-{seed}.json").unlink()
    rows = {r["policy"]: r for r in report(params)}
    assert list(rows)[-4:] == list(extra)
    dpo = POINTS["dpo"][0]
    for name, (reward, _, kl) in extra.items():
        r = rows[name]
        assert r["val_accuracy"] is None and r["kl"] == pytest.approx(kl)
        assert (r["d_reward"], r["d_reward_lo"], r["d_reward_hi"]) == pytest.approx(
            (reward - dpo,) * 3
        )
    assert (rows["online-dpo-r2"]["loss"], rows["online-dpo-r2"]["divergence"]) == (
        "sigmoid",
        "reverse_kl",
    )
    assert rows["rloo-b"]["loss"] == "rloo"
    md = Path("reports/summary.md").read_text()
    assert "| online-dpo-r2 | sigmoid | reverse_kl | – | 6.000 [" in md
    assert (
        "- `online-dpo`: iterative dpo (on-policy rounds, stages online-round): rounds 1, 2" in md
    )
    assert "- `rloo`: trl's RLOO (stages online-rl), KL coefficient per setting: rloo-a (0.1)" in md
    points = json.loads(Path("reports/points.json").read_text())
    assert [p["policy"] for p in points][-4:] == list(extra)
    Path("metrics/eval/online-dpo-r1/seed-0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate-online@dpo-0-from0"):
        report(params)
    write_run("online-dpo-r1", 0, *extra["online-dpo-r1"])
    Path("data/eval/rloo-b/seed-1.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"^data/eval/rloo-b/seed-1.jsonl: not found "):
        report(params)


# --------------------------------------------------------------------------- frontier


def test_online_curves_sit_beside_the_families_at_their_levels(repo):
    """online-dpo is read off rounds 1..3 (1 above the rkl family at every level), rloo off its
    two settings (0.2 below, only where [3.8, 4.8] reaches the level). Catches an on-policy
    policy left out (no row), put on the wrong curve (other values), or moving the levels (rloo
    would narrow them to [3.8, 4.8])."""
    before = frontier(frontier_params())
    result = frontier(_online(frontier_params()))
    levels = list(result["metrics"]["kl_levels"].values())
    assert levels == pytest.approx([3.5, 4.0, 4.5])  # the offline families' alone
    offline = [r for r in result["matched"] if r["family"] not in ("online-dpo", "rloo")]
    assert offline == before["matched"]  # the families' rows are untouched
    by = {(r["kl"], r["family"]): r for r in result["matched"]}
    for level in levels:
        dpo = by[level, "online-dpo"]
        assert dpo["status"] == "ok" and dpo["n_betas"] == 3
        assert dpo["reward"] == pytest.approx(2 + level / 2)
        assert (dpo["d_reward"], dpo["d_reward_lo"], dpo["d_reward_hi"]) == pytest.approx(
            (1.0, 1.0, 1.0)
        )
        assert dpo["d_reward_excludes_0"]
    assert by[levels[0], "rloo"]["status"] == OUTSIDE  # 3.5 < 3.8: no extrapolation
    for level in levels[1:]:
        assert by[level, "rloo"]["reward"] == pytest.approx(0.8 + level / 2)
        assert by[level, "rloo"]["d_reward"] == pytest.approx(-0.2)
    families = [r["family"] for r in result["matched"] if r["kl"] == levels[0]]
    assert families[-3:] == ["online-dpo", "rloo", "best-of-n"]
    points = {r["policy"]: r for r in result["points"]}
    assert {p: points[p]["family"] for p in ONLINE} == {
        **{f"online-dpo-r{r}": "online-dpo" for r in (1, 2, 3)},
        "rloo-a": "rloo",
        "rloo-b": "rloo",
    }
    assert (points["rloo-a"]["beta"], points["online-dpo-r2"]["beta"]) == (0.1, 0.3)
    metrics = json.loads(Path("metrics/frontier.json").read_text())
    assert metrics["online-dpo"]["kl2"]["d_reward"] == pytest.approx(1.0)
    assert set(metrics["rloo"]) == {"kl2", "kl3"}
    md = Path("reports/frontier/matched_kl.md").read_text()
    assert "## On-policy curves (issue #30)" in md
    assert "The on-policy curves do not move the KL levels" in md
    assert "| online-dpo | iterative dpo (on-policy rounds, stages online-round): rounds 1, 2" in md
    line = next(x for x in md.splitlines() if x.startswith("| online-dpo | 3.750 ["))
    assert "| +1.000 [+1.000, +1.000] * |" in line
    assert "| rloo | – | – | – | – | outside its KL range [3.800, 4.800] |" in md


def test_an_online_curve_needs_two_points(repo):
    result = frontier(_online(frontier_params(), {"a": 0.1}))
    rows = [r for r in result["matched"] if r["family"] == "rloo"]
    assert len(rows) == 3 and {r["status"] for r in rows} == {"fewer than 2 points"}


def test_demo_params_leave_the_frontier_as_it_was(repo):
    """The on-policy files lying there change nothing while params list no on-policy curve."""
    result = frontier(frontier_params())
    assert all(r["family"] not in ("online-dpo", "rloo") for r in result["matched"])
    assert set(r["policy"] for r in result["points"]) == {"sft", *VARIANTS}
    md = Path("reports/frontier/matched_kl.md").read_text()
    assert "On-policy" not in md


def test_online_curves_start_at_sft_on_the_trajectory_frontier_without_moving_k_star(repo):
    """With dpo's checkpoints the trajectory frontier's K* is 3 (hinge), levels 0.75, 1.5,
    2.25, with or without the on-policy curves; online-dpo then runs from SFT (0, 0) to round 1
    (1, 2.5): reward 1.875 at 0.75 (linear; the points are monotone, so isotonic agrees)."""
    params = frontier_params()
    params["align"]["variants"]["dpo"]["checkpoints"] = [10, 20]
    write_trajectory()
    before = frontier(params)["trajectory"]["matched"]
    result = frontier(_online(params))
    rows = result["trajectory"]["matched"]
    assert [r for r in rows if r["family"] not in ("online-dpo", "rloo")] == before
    by = {(round(r["kl"], 9), r["family"]): r for r in rows}
    assert by[0.75, "online-dpo"]["reward"] == pytest.approx(1.875)
    assert by[0.75, "rloo"]["reward"] == pytest.approx(0.75 * 2.7 / 3.8)
    md = Path("reports/frontier/trajectory.md").read_text()
    assert "K* = 3.000" in md and "The on-policy curves do not move K*" in md
