"""The study's size and time estimate (stages/bench/study.py) on the composed profiles."""

from __future__ import annotations

import pytest

from stages.bench.study import SECONDS, compose, main, study_size


def test_study_profile_counts_five_betas_per_family_and_the_new_runs():
    """Five β per family, seven for forward KL (two added at small β after the study-fdpo run)."""
    study, demo = compose("study"), compose("demo")
    size = study_size(study, set(demo["align"]["variants"]), from_scratch=False)
    betas = sorted(n for _, n in size["families"])
    assert len(betas) == 11 and betas == [5] * 10 + [7]
    assert size["new_variants"] == 47 and size["seeds"] == 3
    assert size["runs"]["align"] == size["runs"]["evaluate"] == 141
    assert size["runs"]["best-of-n"] == 0 and size["runs"]["shared"] == 0
    expected = 141 * (SECONDS["align"] + SECONDS["evaluate"]) + SECONDS["report"]
    assert size["seconds"] == pytest.approx(expected + SECONDS["frontier"])


def test_from_scratch_counts_every_run(capsys):
    size = study_size(compose("demo"), set(), from_scratch=True)
    assert size["runs"]["align"] == 30 and size["runs"]["best-of-n"] == 3
    assert size["runs"]["evaluate-sft"] == 3 and size["runs"]["shared"] == 1
    main(["--profile", "demo", "--from-scratch"])
    out = capsys.readouterr().out
    assert out.startswith("profile=demo: 10 variants in 10 families, 3 seeds")
    assert "align 30, evaluate 30, evaluate-sft 3, best-of-n 3" in out
