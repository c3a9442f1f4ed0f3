"""Tests of the synthetic corpus (stages/lib/synthetic.py): determinism, shape, and gold-score rules."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.lib import synthetic
from stages.lib.synthetic import bag_of_words_score, generate_reviews, generate_splits, gold_score

_SENTENCE_END = re.compile(r"(?<=[.!?])(?:\s+|(?:<br />)+)")
_FLIPPERS = re.compile(
    r"\b(not|no|never|hardly|barely|nobody|cannot|\w+n't|but|yet|however|"
    r"although|though)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def big():
    """10,000 reviews, timed once (the performance requirement) and reused for statistics."""
    t0 = time.perf_counter()
    rows = generate_reviews(10_000, seed=0)
    return rows, time.perf_counter() - t0


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_output_different_seed_differs():
    a, b = generate_reviews(200, seed=7), generate_reviews(200, seed=7)
    assert a == b
    assert generate_reviews(200, seed=8) != a
    assert generate_splits(30, 20, seed=1) == generate_splits(30, 20, seed=1)
    assert generate_splits(30, 20, seed=2) != generate_splits(30, 20, seed=1)


def test_same_output_in_another_process_with_other_hash_seed():
    code = (
        "import json; from stages.lib.synthetic import generate_reviews; "
        "print(json.dumps(generate_reviews(25, seed=3)))"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    ).stdout
    assert json.loads(out) == generate_reviews(25, seed=3)


def test_does_not_touch_global_random_state():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_reviews(20, seed=0)
    gold_score("The acting is great.")
    assert random.random() == expected


# ------------------------------------------------------------------------------------------ shape
def test_rows_have_text_and_int_label(big):
    rows, _ = big
    assert len(rows) == 10_000
    assert all(
        set(r) == {"text", "label"} and isinstance(r["text"], str) and r["label"] in (0, 1)
        for r in rows
    )
    assert all(type(r["label"]) is int for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 101])
def test_labels_balanced(n):
    rows = generate_reviews(n, seed=5)
    assert len(rows) == n
    pos = sum(r["label"] for r in rows)
    assert pos - (n - pos) in ((0,) if n % 2 == 0 else (1,))


def test_negative_n_rejected():
    with pytest.raises(ValueError):
        generate_reviews(-1, seed=0)


def test_splits_sizes_balance_and_disjoint():
    train, test = generate_splits(600, 201, seed=0)
    assert len(train) == 600 and len(test) == 201
    assert sum(r["label"] for r in train) == 300
    assert sum(r["label"] for r in test) in (100, 101)
    assert not {r["text"] for r in train} & {r["text"] for r in test}


def test_vocabulary_size(big):
    rows, _ = big
    vocab = {
        w
        for r in rows[:2000]
        for w in re.findall(r"[a-z]+(?:'[a-z]+)?", r["text"].replace("<br />", " ").lower())
    }
    assert len(vocab) >= 800


def test_sentence_count_and_br_breaks(big):
    rows, _ = big
    counts = [len(_sentences(r["text"])) for r in rows]
    assert min(counts) == 3 and max(counts) == 8
    assert len(set(counts)) == 6
    with_br = sum("<br /><br />" in r["text"] for r in rows) / len(rows)
    assert 0.1 < with_br < 0.6
    assert all("<br />" not in r["text"][:6] and not r["text"].endswith(">") for r in rows)


def test_review_openings_vary(big):
    rows, _ = big
    prompts = {" ".join(r["text"].split()[:4]) for r in rows[:1000]}
    assert len(prompts) > 500


# --------------------------------------------------------------------------------- gold score rules
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The acting is great.", 2.0),
        ("The acting is not great.", -1.0),
        ("The acting isn't great.", -1.0),
        ("The plot is not bad.", 1.0),
        ("The acting is very great.", 3.0),
        ("The acting is extremely great.", 4.0),
        ("The acting is somewhat great.", 1.0),
        ("The acting is not very great.", -1.5),
        ("The acting is great but the plot is awful.", 0.25 * 2 - 3),
        ("The plot is awful, but the acting is great.", 0.25 * -3 + 2),
        ("Although the acting is great, the plot is awful.", 0.25 * 2 - 3),
        ("The plot is awful, although the acting is great.", -3 + 0.25 * 2),
        ("Though the plot is awful, the acting is great.", 0.25 * -3 + 2),
        ("It is a must see.", 3.0),
        ("A waste of time.", -3.0),
        ("Not a waste of time.", 1.5),
        ("The acting is not, great.", 2.0),  # a comma ends the negation's scope
        ("The acting is not good and great.", -0.5 + 2),  # negation is used by the next phrase only
        ("The acting is great. The plot is good.", 3.0),  # sum over sentences
        ("The acting is GREAT!", 2.0),
        ("", 0.0),
        ("!!! ,,, <br /> 1234 asdf qwerty", 0.0),
        ("The film follows a nurse in Paris.", 0.0),
    ],
)
def test_gold_score_rules(text, expected):
    assert gold_score(text) == pytest.approx(expected)


def test_negation_contrast_and_intensifiers_change_the_score():
    assert gold_score("The acting is great.") > 0 > gold_score("The acting is not great.")
    assert gold_score("The acting is bad.") < 0 < gold_score("The acting is hardly bad.")
    assert gold_score("The acting is great but the plot is awful.") < 0
    assert gold_score("The plot is awful but the acting is great.") > 0
    assert gold_score("Although the acting is great, the plot is awful.") < 0
    assert gold_score("Although the plot is awful, the acting is great.") > 0
    for word in ("great", "dull"):
        plain, very = gold_score(f"It is {word}."), gold_score(f"It is truly {word}.")
        assert abs(very) > abs(plain) and math.copysign(1, very) == math.copysign(1, plain)
    # a longer gushing review outscores one mild sentence
    assert gold_score("A brilliant film. The score is superb. I loved it.") > gold_score("Solid.")


def test_br_tags_case_and_whitespace_are_ignored(big):
    rows, _ = big
    for r in rows[:300]:
        text = r["text"]
        plain = " ".join(text.replace("<br /><br />", " ").split())
        assert gold_score(plain) == gold_score(text) == gold_score(text.upper())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_gold_score_is_total_and_finite_on_any_text(text):
    score = gold_score(text)
    assert isinstance(score, float) and math.isfinite(score)
    assert gold_score(text) == score


def test_gold_score_sign_matches_label(big):
    rows, _ = big
    for r in rows:
        score = gold_score(r["text"])
        assert score != 0 and (score > 0) == (r["label"] == 1), r


def test_neutral_sentences_score_zero():
    r = random.Random(0)
    for _ in range(2000):
        title = synthetic._title(r)
        for sent in (synthetic._plot(r, title), synthetic._filler(r), synthetic._name(r), title):
            assert gold_score(sent) == 0.0, sent
            assert bag_of_words_score(sent) == 0.0, sent


def test_fixed_verdicts_have_their_sign():
    for sign, verdicts in synthetic._VERDICTS.items():
        for v in verdicts:
            assert gold_score(v) * sign > 0, v


# ------------------------------------------------------------------------------------- difficulty
def test_bag_of_words_is_not_enough(big):
    rows, _ = big
    n = len(rows)
    # review level: the sign of a plain sum of phrase scores disagrees with the label
    misled = sum((bag_of_words_score(r["text"]) > 0) != (r["label"] == 1) for r in rows) / n
    assert 0.12 < misled < 0.3
    # sentence level: negation or contrast flips the sign of at least one sentence
    flipped = mixed = 0
    for r in rows:
        sents = [(gold_score(x), bag_of_words_score(x)) for x in _sentences(r["text"])]
        flipped += any(g * b < 0 or (b and not g) for g, b in sents)
        mixed += any(g > 0 for g, _ in sents) and any(g < 0 for g, _ in sents)
    assert flipped / n > 0.4
    assert sum(bool(_FLIPPERS.search(r["text"])) for r in rows) / n > 0.5
    # mixed reviews (sentences of both signs), some with a small net score
    assert mixed / n > 0.2
    assert 0.02 < sum(abs(gold_score(r["text"])) <= 1.5 for r in rows) / n < 0.3


def test_generation_and_scoring_are_fast(big):
    rows, seconds = big
    assert seconds < 5.0
    t0 = time.perf_counter()
    for r in rows:
        gold_score(r["text"])
    assert time.perf_counter() - t0 < 5.0
