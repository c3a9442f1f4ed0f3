"""Known answers for the quality–diversity measures (stages/lib/quality.py) and their feature
spaces (stages/lib/quality_features.py), issue #28 item 5. Each test says which wrong code it
catches."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import prdc
import pytest
import sacrebleu

from stages.lib.quality import (
    FEATURE_MEASURES,
    check_feature_spaces,
    check_k,
    check_measures,
    check_reference_size,
    mauve_score,
    prdc_measures,
    quality_diversity,
    self_bleu,
    vendi_score,
)
from stages.lib.quality_features import TfidfSvd, mean_hidden_features, tfidf_svd_features

CENTRES = 20.0 * np.eye(4, 8)  # four modes, 20 apart per axis, in 8 dimensions


def modes(n_per_mode: int, which=(0, 1, 2, 3), seed: int = 0) -> np.ndarray:
    """``n_per_mode`` unit-variance Gaussian points around each of the chosen centres."""
    rng = np.random.default_rng(seed)
    return np.concatenate([CENTRES[m] + rng.normal(size=(n_per_mode, 8)) for m in which])


# --- precision, recall, density, coverage -------------------------------------------------------


def test_prdc_by_hand_on_a_line():
    # reference 0,1,2,3 (1-NN radius 1 each), samples 0.5 and 10 (1-NN radius 9.5 each):
    # 0.5 lies in the balls of 0 and 1, 10 in none; every real point lies in the ball of 0.5.
    # Catches: <= for <, a radius counting the point itself (radius 0), density not / k.
    ref, smp = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [10.0]])
    assert prdc_measures(ref, smp, k=1) == {
        "precision": 0.5,
        "recall": 1.0,
        "density": 1.0,
        "coverage": 0.5,
    }
    # the other way round (balls of radius 9.5 around 0.5 and 10): 0 lies in one ball, 1, 2, 3
    # in both, so density (1 + 2 + 2 + 2) / 4 = 1.75 exceeds 1; 10 lies in no ball of radius 1
    assert prdc_measures(smp, ref, k=1) == {
        "precision": 1.0,
        "recall": 0.5,
        "density": 1.75,
        "coverage": 1.0,
    }


def test_prdc_matches_the_authors_package():
    # Catches any drift from Naeem et al.'s own code (prdc 0.2), e.g. a swapped radius.
    rng = np.random.default_rng(3)
    ref, smp = rng.normal(size=(60, 5)), rng.normal(size=(40, 5)) + 0.5
    for k in (1, 3, 7):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
            theirs = prdc.compute_prdc(ref, smp, k)
        ours = prdc_measures(ref, smp, k)
        assert ours == pytest.approx({key: float(v) for key, v in theirs.items()}, abs=1e-12)


def test_identical_sets_score_one():
    # Catches: a radius that excludes the k-th neighbour's own ball member (density != 1),
    # coverage or recall measured from the wrong side, MAUVE not on the two histograms.
    x = modes(25)
    m = quality_diversity(x, x.copy(), k=5, seed=0)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert m["density"] == pytest.approx(1.0)
    assert m["mauve"] == pytest.approx(1.0, abs=1e-9)


def test_far_apart_sets_score_zero():
    # Catches: balls sized on the other set, or MAUVE fed one set twice.
    ref, smp = modes(25, which=(0,)), modes(25, which=(0,), seed=1) + 100.0
    m = quality_diversity(ref, smp, k=5, seed=0)
    assert m["precision"] == m["recall"] == m["density"] == m["coverage"] == 0.0
    assert m["mauve"] < 0.05  # disjoint histograms: the area under (1-λ)^5, λ^5 is ~0.004


def test_dropping_modes_lowers_recall_and_coverage_not_precision():
    # Samples from 1 of the 4 reference modes: still inside the human manifold (precision,
    # density ~ as high as a full sampler's), but covering a quarter of it.
    # Catches: recall/coverage computed on sample balls only, precision from reference points.
    ref = modes(40, seed=10)
    full = quality_diversity(ref, modes(40, seed=1), k=5, seed=0)  # 160 samples each
    one = quality_diversity(ref, modes(160, which=(2,), seed=1), k=5, seed=0)
    assert one["precision"] > 0.85 and abs(one["precision"] - full["precision"]) < 0.05
    assert one["density"] > 0.9 and abs(one["density"] - full["density"]) < 0.1
    assert full["recall"] > 0.85 and one["recall"] < 0.35
    assert full["coverage"] > 0.85 and one["coverage"] < 0.3
    assert one["mauve"] < full["mauve"]


def test_swapped_reference_and_samples_flip_precision_and_recall():
    # The direction is fixed: samples on one mode of a 4-mode reference have high precision
    # and low recall; passing them as the reference gives the opposite. Catches an
    # implementation (or a caller) that swaps the arguments anywhere; Vendi is the samples'.
    ref, smp = modes(40), modes(40, which=(1,), seed=1)
    right = quality_diversity(ref, smp, k=5, seed=0)
    wrong = quality_diversity(smp, ref, k=5, seed=0)
    assert right["precision"] > 0.85 and right["recall"] < 0.35
    assert wrong["precision"] < 0.35 and wrong["recall"] > 0.85
    assert right["vendi"] < 2.0 < wrong["vendi"]  # one tight mode vs four


def test_measures_subset_and_order():
    # Catches: measures ignored, or computed but returned in the caller's order.
    x, y = modes(10), modes(10, seed=1)
    assert list(quality_diversity(x, y, k=3, seed=0, measures=["vendi", "recall"])) == [
        "recall",
        "vendi",
    ]
    assert list(quality_diversity(x, y, k=3, seed=0)) == list(FEATURE_MEASURES)
    assert quality_diversity(x, y, k=3, seed=0, measures=["self_bleu"]) == {}


# --- MAUVE ------------------------------------------------------------------------------------


def test_mauve_deterministic_and_sensitive():
    # Catches: an unseeded k-means, or a score that ignores the samples.
    ref, near, far = modes(50), modes(50, seed=1), modes(200, which=(0,), seed=1)
    assert mauve_score(ref, near, seed=0) == mauve_score(ref, near, seed=0)
    assert mauve_score(ref, near, seed=0) > 0.9 > 0.5 > mauve_score(ref, far, seed=0)


# --- Vendi ------------------------------------------------------------------------------------


def test_vendi_known_answers():
    # Catches: a kernel without L2-normalised rows (scale matters), a missing 1/n, log base 2.
    one = np.array([[0.3, -1.2, 2.0]])
    assert vendi_score(np.repeat(one, 9, axis=0)) == pytest.approx(1.0)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0)
    assert vendi_score(np.eye(7) * np.arange(1, 8)[:, None]) == pytest.approx(7.0)  # cosine
    two = np.concatenate([np.repeat(np.eye(2)[:1], 5, 0), np.repeat(np.eye(2)[1:], 5, 0)])
    assert vendi_score(two) == pytest.approx(2.0)


# --- self-BLEU ---------------------------------------------------------------------------------


def test_self_bleu_known_answers():
    # Scale 0..100 (sacrebleu's). Catches: a text scored against itself (all 100), or a
    # missing average.
    assert self_bleu(["the film was a great film , I loved it ."] * 5) == pytest.approx(100.0)
    disjoint = [" ".join(f"{letter}{j}" for j in range(12)) for letter in "abcdef"]
    assert self_bleu(disjoint) == 0.0


def test_self_bleu_matches_sacrebleu_leave_one_out():
    # Catches: wrong clipping (max over the other texts), wrong closest reference length,
    # a text counted among its own references.
    rng = np.random.default_rng(1)
    words = "the a film movie was great bad plot acting . , ! I loved hated it not very".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 25))) for _ in range(12)]
    texts[4] = texts[3]  # a duplicate: its best reference is itself elsewhere in the set
    expected = np.mean(
        [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    )
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-9)


def test_self_bleu_subsample_is_seeded():
    # Catches: an unseeded subsample, or max_texts ignored.
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(list("abcdefgh"), size=10)) for _ in range(30)]
    assert self_bleu(texts, max_texts=10, seed=5) == self_bleu(texts, max_texts=10, seed=5)
    assert self_bleu(texts, max_texts=10, seed=5) != self_bleu(texts, max_texts=30)


# --- feature spaces ----------------------------------------------------------------------------

FIT = [
    "the acting was great and the plot was moving",
    "a dull plot and boring acting ruined the film",
    "the score was superb but the ending was weak",
    "I loved the dialogue and the pacing of the story",
    "the cast was large and the film ran two hours",
    "a terrible ending and a clumsy plot",
    "the story was charming and the acting superb",
    "boring pacing , awful dialogue , a weak cast",
]


def test_tfidf_is_deterministic_unit_and_fitted_on_fit_texts_only():
    # Catches: fitting on the embedded texts too (unseen words would count, and a text's
    # features would depend on what else is embedded), unseeded SVD, unnormalised rows.
    seen, unseen = "the plot was great", "zebra quantum marmalade"
    a = tfidf_svd_features(FIT, [[seen]], dim=4, seed=0)[0]
    b, c = tfidf_svd_features(FIT, [[seen, unseen], FIT], dim=4, seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    assert a.shape == (1, 4) and a.dtype == np.float64
    assert np.linalg.norm(a[0]) == pytest.approx(1.0)
    np.testing.assert_array_equal(b[1], np.zeros(4))  # no known term
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0)
    embed = TfidfSvd(dim=4, seed=0).fit(FIT)
    assert "zebra" not in embed.vectorizer.vocabulary_
    np.testing.assert_array_equal(embed.transform(FIT), c)


def test_mean_hidden_features_ignore_padding_and_batching(tiny_lm, torch_one_thread):
    # A text alone and beside a longer one (padded in the batch) gets the same features; the
    # input order is kept through the length sort. Catches: mean over the pad positions,
    # left padding without position ids, a batch unsorted back to the wrong rows.
    model, tokenizer = tiny_lm
    short, long = "the film was good", "the plot was not very good but the acting was great fun"
    alone = mean_hidden_features(model, tokenizer, [short], batch_size=4)
    both = mean_hidden_features(model, tokenizer, [short, long], batch_size=4)
    assert both.shape == (2, model.config.hidden_size) and both.dtype == np.float64
    np.testing.assert_allclose(both[0], alone[0], atol=1e-6)
    np.testing.assert_allclose(
        both[1], mean_hidden_features(model, tokenizer, [long])[0], atol=1e-6
    )
    assert not np.allclose(both[0], both[1])
    np.testing.assert_array_equal(both, mean_hidden_features(model, tokenizer, [short, long], 4))
    swapped = mean_hidden_features(model, tokenizer, [long, short], batch_size=4)
    np.testing.assert_allclose(swapped, both[::-1], atol=1e-6)  # rows follow the input order
    assert mean_hidden_features(model, tokenizer, [""]).shape == (1, model.config.hidden_size)
    assert not model.training


# --- bad input: one line naming the key -----------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: quality_diversity(modes(10)[:5], modes(10), k=5, seed=0),
            "params: quality.k: must be < the reference set's size (5), got 5",
        ),
        (
            lambda: quality_diversity(modes(10), modes(10)[:3], k=5, seed=0),
            "params: quality.k: must be < the number of samples (3), got 5",
        ),
        (lambda: check_k(0, 10, 10), "params: quality.k: must be an integer >= 1"),
        (
            lambda: quality_diversity(modes(10), modes(10), k=3, seed=0, measures=["fid"]),
            "params: quality.measures: unknown measure 'fid'",
        ),
        (lambda: check_measures("mauve"), "params: quality.measures: must be a list"),
        (
            lambda: check_feature_spaces(["tfidf", "bert"]),
            "params: quality.features: unknown feature space 'bert'",
        ),
        (
            lambda: check_reference_size(500, 300, 5, "held-out positive reviews"),
            "params: quality.reference_size: must be <= the 300 held-out positive",
        ),
        (lambda: check_reference_size(5, 300, 5), "quality.reference_size: must be an"),
        (lambda: TfidfSvd(dim=8, seed=0).fit(FIT), "params: quality.tfidf_dim: must be <"),
        (lambda: prdc_measures(modes(10), modes(10)[:, :3], k=3), "feature widths differ"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(message) or message in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_names_pass():
    assert check_measures(["mauve", "recall", "mauve"]) == ("mauve", "recall")
    assert check_feature_spaces(("tfidf", "hidden")) == ("tfidf", "hidden")
    assert check_k(5, 6, 6) == 5


def test_tfidf_space_round_trips_through_arrays():
    """The fitted space saved as arrays (data/quality/spaces.npz, no pickle) embeds any text
    exactly as the fitted object (catches a lost idf, a re-sorted vocabulary or basis)."""
    embed = TfidfSvd(dim=3, seed=0).fit(FIT)
    back = TfidfSvd.from_arrays(**embed.arrays())
    texts = ["a good film with a great cast", "bad bad plot", "unknown words only"]
    np.testing.assert_array_equal(back.transform(texts), embed.transform(texts))
