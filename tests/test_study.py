"""The study's size and time estimate (stages/bench/study.py) on the composed profiles."""

from __future__ import annotations

from stages.bench.study import compose, main, study_size


def test_study_profile_counts_its_runs():
    """Issue 29's design: 36 variants (the demo's 10 among them) in the confirmatory run and 7
    on all pairs after it, 5 seeds; every run is new (the trajectory and the one learning rate
    change every demo run), so from scratch."""
    study, demo = compose("study"), compose("demo")
    size = study_size(study, set(demo["align"]["variants"]), from_scratch=True)
    assert size["new_variants"] == 43 and size["seeds"] == 5
    assert size["runs"]["align"] == size["runs"]["evaluate"] == 215
    assert size["runs"]["best-of-n"] == 5 == size["runs"]["evaluate-sft"]


def test_from_scratch_counts_every_run(capsys):
    size = study_size(compose("demo"), set(), from_scratch=True)
    assert size["runs"]["align"] == 30 and size["runs"]["best-of-n"] == 3
    assert size["runs"]["evaluate-sft"] == 3 and size["runs"]["shared"] == 1
    main(["--profile", "demo", "--from-scratch"])
    out = capsys.readouterr().out
    assert out.startswith("profile=demo: 10 variants in 10 families, 3 seeds")
    assert "align 30, evaluate 30, evaluate-sft 3, best-of-n 3" in out
