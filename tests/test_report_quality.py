"""The ``report`` stage's quality–diversity part (issue #28) on hand-made evaluate runs with
``quality`` fields: values by hand, the set bootstrap against a brute-force one, paired
differences, rank agreement between feature spaces, outputs and bad input. Each test says
which wrong code it catches."""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from stages.lib.bootstrap import draw_resamples, interval, set_replicates
from stages.lib.config import load_params
from stages.lib.report_plots import precision_recall_png
from stages.lib.report_quality import COLUMNS, NO_QUALITY, SPREAD_NOTE, layout_of, spearman
from stages.report import report

ROOT = Path(__file__).resolve().parents[1]
FULL = load_params(ROOT / "params.yaml")
SEEDS, PROMPTS, SAMPLES, N_REF, K, B = [0, 1], 6, 2, 8, 2, 300
KEYS = ("tfidf/all", "tfidf/positive", "hidden/all", "hidden/positive")
POLICIES = ("sft", "dpo", "hinge")


def _params(*variants: str, baseline: str = "dpo") -> dict:
    params = copy.deepcopy(FULL)
    pool = {**FULL["align"]["variants"], "twin": FULL["align"]["variants"]["dpo"]}
    params["align"]["variants"] = {v: dict(pool[v]) for v in variants}
    params.update(seeds=SEEDS, external=[])
    params["report"] = {**params["report"], "baseline": baseline, "bootstrap": B}
    return params


def random_fields(policy: str, seed: int) -> list[dict]:
    """Per prompt, per space/set: a seeded random field (inside counts, covers, recalls)."""
    rng = np.random.default_rng([sum(map(ord, policy)), seed])
    out = []
    for _ in range(PROMPTS):
        q = {}
        for key in KEYS:
            covers = sorted(rng.choice(N_REF, rng.integers(0, 3), replace=False).tolist())
            recalls = sorted(rng.choice(N_REF, rng.integers(0, 4), replace=False).tolist())
            q[key] = {"inside": rng.integers(0, 4, SAMPLES).tolist(), "covers": covers}
            q[key]["recalls"] = recalls
        out.append(q)
    return out


def level_fields(level: int, hidden_level: int) -> list[dict]:
    """Every prompt alike: ``level`` (``hidden_level`` in the hidden space) samples inside,
    reference points 0..level covered and recalled; ranks set by the levels alone."""

    def field(n: int) -> dict:
        inside = [1] * n + [0] * (SAMPLES - n)  # n <= SAMPLES samples inside one ball
        return {"inside": inside, "covers": list(range(n + 1)), "recalls": list(range(n))}

    return [
        {key: field(hidden_level if key.startswith("hidden") else level) for key in KEYS}
        for _ in range(PROMPTS)
    ]


def write_run(policy: str, seed: int, fields: list[dict] | None, spread: float = 0.5) -> None:
    """``data/eval/<policy>/seed-<s>.jsonl`` with the per-prompt ``quality`` fields (None:
    none), its metrics file with the matching ``quality`` dict and (variants) align metrics."""
    rows, measures = [], {}
    for p in range(PROMPTS):
        row = {
            "prompt_id": f"test-{p}",
            "prompt": "The film was",
            "completions": [" good."] * SAMPLES,
            "rewards": [1.0 + p] * SAMPLES,
            "logp": [-10.0] * SAMPLES,
            "logp_sft": [-11.0] * SAMPLES,
            "entropy": [2.0] * SAMPLES,
            "n_generated": [3] * SAMPLES,
        }
        if fields is not None:
            row["quality"] = {"k": K}
            row["quality"].update({k: {"n_reference": N_REF, **f} for k, f in fields[p].items()})
        rows.append(row)
    if fields is not None:
        for key in KEYS:
            space, ref = key.split("/")
            per = [f[key] for f in fields]
            inside = np.concatenate([f["inside"] for f in per])
            measures[f"precision_{space}_{ref}"] = float((inside > 0).mean())
            measures[f"recall_{space}_{ref}"] = len({i for f in per for i in f["recalls"]}) / N_REF
            measures[f"density_{space}_{ref}"] = float(inside.mean() / K)
            measures[f"coverage_{space}_{ref}"] = len({i for f in per for i in f["covers"]}) / N_REF
            measures[f"mauve_{space}_{ref}"] = spread + 0.1 * seed
        measures.update(vendi_tfidf=10 + seed, vendi_hidden=3 + spread, self_bleu=40 - seed)
    path = Path(f"data/eval/{policy}/seed-{seed}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"reward": float(np.mean([r["rewards"] for r in rows])), "entropy": 2.0}
    metrics.update(nll=11.0, kl=0.0 if policy == "sft" else 1.0, distinct_2=0.7, length=3.0)
    metrics.update(n_prompts=PROMPTS, n_samples=SAMPLES, distinct_1=0.3)
    metrics.update({"quality": {k: round(v, 6) for k, v in measures.items()}} if fields else {})
    Path(f"metrics/eval/{policy}").mkdir(parents=True, exist_ok=True)
    Path(f"metrics/eval/{policy}/seed-{seed}.json").write_text(json.dumps(metrics))
    if policy != "sft":
        Path(f"metrics/align/{policy}").mkdir(parents=True, exist_ok=True)
        Path(f"metrics/align/{policy}/seed-{seed}.json").write_text('{"val_accuracy": 0.6}')


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for policy in POLICIES:
        for seed in SEEDS:
            write_run(policy, seed, random_fields(policy, seed), spread=0.1 * len(policy))
    return tmp_path


def _quality() -> dict:
    return json.loads(Path("metrics/quality.json").read_text())


def _csv(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- values


def test_values_match_a_hand_computation(repo):
    """Catches coverage/recall averaged over prompts instead of the union of the prompts'
    hits, density without the 1/k, precision counting inside counts instead of samples inside
    a ball, and MAUVE/Vendi/self-BLEU not taken as mean, min and max over the seeds."""
    report(_params("dpo", "hinge"))
    got = _quality()
    for policy in POLICIES:
        fields = [random_fields(policy, s) for s in SEEDS]
        for key in KEYS:
            name = key.replace("/", "_")
            per = [[f[key] for f in run] for run in fields]
            cover = np.mean([len({i for f in run for i in f["covers"]}) / N_REF for run in per])
            recall = np.mean([len({i for f in run for i in f["recalls"]}) / N_REF for run in per])
            inside = [np.concatenate([f["inside"] for f in run]) for run in per]
            precision = np.mean([(x > 0).mean() for x in inside])
            density = np.mean([x.mean() / K for x in inside])
            m = got[policy]
            assert m[f"coverage_{name}"] == pytest.approx(cover, abs=1e-6)
            assert m[f"recall_{name}"] == pytest.approx(recall, abs=1e-6)
            assert m[f"precision_{name}"] == pytest.approx(precision, abs=1e-6)
            assert m[f"density_{name}"] == pytest.approx(density, abs=1e-6)
            assert m[f"coverage_{name}_lo"] <= m[f"coverage_{name}"] <= m[f"coverage_{name}_hi"]
        spread = 0.1 * len(policy)
        assert got[policy]["mauve_tfidf_all"] == pytest.approx(spread + 0.05)
        assert got[policy]["mauve_tfidf_all_min"] == pytest.approx(spread)
        assert got[policy]["mauve_tfidf_all_max"] == pytest.approx(spread + 0.1)
        assert (got[policy]["self_bleu_min"], got[policy]["self_bleu_max"]) == (39.0, 40.0)
        assert "self_bleu_lo" not in got[policy]  # no bootstrap interval claimed


def test_set_metrics_use_the_shared_draws_and_pair_differences(repo):
    """Coverage's replicates recomputed from hit matrices stacked by hand from the rows'
    ``covers`` lists, with the library's set bootstrap on the report's own draws (the set
    bootstrap itself is checked in tests/test_bootstrap.py). Catches: quality resamples drawn
    apart from the summary's (other seed or count), hits of the wrong space or set, a hit
    matrix transposed, differences of intervals instead of replicates, and unpaired
    differences (the baseline on other resamples)."""
    report(_params("dpo", "hinge"))
    got = _quality()
    draws = draw_resamples(len(SEEDS), PROMPTS, B, FULL["seed"])

    def reps(policy: str) -> np.ndarray:
        hits = np.zeros((len(SEEDS), N_REF, PROMPTS), dtype=bool)
        for s, seed in enumerate(SEEDS):
            for p, f in enumerate(random_fields(policy, seed)):
                hits[s, f["hidden/positive"]["covers"], p] = True
        return set_replicates(hits, draws)

    hinge, dpo = reps("hinge"), reps("dpo")
    m = got["hinge"]
    assert (m["coverage_hidden_positive_lo"], m["coverage_hidden_positive_hi"]) == pytest.approx(
        interval(hinge), abs=1e-6
    )
    assert (m["d_coverage_hidden_positive_lo"], m["d_coverage_hidden_positive_hi"]) == (
        pytest.approx(interval(hinge - dpo), abs=1e-6)
    )
    assert interval(hinge - dpo) != pytest.approx(np.subtract(interval(hinge), interval(dpo)))


def test_a_policy_against_itself_differs_by_exactly_zero(repo):
    """A variant whose runs equal the baseline's: every paired difference 0 with a zero-width
    interval, not starred. Catches an unpaired bootstrap of the difference."""
    for seed in SEEDS:
        write_run("twin", seed, random_fields("dpo", seed), spread=0.3)
    report(_params("dpo", "hinge", "twin"))
    twin = _quality()["twin"]
    d = {k: v for k, v in twin.items() if k.startswith("d_")}
    assert len(d) == 3 * 16 and set(d.values()) == {0.0}
    rows = [r for r in _csv("reports/quality.csv") if r["policy"] == "twin" and r["d"]]
    assert len(rows) == 16 and {r["d_excludes_0"] for r in rows} == {"False"}
    md = Path("reports/quality.md").read_text()
    assert "| twin | " in md and "+0.000 [+0.000, +0.000] *" not in md


def test_swapping_the_baseline_flips_the_sign(repo):
    """hinge − dpo is −(dpo − hinge), interval mirrored. Catches differences taken against a
    fixed policy, or the baseline's sign the wrong way round."""
    report(_params("dpo", "hinge", baseline="dpo"))
    against_dpo = _quality()["hinge"]
    report(_params("dpo", "hinge", baseline="hinge"))
    against_hinge = _quality()["dpo"]
    for key in KEYS:
        for m in ("precision", "recall", "density", "coverage"):
            name = f"d_{m}_{key.replace('/', '_')}"
            assert against_dpo[name] == pytest.approx(-against_hinge[name], abs=2e-6)
            assert against_dpo[f"{name}_lo"] == pytest.approx(
                -against_hinge[f"{name}_hi"], abs=2e-6
            )
    assert any(abs(against_dpo[k]) > 0.01 for k in against_dpo if k.startswith("d_"))


def test_paired_difference_is_policy_minus_baseline(tmp_path, monkeypatch):
    """Levels 0, 1, 2 samples inside a ball (of 2) on every prompt: hinge − dpo precision is
    +0.5 exactly, sft − dpo −0.5, both starred. Catches baseline − policy (the swap test alone
    cannot: it flips both signs)."""
    monkeypatch.chdir(tmp_path)
    for level, policy in enumerate(POLICIES):
        for seed in SEEDS:
            write_run(policy, seed, level_fields(level, level))
    report(_params("dpo", "hinge"))
    got = _quality()
    for policy, d in (("hinge", 0.5), ("sft", -0.5)):
        keys = ("d_precision_tfidf_all", "d_precision_tfidf_all_lo", "d_precision_tfidf_all_hi")
        assert [got[policy][k] for k in keys] == [d, d, d]
    assert "| hinge | 1.000 [1.000, 1.000] |" in Path("reports/quality.md").read_text()
    assert "+0.500 [+0.500, +0.500] *" in Path("reports/quality.md").read_text()


# --------------------------------------------------------------------------- agreement


def test_spearman_matches_scipy_with_ties():
    """Catches ranks without tie averaging and a correlation of values instead of ranks."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (7, 50)), rng.normal(size=(7, 50)) ** 3
    got = spearman(x, y)
    want = [spearmanr(x[:, b], y[:, b]).statistic for b in range(50)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert spearman(x[:, 0], y[:, 0]) == pytest.approx(want[0], abs=1e-12)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))  # every value tied: undefined


def test_identical_spaces_agree_exactly(tmp_path, monkeypatch):
    """The hidden fields are copies of the tfidf ones (random, varying by prompt and seed):
    rho = 1 with interval [1, 1] for every measure and set. Catches a rho between the wrong
    vectors (across measures, sets or policies) and unpaired replicates (the interval would
    leave 1)."""
    monkeypatch.chdir(tmp_path)
    for policy in POLICIES:
        for seed in SEEDS:
            fields = random_fields(policy, seed)
            for f in fields:
                f.update({"hidden/all": f["tfidf/all"], "hidden/positive": f["tfidf/positive"]})
            write_run(policy, seed, fields)
    report(_params("dpo", "hinge"))
    agree = _quality()["agreement"]
    assert set(agree) == {
        f"{m}_{r}"
        for m in ("precision", "recall", "density", "coverage")
        for r in ("all", "positive")
    }
    for cells in agree.values():
        (cell,) = cells.values()
        assert list(cells) == ["tfidf_vs_hidden"] and cell["n_policies"] == 3
        assert (cell["rho"], cell["rho_lo"], cell["rho_hi"]) == (1.0, 1.0, 1.0)
    assert "| precision | all | +1.000 [+1.000, +1.000] |" in Path("reports/quality.md").read_text()


def test_reversed_spaces_give_minus_one(tmp_path, monkeypatch):
    """The hidden space ranks sft, dpo, hinge in reverse on every prompt: rho = -1; for the
    per-prompt ratios (precision, density) in every replicate too. Catches a sign error and
    ranks taken in the wrong direction in one space only."""
    monkeypatch.chdir(tmp_path)
    for level, policy in enumerate(POLICIES):
        for seed in SEEDS:
            write_run(policy, seed, level_fields(level, 2 - level))
    report(_params("dpo", "hinge"))
    agree = _quality()["agreement"]
    for key, cells in agree.items():
        cell = cells["tfidf_vs_hidden"]
        assert cell["rho"] == -1.0, key
        if key.startswith(("precision", "density")):
            assert (cell["rho_lo"], cell["rho_hi"], cell["n_undefined"]) == (-1.0, -1.0, 0), key
    assert (
        "| density | positive | -1.000 [-1.000, -1.000] |" in Path("reports/quality.md").read_text()
    )


def test_agreement_interval_is_rho_over_the_replicates(repo):
    """rho's interval is the percentile interval of rho recomputed per replicate, from the
    same replicates as the values' intervals. Catches an interval from the values' intervals
    or a normal approximation: checked against scipy on brute-force replicates."""
    report(_params("dpo", "hinge"))
    got = _quality()["agreement"]["density_all"]["tfidf_vs_hidden"]
    draws = draw_resamples(len(SEEDS), PROMPTS, B, FULL["seed"])

    def density(policy: str, key: str) -> np.ndarray:
        fields = [random_fields(policy, s) for s in SEEDS]
        x = np.array([[sum(f[key]["inside"]) / K for f in run] for run in fields])  # [S, P]
        per_seed = draws.prompt_weights @ x.T / (draws.prompt_weights.sum(1)[:, None] * SAMPLES)
        return np.take_along_axis(per_seed, draws.seeds, axis=1).mean(1)

    a = np.stack([density(p, "tfidf/all") for p in POLICIES])
    b = np.stack([density(p, "hidden/all") for p in POLICIES])
    with warnings.catch_warnings():  # replicates where a space ties every policy: nan
        warnings.simplefilter("ignore")
        rhos = np.array([spearmanr(a[:, i], b[:, i]).statistic for i in range(B)])
    ok = np.isfinite(rhos)
    assert 0 < got["n_undefined"] == int((~ok).sum())
    assert (got["rho_lo"], got["rho_hi"]) == pytest.approx(interval(rhos[ok]), abs=1e-6)


# --------------------------------------------------------------------------- outputs


def test_outputs_tables_csv_and_figure(repo):
    """The Markdown has one k-NN table per (space, set), the spread table with its note, the
    agreement table and the header naming spaces and sets; the CSV a row per (policy,
    metric) with what its lo/hi are. Catches tables or rows left out and mislabelled ranges."""
    report(_params("dpo", "hinge"))
    md = Path("reports/quality.md").read_text()
    for key in KEYS:
        space, ref = key.split("/")
        assert f"### Space {space}, reference set {ref}" in md
    assert "`tfidf`: TF-IDF + SVD fitted on the train reviews, independent of every model" in md
    assert "`hidden`: the SFT policy's mean last hidden state" in md
    assert "`positive`: held-out reviews of label 1" in md
    assert "samples' k-NN radii held at the full sample set" in md
    assert SPREAD_NOTE in md and "## Rank agreement between feature spaces" in md
    assert "| dpo | " in md and "(baseline)" in md
    rows = _csv("reports/quality.csv")
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 3 * (16 + 4 + 2 + 1)
    kinds = {(r["measure"], r["interval"]) for r in rows}
    assert kinds == {
        *((m, "bootstrap_95") for m in ("precision", "recall", "density", "coverage")),
        *((m, "seed_min_max") for m in ("mauve", "vendi", "self_bleu")),
    }
    png = Path("reports/precision_recall.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000


def test_intervals_beside_their_value_are_drawn(tmp_path):
    """A percentile interval need not hold its value (a biased set bootstrap: on a demo
    run, recall's interval from a prompt resample lay wholly below it). Catches error bars
    drawn relative to the point (matplotlib refuses negative lengths)."""
    layout = layout_of({"precision_tfidf_all": 0.9, "recall_tfidf_all": 0.9})
    row = {"policy": "dpo", "loss": "sigmoid", "divergence": "reverse_kl", "n_seeds": 3}
    row.update(precision_tfidf_all=0.9, precision_tfidf_all_lo=0.8, precision_tfidf_all_hi=0.95)
    row.update(recall_tfidf_all=0.9, recall_tfidf_all_lo=0.7, recall_tfidf_all_hi=0.8)
    precision_recall_png([row], layout, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"


def test_quality_leaves_every_other_output_byte_identical(repo):
    """The same runs with and without quality fields give byte-identical summary outputs.
    Catches quality code that consumes the bootstrap's random stream or changes the summary
    columns, rows or figures."""
    params = _params("dpo", "hinge")
    files = ["reports/summary.md", "reports/summary.csv", "reports/seeds.csv"]
    files += ["reports/points.json", "metrics/summary.json"]
    report(params)
    with_quality = {f: Path(f).read_bytes() for f in files}
    for policy in POLICIES:
        for seed in SEEDS:
            write_run(policy, seed, None)
    report(params)
    assert {f: Path(f).read_bytes() for f in files} == with_quality


def test_without_quality_the_placeholders_are_written(repo):
    """No run has quality (byo, quality.measures: []): the report works as before and every
    declared quality output exists. Catches a crash or a missing DVC output."""
    for policy in POLICIES:
        for seed in SEEDS:
            write_run(policy, seed, None)
    rows = report(_params("dpo", "hinge"))
    assert [r["policy"] for r in rows] == list(POLICIES)
    assert Path("reports/quality.md").read_text() == f"# Quality and diversity\n\n{NO_QUALITY}\n"
    assert Path("reports/quality.csv").read_text().splitlines() == [",".join(COLUMNS)]
    assert _quality() == {}
    assert Path("reports/precision_recall.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- bad input


def test_seeds_with_and_without_quality_fail_naming_the_file(repo):
    """One seed of a policy evaluated before quality existed: a one-line error naming its file,
    before anything is written. Catches a silent mean over the seeds that have it."""
    write_run("hinge", 1, None)
    with pytest.raises(ValueError) as err:
        report(_params("dpo", "hinge"))
    msg = str(err.value)
    assert msg.startswith("metrics/eval/hinge/seed-1.json: no quality measures, but ")
    assert msg.endswith("(re-run evaluate)") and "\n" not in msg
    assert not Path("reports/summary.md").exists()


def test_files_of_different_runs_and_malformed_quality_fail(repo):
    """A metrics file whose coverage disagrees with its rows (files of different runs), and a
    non-number in 'quality'. Catches values reported from one file while the other is stale."""
    path = Path("metrics/eval/dpo/seed-0.json")
    metrics = json.loads(path.read_text())
    metrics["quality"]["coverage_tfidf_all"] += 0.25
    path.write_text(json.dumps(metrics))
    with pytest.raises(
        ValueError,
        match=r"^data/eval/dpo/seed-0\.jsonl: coverage_tfidf_all .* "
        r"differs from metrics/eval/dpo/seed-0\.json's .*different runs",
    ):
        report(_params("dpo", "hinge"))
    metrics["quality"]["coverage_tfidf_all"] = "high"
    path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"^metrics/eval/dpo/seed-0\.json: field 'quality' must"):
        report(_params("dpo", "hinge"))


def test_one_seed_is_worded_in_the_singular(repo):
    """Issue 27 item 8: a one-seed run was "seeds 0" in quality.md; catches the plural kept."""
    params = {**_params("dpo", "hinge"), "seeds": [0]}
    report(params)
    md = Path("reports/quality.md").read_text()
    assert f"({PROMPTS} held-out prompts × {SAMPLES} samples per seed; seed 0) against" in md
    assert f"({B} resamples, the resamples of summary.md)" in md
