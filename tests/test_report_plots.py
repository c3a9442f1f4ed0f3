"""The report's figures (stages/lib/report_plots.py): point labels that never overlap, and
counts in the titles worded for one seed, prompt or sample (issue 27 item 8).

Every test here failed on the old code: it drew every label at the same offset from its point
(an external policy evaluated at the SFT policy's point had its label on top of the SFT's) and
titled a one-seed run "mean over 1 seeds"; ``label_offsets``/``annotate_points``/
``scatter_figure`` did not exist."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from stages.lib.report_plots import (  # noqa: E402
    annotate_points,
    label_offsets,
    scatter_figure,
)


def _row(policy: str, loss: str, reward: float, kl: float, n_seeds: int = 3) -> dict:
    return {
        "policy": policy,
        "loss": loss,
        "divergence": "reverse_kl" if loss == "sigmoid" else "",
        "reward": reward,
        "reward_lo": reward - 0.1,
        "reward_hi": reward + 0.1,
        "kl": kl,
        "kl_lo": kl - 0.1,
        "kl_hi": kl + 0.1,
        "n_seeds": n_seeds,
        "n_prompts": 1,
        "n_samples": 1,
    }


def _boxes(fig) -> dict[str, object]:
    """The drawn extent of every annotation of ``fig``'s axes, by its text."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return {t.get_text(): t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts}


def _no_overlap(boxes: dict) -> None:
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"


def test_labels_of_far_apart_points_keep_their_place():
    places = label_offsets([(0, 0), (200, 0), (0, 200)], ["sft", "dpo", "ipo"], 8)
    assert places == [(5, 4, "left")] * 3  # where every label was drawn before


def test_a_label_on_a_point_already_labelled_goes_elsewhere():
    places = label_offsets([(100, 100), (100, 100), (100, 100)], ["sft", "trl (external)", "x"], 8)
    assert places[0] == (5, 4, "left")
    assert len(set(places)) == 3  # three different places, none on another


def test_each_label_sits_nearer_its_own_point_than_a_close_neighbour():
    """The demo's hinge (below) and jsd (6 points above it): the old place put hinge's label
    beside jsd's point, reading as jsd's."""
    hinge, jsd = (100.0, 100.0), (99.0, 106.0)
    places = label_offsets([hinge, jsd], ["hinge", "jsd"], 8)
    for (x, y), (_, dy, _) in zip([hinge, jsd], places, strict=True):
        middle = y + dy + 0.6 * 8  # the label's vertical middle (baseline + half its height)
        other = jsd if (x, y) == hinge else hinge
        assert abs(middle - y) < abs(middle - other[1])


def test_an_external_policy_on_the_sft_point_gets_its_own_label_place():
    rows = [
        _row("sft", "", 0.0, 0.0),
        _row("dpo", "sigmoid", 2.0, 7.0),
        _row("trl-dpo", "external", 0.0, 0.0),  # trained elsewhere, barely moved from SFT
    ]
    per_seed = [{"policy": r["policy"], "reward": r["reward"], "kl": r["kl"]} for r in rows]
    fig = scatter_figure(rows, per_seed, "kl", "KL")
    try:
        boxes = _boxes(fig)
        assert {"sft", "dpo", "trl-dpo (external)"} <= set(boxes)
        _no_overlap(boxes)
    finally:
        plt.close(fig)


def test_near_points_on_any_axes_get_separate_labels():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    try:
        points = [(0.5, 0.5), (0.5005, 0.5), (0.5, 0.501), (0.0, 0.0), (1.0, 1.0)]
        ax.plot(*zip(*points), "o")
        labels = ["sft", "other (external)", "third", "a", "b"]
        annotate_points(ax, points, labels, 6, first=(4, 3))
        _no_overlap(_boxes(fig))
    finally:
        plt.close(fig)


@pytest.mark.parametrize("n_seeds, words", [(1, "mean over 1 seed,"), (3, "mean over 3 seeds,")])
def test_titles_count_seeds_prompts_and_samples_in_the_right_number(n_seeds, words):
    rows = [_row("sft", "", 0.0, 0.0, n_seeds), _row("dpo", "sigmoid", 1.0, 2.0, n_seeds)]
    fig = scatter_figure(rows, [], "kl", "KL")
    try:
        title = fig.axes[0].get_title()
        assert words in title and "1 eval prompt × 1 sample," in title
        assert "1 seeds" not in title and "1 samples" not in title
    finally:
        plt.close(fig)
