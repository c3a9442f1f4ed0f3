"""The ``ingest`` compute: imported rows become PREFERENCES rows tokenised like sampled ones,
eval and validation prompts are held out by text, ranked rows are paired like scored rows."""

from __future__ import annotations

import pytest

from stages.lib.config import PairsConfig
from stages.lib.contracts import PREFERENCES, PROMPTS, check_row
from stages.lib.ingest import IngestConfig, build_outputs, tokenize_records
from stages.lib.ingest_sources import Table, read_records
from stages.lib.preferences import build_preferences

PAIRS = PairsConfig(strategy="first_round", val_fraction=0.2)


def _table(name: str, rows: list[dict]) -> Table:
    return Table(name, rows, [f"{name}:{i}" for i in range(1, len(rows) + 1)])


def _pairwise(n: int, prefix: str = "the film", distinct: int | None = None) -> list[dict]:
    distinct = distinct or n
    return [
        {
            "prompt": f"{prefix} {i % distinct} was",
            "chosen": f" good {i}.",
            "rejected": f" bad {i}.",
        }
        for i in range(n)
    ]


def _cfg(**kw) -> IngestConfig:
    return IngestConfig(**{"source": "prefs", **kw})


def test_pairwise_rows_tokenised_like_sampled_ones(tiny_lm):
    _, tok = tiny_lm
    tables = {
        "train": _table("train.jsonl", _pairwise(20)),
        "test": _table("test.jsonl", _pairwise(6, "a movie")),
    }
    out = build_outputs(tables, _cfg(), PAIRS, tok, seed=0)
    eos = tok.eos_token_id
    assert len(out.preferences) == 20
    for row in out.preferences:
        check_row(row, PREFERENCES, row["prompt_id"])
        i = int(row["prompt_id"].split("-")[1])
        assert row["prompt"] == f"the film {i} was"
        assert row["completions"] == [f" good {i}.", f" bad {i}."]
        assert row["completion_ids"] == [
            tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in row["completions"]
        ]
        assert row["finished"] == [True, True] and row["rewards"] == [1.0, 0.0]
        assert row["pairs"] == [[0, 1]]
    assert sum(r["split"] == "val" for r in out.preferences) == 4  # 0.2 of 20 prompt texts
    # eval prompts: the test split's, held out by text; train prompts: every train-side row
    assert [p["prompt_id"] for p in out.eval_prompts] == [f"test-{i}" for i in range(6)]
    assert [p["prompt_id"] for p in out.train_prompts] == [f"train-{i}" for i in range(20)]
    for p in out.eval_prompts + out.train_prompts:
        check_row(p, PROMPTS, "prompt")
    m = out.metrics
    assert m["format"] == "pairwise" and m["eval_source"] == "split 'test'"
    assert (
        "chat_template" not in m
    )  # conversational data only: the committed metrics stay as they are
    assert (m["train"], m["val"]) == ({"prompts": 16, "pairs": 16}, {"prompts": 4, "pairs": 4})
    assert m["val_texts_in_train"] == 0 and m["eval_texts_in_train"] == 0
    # SFT texts: prompt + chosen of the training rows, and of the eval rows
    val = {r["prompt"] for r in out.preferences if r["split"] == "val"}
    assert out.prepared["train"] == [
        {"text": f"the film {i} was good {i}.", "label": 1}
        for i in range(20)
        if f"the film {i} was" not in val
    ]
    assert out.prepared["test"][0] == {"text": "a movie 0 was good 0.", "label": 1}


def test_test_rows_sharing_a_train_prompt_text_are_skipped(tiny_lm):
    test = _pairwise(4, "a movie") + [
        {"prompt": " the  film 3 was", "chosen": " x", "rejected": " y"}
    ]
    tables = {"train": _table("train", _pairwise(10)), "test": _table("test", test)}
    out = build_outputs(tables, _cfg(), PAIRS, tiny_lm[1], seed=0)
    assert [p["prompt_id"] for p in out.eval_prompts] == [f"test-{i}" for i in range(4)]
    assert out.metrics["test_rows_sharing_train_text"] == 1


def test_without_a_test_split_eval_prompts_are_held_out_of_training(tiny_lm):
    # 40 rows over 20 prompt texts: held-out texts leave training with all their rows
    tables = {"train": _table("train", _pairwise(40, distinct=20))}
    out = build_outputs(tables, _cfg(eval_fraction=0.25), PAIRS, tiny_lm[1], seed=0)
    eval_texts = {p["prompt"] for p in out.eval_prompts}
    train_texts = {r["prompt"] for r in out.preferences}
    assert len(eval_texts) == len(out.eval_prompts) == 5 and not eval_texts & train_texts
    assert len(out.preferences) == 30 and len(out.prepared["test"]) == 10
    assert out.metrics["eval_source"] == "0.25 of split 'train' held out"
    again = build_outputs(tables, _cfg(eval_fraction=0.25), PAIRS, tiny_lm[1], seed=0)
    assert again.eval_prompts == out.eval_prompts  # seeded
    other = build_outputs(tables, _cfg(eval_fraction=0.25), PAIRS, tiny_lm[1], seed=1)
    assert other.eval_prompts != out.eval_prompts
    capped = build_outputs(
        tables, _cfg(eval_fraction=0.25, n_eval_prompts=3), PAIRS, tiny_lm[1], seed=0
    )
    assert len(capped.eval_prompts) == 3
    with pytest.raises(ValueError, match=r"^params: ingest\.eval_fraction: must be > 0 when"):
        build_outputs(tables, _cfg(eval_fraction=0.0), PAIRS, tiny_lm[1], seed=0)
    subset = build_outputs(tables, _cfg(max_train_rows=12), PAIRS, tiny_lm[1], seed=0)
    assert subset.metrics["rows"] == 12 and subset.metrics["source_rows"] == 40


def test_ranked_rows_are_paired_like_the_pairs_stage(tiny_lm):
    ranked = [
        {"prompt": f"p {i}", "completions": [f" c{i}.{k}" for k in range(4)], "rewards": r}
        for i, r in enumerate([[0.5, -1, 2, 0], [1, 1, 1, 1], [3, 2, 1, 0], [0, 1, 0, 2]] * 3)
    ]
    tables = {"train": _table("train", ranked), "test": _table("test", ranked[:1])}
    tables["test"].rows[0] = {**ranked[0], "prompt": "held out"}
    for strategy in ("first_round", "all", "best_worst"):
        cfg = PairsConfig(strategy=strategy, val_fraction=0.0)
        out = build_outputs(tables, _cfg(), cfg, tiny_lm[1], seed=3)
        assert out.metrics["format"] == "ranked" and out.metrics["rows_without_pairs"] == 3
        scored = [  # the same rows as the pairs stage sees them, with the same prompt ids
            {
                "prompt_id": f"train-{i}",
                "prompt": r["prompt"],
                "completions": r["completions"],
                "completion_ids": [[1]] * 4,
                "finished": [True] * 4,
                "rewards": [float(x) for x in r["rewards"]],
            }
            for i, r in enumerate(ranked)
        ]
        expected, _ = build_preferences(scored, cfg, seed=3)
        assert [(r["prompt_id"], r["pairs"]) for r in out.preferences] == [
            (r["prompt_id"], r["pairs"]) for r in expected
        ], strategy
        assert all(
            r["rewards"] == [float(x) for x in ranked[0]["rewards"]] for r in out.preferences[:1]
        )
    best = [t["text"] for t in out.prepared["train"]][:1]
    assert best == ["p 0 c0.2"]  # the best-rewarded completion is the SFT text


def test_eos_inside_a_text_is_refused(tiny_lm):
    _, tok = tiny_lm
    rows = _pairwise(3)
    rows[1]["rejected"] = f" bad{tok.eos_token} more"
    records = read_records(_table("train.jsonl", rows), "ingest.source")
    with pytest.raises(
        ValueError,
        match=r"^ingest\.source: train\.jsonl:2: field 'rejected' contains the tokenizer's EOS",
    ):
        tokenize_records(records, tok)


def test_no_train_pair_or_no_eval_prompt_left(tiny_lm):
    ranked = [
        {"prompt": f"p {i}", "completions": [" a", " b"], "rewards": [1, 1]} for i in range(5)
    ]
    tables = {"train": _table("train", ranked), "test": _table("test", _pairwise(2))}
    with pytest.raises(
        ValueError, match=r"no train pair left in train \(5 row\(s\) without a pair"
    ):
        build_outputs(tables, _cfg(), PAIRS, tiny_lm[1], seed=0)
    tables = {"train": _table("train", _pairwise(5)), "test": _table("test", _pairwise(2))}
    with pytest.raises(ValueError, match="no eval prompt left: every prompt of split 'test'"):
        build_outputs(tables, _cfg(), PAIRS, tiny_lm[1], seed=0)
    with pytest.raises(ValueError, match=r"ingest\.train_split: the source has no 'dev' split"):
        build_outputs(tables, _cfg(train_split="dev"), PAIRS, tiny_lm[1], seed=0)


def test_the_prompt_id_an_error_names_is_the_one_the_row_gets(tiny_lm, tmp_path):
    """Issue 27 item 8: errors counted rows from 1 (`row 3`) and prompt ids from 0 (`train-2`)
    without saying so; a located row now names both, and the id is the row's in the outputs."""
    import datasets

    from stages.lib.ingest_sources import load_tables

    _, tok = tiny_lm
    rows = _pairwise(8)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "good"))
    out = build_outputs(load_tables(str(tmp_path / "good"), "ingest.source"), _cfg(), PAIRS, tok, 0)
    ids = {r["prompt"]: r["prompt_id"] for r in out.train_prompts + out.eval_prompts}
    assert ids[rows[2]["prompt"]] == "train-2"  # the third row, counted from 0
    rows[2]["rejected"] = rows[2]["chosen"]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"split 'train' row 3 \(prompt_id train-2\): field "):
        build_outputs(load_tables(str(tmp_path / "bad"), "ingest.source"), _cfg(), PAIRS, tok, 0)
