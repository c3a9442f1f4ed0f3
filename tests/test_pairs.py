"""The ``pairs`` stage: validation split, preference rows and metrics, the written files and bad
input (the strategies themselves: tests/test_pairing.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from stages.lib.common import write_jsonl
from stages.lib.config import PairsConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREFERENCES, read_rows
from stages.lib.pairs import first_round_pairs
from stages.lib.preferences import build_preferences, validation_ids
from stages.lib.trl_format import difference_counts, pair_records
from stages.pairs import make_preference_file

#: The repository's params; tests override single keys of it.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SEED = read_seed(PARAMS)


# --- building the preference file ---------------------------------------------------------


def _scored_rows(n: int, k: int = 4, seed: int = 0, gold: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rewards = [round(rng.gauss(0, 1), 4) for _ in range(k)]
        row = {
            "prompt_id": f"train-{i}",
            "prompt": f"prompt {i}",
            "completions": [f" completion {i}.{j}" for j in range(k)],
            "completion_ids": [[i, j, 0] for j in range(k)],
            "finished": [j % 2 == 0 for j in range(k)],
            "rewards": rewards,
        }
        if gold:  # gold agrees with the reward except on completion 0
            row["gold"] = [(-r if j == 0 else r) for j, r in enumerate(rewards)]
        rows.append(row)
    return rows


def _params(strategy="first_round", val_fraction=0.1, **rso) -> dict:
    """The repository's params with ``pairs`` keys overridden."""
    section = PARAMS["pairs"]
    return {
        **PARAMS,
        "pairs": {
            **section,
            "strategy": strategy,
            "val_fraction": val_fraction,
            "rso": {**section.get("rso", {}), **rso},
        },
    }


def _cfg(*args, **kw) -> PairsConfig:
    return read_section(_params(*args, **kw), "pairs", PairsConfig)


def test_build_preferences_counts_and_metrics():
    rows = _scored_rows(40)
    rows[3]["rewards"] = [1.0] * 4  # all tied: no pair, dropped and counted
    rows[3]["gold"] = [1.0] * 4
    out, metrics = build_preferences(rows, _cfg(), SEED)
    assert metrics["prompts"] == 40 and metrics["prompts_without_pairs"] == 1
    assert len(out) == metrics["prompts_with_pairs"] == 39
    assert "train-3" not in {r["prompt_id"] for r in out}
    assert metrics["pairs"] == sum(len(r["pairs"]) for r in out) == 78
    assert metrics["train"]["pairs"] + metrics["val"]["pairs"] == 78
    assert metrics["val"]["prompts"] in (3, 4)  # 4 of 40 drawn, one may be the dropped one
    margins = [r["rewards"][w] - r["rewards"][l] for r in out for w, l in r["pairs"]]
    assert metrics["mean_reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    agree = [r["gold"][w] > r["gold"][l] for r in out for w, l in r["pairs"]]
    assert metrics["gold_agreement"] == pytest.approx(sum(agree) / len(agree), abs=1e-5)
    assert 0 < metrics["gold_agreement"] < 1


def test_validation_split_by_prompt_seeded():
    ids = [(f"p{i}", f"text {i}") for i in range(100)]
    val = validation_ids(ids, 0.1, seed=0)
    assert len(val) == 10 and val == validation_ids(ids, 0.1, seed=0)
    assert val != validation_ids(ids, 0.1, seed=1)
    assert validation_ids(ids, 0.0, seed=0) == set()
    assert len(validation_ids(ids[:5], 0.1, seed=0)) == 1
    # same prompts held out whatever the strategy
    rows = _scored_rows(50)
    splits = {}
    for strategy in ("first_round", "all", "best_worst", "tournament"):
        out, _ = build_preferences(rows, _cfg(strategy), SEED)
        splits[strategy] = {r["prompt_id"] for r in out if r["split"] == "val"}
    assert len(set(map(frozenset, splits.values()))) == 1


def test_rso_metrics_picked_beats_pool():
    rows = _scored_rows(200, k=16, gold=False)
    out, metrics = build_preferences(rows, _cfg("rso", n_select=4, beta=0.5), SEED)
    assert metrics["mean_reward_picked"] > metrics["mean_reward_pool"] + 0.3
    assert all(len(r["pairs"]) <= 2 for r in out) and "gold_agreement" not in metrics


def test_make_preference_file_end_to_end(tmp_path, monkeypatch, tiny_lm_dir):
    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")  # its tokenizer: trl_differs
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/scored.jsonl", _scored_rows(30))
    metrics = make_preference_file(_params("tournament"))
    rows = read_rows("data/preferences.jsonl", PREFERENCES)
    assert [r["prompt_id"] for r in rows] == [f"train-{i}" for i in range(30)]
    assert {r["split"] for r in rows} == {"train", "val"}
    scored = _scored_rows(30)  # the sampled ids ride along to the reference and the trainer
    assert [(r["completion_ids"], r["finished"]) for r in rows] == [
        (r["completion_ids"], r["finished"]) for r in scored
    ]
    assert json.loads(Path("metrics/pairs.json").read_text()) == metrics
    assert metrics["pairs_per_prompt"] == 3
    # the same pairs, out in trl's preference format (JSON Lines): train and val (test), each
    # with where trl's tokens differ from ours (the fake ids here: every pair, for some reason)
    from transformers import AutoTokenizer

    records = pair_records(rows, AutoTokenizer.from_pretrained(tiny_lm_dir))
    assert sorted(p.name for p in Path("data/pairs-trl").iterdir()) == ["test.jsonl", "train.jsonl"]
    for split, name in (("train", "train"), ("val", "test")):
        lines = Path(f"data/pairs-trl/{name}.jsonl").read_text(encoding="utf-8").splitlines()
        exported = [json.loads(line) for line in lines]
        expected = [
            {"prompt": r["prompt"], "chosen": r["completions"][w], "rejected": r["completions"][l]}
            for r in rows
            if r["split"] == split
            for w, l in r["pairs"]
        ]
        assert [{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in exported] == expected
        assert exported == records[name] and all(e["trl_differs"] for e in exported)
        assert len(expected) == metrics[split]["pairs"]
    assert metrics["trl_differs"] == difference_counts(records)
    assert metrics["trl_differs"]["pairs"] == metrics["pairs"]


def test_without_the_sft_policy_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/scored.jsonl", _scored_rows(5))
    with pytest.raises(FileNotFoundError) as err:
        make_preference_file(_params())
    assert str(err.value) == (
        "models/sft: SFT policy not found (run the sft stage): its tokenizer says where trl "
        "tokenises the exported pairs differently"
    )
    assert sorted(str(p) for p in tmp_path.rglob("*")) == [
        str(tmp_path / "data"),
        str(tmp_path / "data/scored.jsonl"),
    ]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, needle",
    [
        (_params("nearest"), "params: pairs.strategy: must be one of first_round, tournament, "),
        (_params("rso", n_select=1), "params: pairs.rso.n_select: must be >= 2"),
        (_params("rso", beta=0.0), "params: pairs.rso.beta: must be > 0, got 0.0"),
        (_params("rso", beta=-1), "params: pairs.rso.beta: must be > 0, got -1.0"),
        (_params(val_fraction=1.0), "params: pairs.val_fraction: must be in [0, 1), got 1.0"),
        ({"seed": 0}, "params: section 'pairs' is missing"),
        ({k: v for k, v in _params().items() if k != "seed"}, "params: seed: is missing"),
    ],
)
def test_bad_params(tmp_path, monkeypatch, params, needle):
    monkeypatch.chdir(tmp_path)  # checked before any file is read
    with pytest.raises(ValueError) as err:
        make_preference_file(params)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


def test_val_fraction_leaving_no_train_prompt():
    with pytest.raises(
        ValueError,
        match=r"^params: pairs\.val_fraction: must leave a train "
        r"prompt among 3 prompts \(3 distinct texts\), got 0\.9$",
    ):
        validation_ids([("a", "x"), ("b", "y"), ("c", "z")], 0.9, seed=0)
    # two prompts sharing a text go together: holding one out holds out both
    with pytest.raises(ValueError, match=r"among 2 prompts \(1 distinct texts\)"):
        validation_ids([("a", "y"), ("b", " y ")], 0.5, seed=0)


def test_validation_split_holds_out_texts_not_ids():
    # 60 prompts over 20 texts (three reviews open alike): val takes whole texts
    prompts = [(f"p{i}", f"opening {i % 20}") for i in range(60)]
    for seed in range(5):
        val = validation_ids(prompts, 0.1, seed=seed)
        val_texts = {t for pid, t in prompts if pid in val}
        train_texts = {t for pid, t in prompts if pid not in val}
        assert not val_texts & train_texts
        assert len(val) == 6 and len(val_texts) == 2  # round(0.1 * 60) = 6 = two whole texts
    rows = _scored_rows(40)
    for i, row in enumerate(rows):
        row["prompt"] = f"same {i % 8}" + " " * (i % 3)  # trailing spaces do not split a text
    out, metrics = build_preferences(rows, _cfg("first_round"), SEED)
    val = {r["prompt"].strip() for r in out if r["split"] == "val"}
    train = {r["prompt"].strip() for r in out if r["split"] == "train"}
    assert val and train and not val & train
    assert metrics["val_texts_in_train"] == 0
    assert metrics["prompt_texts"] == {"train": len(train), "val": len(val)}


def test_rso_n_select_above_k_names_row():
    with pytest.raises(
        ValueError,
        match=r"params: pairs\.rso\.n_select: must be < the 4 "
        r"completions of scored row 1 \(train-0\), got 8",
    ):
        build_preferences(_scored_rows(3), _cfg("rso", n_select=8), SEED)


def test_preferences_are_seeded_per_prompt():
    """Each prompt's pairs come from ``random.Random("<seed>-pairs-<prompt_id>")``: the same
    whatever the other rows, and different under another seed."""
    rows = _scored_rows(20, k=6)
    out, _ = build_preferences(rows, _cfg("first_round"), SEED)
    alone, _ = build_preferences(rows[5:6] + rows[:2], _cfg("first_round", val_fraction=0.0), SEED)
    assert alone[0]["pairs"] == next(r["pairs"] for r in out if r["prompt_id"] == "train-5")
    want = first_round_pairs(rows[5]["rewards"], random.Random(f"{SEED}-pairs-train-5"))
    assert alone[0]["pairs"] == [list(p) for p in want]
    other, _ = build_preferences(rows, _cfg("first_round"), SEED + 1)
    assert [r["pairs"] for r in other] != [r["pairs"] for r in out]


def test_scored_reward_count_mismatch_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _scored_rows(3)
    rows[1]["rewards"] = rows[1]["rewards"][:3]
    write_jsonl("data/scored.jsonl", rows)
    with pytest.raises(
        ValueError,
        match=r"data/scored\.jsonl:2: rewards has 3 values for 4 "
        r"completions",
    ):
        make_preference_file(_params())
    assert not Path("data/preferences.jsonl").exists()


def test_all_tied_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _scored_rows(3, gold=False)
    for row in rows:
        row["rewards"] = [0.0] * 4
    write_jsonl("data/scored.jsonl", rows)
    with pytest.raises(ValueError, match="no prompt gives a preference pair"):
        make_preference_file(_params())
