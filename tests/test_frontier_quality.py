"""The ``frontier`` stage's quality–diversity comparison (precision, recall, density, coverage
per feature space and reference set, at matched KL) on hand-made evaluation rows with known
answers, in a tmp workspace as tests/test_frontier.py builds them. Each test names the wrong
code it catches."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stages.frontier import frontier
from stages.lib.config import load_params
from stages.lib.frontier import QUALITY_MEASURES, quality_groups
from stages.lib.runs import METRICS, SET_METRICS

ROOT = Path(__file__).resolve().parents[1]
BASE = load_params(ROOT / "params.yaml")
SEEDS = BASE["seeds"]
N_SAMPLES, N_REF, K = 5, 10, 2
#: Per prompt, how many of its 5 samples lie inside some reference ball (precision's
#: numerator): the low-KL point has precision 6/30 = 0.2, the high-KL point 18/30 = 0.6, with
#: prompt-to-prompt variation so that unpaired intervals would be wide.
INSIDE = {"lo": [0, 2, 1, 1, 2, 0], "hi": [3, 4, 1, 3, 4, 3]}
N_PROMPTS = len(INSIDE["lo"])
#: variant -> (settings, KL, which INSIDE row): family sigmoid-reverse_kl (dpo at KL 1,
#: rkl-lo at KL 3); sigmoid-jsd, a clone with the very same rows; hinge-reverse_kl, one more
#: inside sample on every prompt (precision 0.2 higher everywhere).
VARIANTS = {
    "dpo": ({"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.3}, "lo"),
    "rkl-lo": ({"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1}, "hi"),
    "jsd": ({"loss": "sigmoid", "divergence": "jsd", "beta": 0.3}, "lo"),
    "jsd-lo": ({"loss": "sigmoid", "divergence": "jsd", "beta": 0.1}, "hi"),
    "hinge": ({"loss": "hinge", "divergence": "reverse_kl", "beta": 0.3}, "lo"),
    "hinge-lo": ({"loss": "hinge", "divergence": "reverse_kl", "beta": 0.1}, "hi"),
}
EXTRA = {"hinge": 1, "hinge-lo": 1}
#: sft's coverage hits (reference indices per prompt) per seed, to count by hand.
SFT_COVERS = [
    [[0, 1], [1, 2], [], [2], [0], [1]],  # {0, 1, 2}: 3 / 10
    [[5], [5], [5], [5], [5], [5]],  # {5}: 1 / 10
    [[0, 9], [8], [7], [6], [5], [4, 9]],  # {0, 4, 5, 6, 7, 8, 9}: 7 / 10
]
SFT_RECALLS = [[[3]] * N_PROMPTS, [[3], [4], [], [], [], []], [[]] * N_PROMPTS]  # 1, 2, 0 of 10
#: The columns of matched_kl.csv and points.csv before the quality measures: without quality
#: fields the files must have exactly these.
OLD_MATCHED = (
    "kl",
    "family",
    "n_betas",
    "kl_min",
    "kl_max",
    "status",
    "fit",  # issue 29: isotonic or linear (both are written, the primary first)
    "sft_chord",  # a trajectory value read between the SFT policy and a curve's first point
    *(
        f"{p}{m}{s}"
        for m in ("reward", "gold", "entropy", "entropy_first_k", "context_entropy")
        for p, s in (
            ("", ""),
            ("", "_lo"),
            ("", "_hi"),
            ("", "_coverage"),
            ("", "_direction"),  # issue 29: the isotonic fit's direction (+1 / -1)
            ("d_", ""),
            ("d_", "_lo"),
            ("d_", "_hi"),
            ("d_", "_excludes_0"),
            ("d_", "_coverage"),  # issue 29 item 4: every Δ cell stores its coverage
            ("d_", "_p"),  # issue 29: the two-sided bootstrap p-value of every Δ
        )
    ),
)
OLD_POINTS = (
    "policy",
    "family",
    "beta",
    *(
        f"{m}{s}"
        for m in ("kl", "reward", "gold", "entropy", "entropy_first_k", "context_entropy")
        for s in ("", "_lo", "_hi")
    ),
    "front_reward_kl",
    "front_gold_kl",
    "front_reward_entropy",
)


def _params() -> dict:
    params = copy.deepcopy(BASE)
    params["align"]["variants"] = {k: dict(v[0]) for k, v in VARIANTS.items()}
    params["frontier"] = {"baseline": "dpo", "bootstrap": 300}
    return params


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _entry(n_inside: int, p: int, covers: list[int], recalls: list[int]) -> dict:
    inside = [1 + (i + p) % 3 if i < n_inside else 0 for i in range(N_SAMPLES)]
    return {"n_reference": N_REF, "inside": inside, "covers": covers, "recalls": recalls}


def write_eval(policy: str, s: int, kl: float, quality: bool, spaces=("tfidf/all",)) -> None:
    """One run: 6 prompts x 5 samples; reward 1 + KL/2 + a prompt effect; quality fields (k 2,
    10 reference points per space and set) from :data:`INSIDE` and hit lists."""
    rows = []
    for p in range(N_PROMPTS):
        rewards = [1 + kl / 2 + (p - 2.5) / 5 + (i - 2) / 10 for i in range(N_SAMPLES)]
        row = {
            "prompt_id": f"test-{p}",
            "prompt": "The film was",
            "rewards": rewards,
            "gold": [r / 2 for r in rewards],
            "logp": [-10.0] * N_SAMPLES,
            "entropy": [2.0 + kl / 10] * N_SAMPLES,
            "n_generated": [4] * N_SAMPLES,
        }
        if policy != "sft":
            row["logp_sft"] = [-10.0 - kl] * N_SAMPLES
        if quality:
            if policy == "sft":
                n_in, covers, recalls = 4, SFT_COVERS[s][p], SFT_RECALLS[s][p]
            else:
                which = VARIANTS[policy][1]
                n_in = INSIDE[which][p] + EXTRA.get(policy, 0)
                base = 0 if which == "lo" else 4  # the high-KL point hits other references
                covers = sorted(
                    {(base + p) % N_REF, (base + (2 * p + s) * (which == "lo")) % N_REF}
                )
                recalls = [(base + p + s) % N_REF] if p % 2 or which == "hi" else []
            row["quality"] = {"k": K}
            for key in spaces:
                row["quality"][key] = _entry(n_in, p, covers, recalls)
        rows.append(row)
    _write(Path(f"data/eval/{policy}/seed-{SEEDS[s]}.jsonl"), rows)


def build(kl: dict[str, float], quality: bool = True, spaces=("tfidf/all",)) -> None:
    for s in range(len(SEEDS)):
        write_eval("sft", s, 0.0, quality, spaces)
        for name, (_, which) in VARIANTS.items():
            write_eval(name, s, kl[which], quality, spaces)
        rows = [
            {
                "prompt_id": f"test-{p}",
                "prompt": "The film was",
                "completions": ["a", "b", "c", "d"],
                "rewards": [0.0, 1.0, 2.0, 3.0],
                "gold": [0.0, 0.5, 1.0, 1.5],
            }
            for p in range(N_PROMPTS)
        ]
        _write(Path(f"data/best_of_n/seed-{SEEDS[s]}.jsonl"), rows)
    Path("params.yaml").write_text(json.dumps(_params()))


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _csv(path: Path) -> tuple[tuple[str, ...], list[dict]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return tuple(reader.fieldnames), list(reader)


def _frac(hits: list[list[int]]) -> float:
    return len(set().union(*map(set, hits))) / N_REF


def _by(result: dict) -> dict:
    return {(r["kl"], r["family"]): r for r in result["matched"]}


def test_measures_match_the_runs_metric_templates():
    """Catches a QUALITY_MEASURES out of step with stages.lib.runs (a measure never found)."""
    templates = {m.split("_<")[0] for m in (*METRICS, *SET_METRICS) if "<space>" in m}
    assert set(QUALITY_MEASURES) == templates
    names = ["reward", "recall_tfidf_all", "precision_tfidf_all", "coverage_hidden_positive"]
    assert quality_groups(names) == [
        ("tfidf_all", ["precision_tfidf_all", "recall_tfidf_all"]),
        ("hidden_positive", ["coverage_hidden_positive"]),
    ]


def test_precision_is_interpolated_linearly_in_kl(repo):
    """Precision 0.2 at KL 1 and 0.6 at KL 3 gives 0.4 at KL 2, 0.3 at 1.5. Catches: quality
    left out of the curves, the nearest point instead of interpolation, values taken from the
    wrong β point, interpolation outside the replicates (a CI that misses the value)."""
    build({"lo": 1.0, "hi": 3.0})
    result = frontier(_params())
    levels = list(result["metrics"]["kl_levels"].values())
    assert levels == pytest.approx([1.5, 2.0, 2.5])  # quartiles of [1, 3]
    by = _by(result)
    for level, want in zip(levels, (0.3, 0.4, 0.5)):
        rkl = by[level, "sigmoid-reverse_kl"]
        assert rkl["precision_tfidf_all"] == pytest.approx(want)
        assert rkl["precision_tfidf_all_lo"] <= want <= rkl["precision_tfidf_all_hi"]
        assert rkl["precision_tfidf_all_coverage"] == 1.0
    # density and the set measures ride the same line: the mean of the two points at KL 2
    points = {r["policy"]: r for r in result["points"]}
    mid = by[2.0, "sigmoid-reverse_kl"]
    for m in ("density", "recall", "coverage"):
        name = f"{m}_tfidf_all"
        ends = (points["dpo"][name], points["rkl-lo"][name])
        assert mid[name] == pytest.approx(sum(ends) / 2), m
        assert ends[0] != pytest.approx(ends[1]), m  # a real slope, not a constant
    want_density = sum(1 + (i + p) % 3 for p, n in enumerate(INSIDE["lo"]) for i in range(n))
    assert points["dpo"]["density_tfidf_all"] == pytest.approx(want_density / K / 30)


def test_coverage_and_recall_of_sft_counted_by_hand(repo):
    """sft's coverage is the mean over seeds of |∪ covers over prompts| / N = (3 + 1 + 7) / 30,
    recall the same of ``recalls`` = (1 + 2 + 0) / 30. Catches: coverage averaged per prompt
    (a ratio, not a set), hits counted with repeats, covers and recalls swapped."""
    build({"lo": 1.0, "hi": 3.0})
    frontier(_params())
    columns, rows = _csv(repo / "reports/frontier/points.csv")
    sft = next(r for r in rows if r["policy"] == "sft")
    assert float(sft["coverage_tfidf_all"]) == pytest.approx(
        np.mean([_frac(h) for h in SFT_COVERS]), abs=1e-6
    )
    assert float(sft["coverage_tfidf_all"]) == pytest.approx(11 / 30, abs=1e-6)
    assert float(sft["recall_tfidf_all"]) == pytest.approx(3 / 30, abs=1e-6)
    assert float(sft["precision_tfidf_all"]) == pytest.approx(4 / 5, abs=1e-6)
    assert columns[: len(OLD_POINTS)] == OLD_POINTS  # the quality columns come after
    assert columns[len(OLD_POINTS) :] == tuple(
        f"{m}_tfidf_all{s}" for m in QUALITY_MEASURES for s in ("", "_lo", "_hi")
    )


def test_a_family_against_itself_differs_by_exactly_0(repo):
    """The baseline against itself and a clone family (the same rows under other names) give
    Δ 0 with interval [0, 0] for every measure, and a family one inside sample higher on every
    prompt gives Δ precision exactly +0.2, marked. Catches unpaired replicates (resamples
    drawn per policy or per metric: the clone's interval would be wide) and a Δ against the
    wrong family."""
    build({"lo": 1.0, "hi": 3.0})
    result = frontier(_params())
    for level in result["metrics"]["kl_levels"].values():
        by = _by(result)
        for fam in ("sigmoid-reverse_kl", "sigmoid-jsd"):
            for m in QUALITY_MEASURES:
                row, name = by[level, fam], f"{m}_tfidf_all"
                assert (row[f"d_{name}"], row[f"d_{name}_lo"], row[f"d_{name}_hi"]) == (0, 0, 0)
                assert row[f"d_{name}_excludes_0"] is False
        hinge = by[level, "hinge-reverse_kl"]
        assert (hinge["d_precision_tfidf_all_lo"], hinge["d_precision_tfidf_all_hi"]) == (
            pytest.approx(0.2),
            pytest.approx(0.2),
        )
        assert hinge["d_precision_tfidf_all_excludes_0"] is True
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    head = "| family | precision [95% CI] | Δ precision [95% CI] | recall [95% CI] |"
    # 3 levels, under the primary fit and again in the sensitivity section
    assert md.count("Quality–diversity in the `tfidf` space against the `all` reference set:") == 6
    assert md.count(head) == 6
    assert "| hinge-reverse_kl | 0.600 [" in md and "+0.200 [+0.200, +0.200] * |" in md
    assert "hinge-reverse_kl (precision_tfidf_all +" in md
    metrics = json.loads((repo / "metrics/frontier.json").read_text())
    assert metrics["hinge-reverse_kl"]["kl2"]["d_precision_tfidf_all"] == pytest.approx(0.2)
    assert metrics["sigmoid-jsd"]["kl2"]["coverage_tfidf_all_coverage"] == 1.0


def test_spaces_and_sets_are_read_off_the_rows(repo):
    """Every (space, set) all runs have gets its columns and table, one that a run lacks gets
    none. Catches hard-coded spaces or sets, and a metric kept although a run misses it."""
    build({"lo": 1.0, "hi": 3.0}, spaces=("encoder/all", "hidden/positive"))
    path = Path("data/eval/jsd/seed-1.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        del r["quality"]["hidden/positive"]
    _write(path, rows)
    result = frontier(_params())
    columns, _ = _csv(repo / "reports/frontier/matched_kl.csv")
    assert "d_coverage_encoder_all_excludes_0" in columns
    assert not any("hidden" in c or "tfidf" in c for c in columns)
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    assert "in the `encoder` space against the `all` reference set" in md and "hidden" not in md
    assert result["matched"][0]["precision_encoder_all"] == pytest.approx(0.3)


def test_best_of_n_has_no_quality_cells(repo):
    """At KL levels inside best-of-n's range its row is "ok" for reward but its quality cells
    are empty in the CSV and "–" in the Markdown. Catches best-of-n quality filled with 0."""
    build({"lo": 0.2, "hi": 0.6})
    result = frontier(_params())
    bon = [r for r in result["matched"] if r["family"] == "best-of-n"]
    assert bon and all(r["status"] == "ok" and "reward" in r for r in bon)
    _, rows = _csv(repo / "reports/frontier/matched_kl.csv")
    for r in (r for r in rows if r["family"] == "best-of-n"):
        assert (
            r["reward"] != "" and r["precision_tfidf_all"] == "" and r["d_recall_tfidf_all"] == ""
        )
    md = (repo / "reports/frontier/matched_kl.md").read_text()
    quality_tables = md.split("reference set:")[1:]
    assert all("| best-of-n | – | – | – | – | – | – | – | – |  |" in t for t in quality_tables)


def test_without_quality_the_files_keep_their_columns_and_values(repo):
    """Rows without ``quality`` give exactly the former columns (so the CSVs are the former
    bytes), no quality in the Markdown or metrics, and a notice PNG; with quality the former
    columns keep their values. Catches quality columns written empty when there is none,
    reordered columns, and a quality estimate that moves the shared bootstrap (other values)."""
    build({"lo": 1.0, "hi": 3.0}, quality=False)
    out = repo / "reports/frontier"
    frontier(_params())
    old = {name: _csv(out / name) for name in ("matched_kl.csv", "points.csv")}
    assert old["matched_kl.csv"][0] == OLD_MATCHED
    assert old["points.csv"][0] == OLD_POINTS
    md = (out / "matched_kl.md").read_text()
    assert "Quality" not in md and "precision" not in md
    assert "tfidf" not in (repo / "metrics/frontier.json").read_text()
    png = (out / "precision_recall.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    build({"lo": 1.0, "hi": 3.0}, quality=True)
    frontier(_params())
    for name, (columns, rows) in old.items():
        new_columns, new_rows = _csv(out / name)
        assert new_columns[: len(columns)] == columns
        assert [{k: r[k] for k in columns} for r in new_rows] == rows, name
    assert (out / "precision_recall.png").stat().st_size > len(png)


@pytest.mark.parametrize("fit", ["isotonic", "linear"])
def test_set_measures_under_both_fits(repo, fit):
    """Recall and coverage (fractions of the reference set, bootstrapped over reference
    points) at matched KL under either fit: at the middle level the mean of the two ends'
    per-seed values (two points: any monotone fit reads their mean there), coverage 1, an
    interval, and a Δ of exactly 0 for the clone family under both fits. Catches set measures
    dropped from the per-seed fit (no per-seed replicates) or fitted on the wrong resamples
    (the clone's Δ would not be 0)."""
    build({"lo": 1.0, "hi": 3.0})
    params = _params()
    params["frontier"]["fit"] = fit
    result = frontier(params)
    points = {r["policy"]: r for r in result["points"]}
    for rows in (result["matched"], result["sensitivity"]):
        by = _by({"matched": rows})
        for m in ("recall_tfidf_all", "coverage_tfidf_all"):
            mid = by[2.0, "sigmoid-reverse_kl"]
            assert mid[m] == pytest.approx((points["dpo"][m] + points["rkl-lo"][m]) / 2)
            assert mid[f"{m}_coverage"] == 1.0 and mid[f"{m}_lo"] <= mid[f"{m}_hi"]
            clone = by[2.0, "sigmoid-jsd"]
            assert (clone[f"d_{m}"], clone[f"d_{m}_lo"], clone[f"d_{m}_hi"]) == (0, 0, 0)
    assert {r["fit"] for r in result["matched"]} == {fit}
