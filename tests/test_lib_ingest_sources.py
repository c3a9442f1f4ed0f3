"""Preference datasets in: every source layout read the same way, each row located for errors,
and every kind of bad row refused with a one-line error naming the file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from stages.lib.ingest_sources import load_tables, read_records

P = "ingest.source"
PAIRWISE = [
    {"prompt": "The film was", "chosen": " good.", "rejected": " bad."},
    {"prompt": "It is", "chosen": " a delight", "rejected": " dull"},
    {"prompt": "I saw", "chosen": " it twice.", "rejected": " nothing."},
]
RANKED = [
    {
        "prompt": "The film was",
        "completions": [" good.", " bad.", " fine."],
        "rewards": [1, -1, 0.5],
    },
    {"prompt": "It is", "completions": [" a delight", " dull"], "rewards": [2.0, -2.0]},
]


def _jsonl(path: Path, rows: list[dict], blank_after: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(source: Path, split: str = "train"):
    return read_records(load_tables(str(source), P)[split], P)


# --------------------------------------------------------------------------- layouts


def test_pairwise_jsonl_file_is_the_train_split(tmp_path):
    tables = load_tables(str(_jsonl(tmp_path / "prefs.jsonl", PAIRWISE)), P)
    assert list(tables) == ["train"] and tables["train"].format == "pairwise"
    records = read_records(tables["train"], P)
    first = records[0]
    assert (first.prompt, first.completions, first.rewards) == (
        "The film was",
        [" good.", " bad."],
        [1.0, 0.0],
    )
    assert first.pairs == [[0, 1]] and first.fields == ["chosen", "rejected"]
    assert [r.where for r in records] == [f"{P}: {tmp_path}/prefs.jsonl:{i}" for i in (1, 2, 3)]


def test_folder_of_split_files_in_every_format(tmp_path):
    _jsonl(tmp_path / "a" / "train.jsonl", PAIRWISE)
    _jsonl(tmp_path / "a" / "test.jsonl", PAIRWISE[:1])
    pd.DataFrame(PAIRWISE).to_csv(tmp_path / "b.csv", index=False)
    (tmp_path / "c").mkdir()
    pd.DataFrame(PAIRWISE).to_parquet(tmp_path / "c" / "train.parquet")
    (tmp_path / "d.json").write_text(json.dumps(PAIRWISE))
    tables = load_tables(str(tmp_path / "a"), P)
    assert set(tables) == {"train", "test"} and len(tables["test"].rows) == 1
    for source in ("a", "b.csv", "c", "d.json"):
        records = _records(tmp_path / source)
        assert [r.completions[0] for r in records] == [r["chosen"] for r in PAIRWISE], source
    where = [r.where for r in _records(tmp_path / "b.csv")]
    assert where[0].endswith("b.csv:2") and where[2].endswith("b.csv:4")  # csv: the header is 1
    # rows and array items count from 1 and name the prompt_id (from 0) the row gets
    # (issue 27 item 8: they named only "row 2", which reads as the prompt_id train-2's row)
    assert _records(tmp_path / "c")[1].where.endswith("train.parquet: row 2 (prompt_id train-1)")
    assert _records(tmp_path / "d.json")[2].where.endswith(
        "d.json: array item 3 (prompt_id train-2)"
    )


def test_blank_lines_keep_line_numbers(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", PAIRWISE, blank_after=1)
    assert [r.where.rsplit(":", 1)[1] for r in _records(path)] == ["1", "3", "4"]


def test_save_to_disk_folder_and_ranked_rows(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RANKED), "test": datasets.Dataset.from_list(RANKED)}
    ).save_to_disk(str(tmp_path / "saved"))
    tables = load_tables(str(tmp_path / "saved"), P)
    assert set(tables) == {"train", "test"} and tables["train"].format == "ranked"
    records = read_records(tables["train"], P)
    assert records[0].completions == [" good.", " bad.", " fine."]
    assert records[0].rewards == [1.0, -1.0, 0.5] and records[0].pairs is None
    assert records[1].where == f"{P}: {tmp_path}/saved split 'train' row 2 (prompt_id train-1)"
    test = read_records(tables["test"], P)
    assert test[0].where == f"{P}: {tmp_path}/saved split 'test' row 1 (prompt_id test-0)"
    datasets.Dataset.from_list(PAIRWISE).save_to_disk(str(tmp_path / "one"))  # a lone Dataset
    assert list(load_tables(str(tmp_path / "one"), P)) == ["train"]


def test_hub_ids_go_to_load_dataset(monkeypatch):
    seen = []

    def fake(name, *args, **kwargs):
        seen.append(name)
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRWISE)})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    tables = load_tables("trl-lib/example", P)
    assert seen == ["trl-lib/example"] and tables["train"].name == "'trl-lib/example' split 'train'"
    where = f"{P}: 'trl-lib/example' split 'train' row 3 (prompt_id train-2)"
    assert _records_of(tables)[2].where == where


def _records_of(tables):
    return read_records(tables["train"], P)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": " a", "rejected": " b"}, ":2: field 'prompt' is missing"),
        ({"prompt": "p", "chosen": " a"}, ":2: field 'rejected' is missing"),
        ({"prompt": "p", "chosen": "", "rejected": " b"}, ":2: field 'chosen' is empty"),
        ({"prompt": "  ", "chosen": " a", "rejected": " b"}, ":2: field 'prompt' is empty"),
        (
            {"prompt": "p", "chosen": " a", "rejected": " a"},
            ":2: field 'rejected' is identical to 'chosen'",
        ),
        ({"prompt": "p", "chosen": None, "rejected": " b"}, ":2: field 'chosen' is missing"),
        (
            {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": " b"},
            ":2: field 'chosen' must be plain text, got a list (a split has one format, told by",
        ),
        (
            {"prompt": "p", "completions": [" a"], "rewards": [1]},
            ":2: field 'completions' has 1 completion(s); a ranked row needs at least 2",
        ),
        (
            {"prompt": "p", "completions": [" a", " b"], "rewards": [1]},
            ":2: field 'rewards' has 1 values for 2 completions",
        ),
        (
            {"prompt": "p", "completions": [" a", " b"], "rewards": [1, "x"]},
            ":2: field 'rewards[1]' must be a finite number, got 'x'",
        ),
        (
            {"prompt": "p", "completions": [" a", " b"], "rewards": [1, float("nan")]},
            ":2: field 'rewards[1]' must be a finite number, got NaN",  # was: got nan
        ),
        (
            {"prompt": "p", "completions": [" a", ""], "rewards": [1, 2]},
            ":2: field 'completions[1]' is empty",
        ),
        (
            {"prompt": "p", "completions": [" a", " b", " a"], "rewards": [1, 2, 3]},
            ":2: field 'completions[2]' is identical to 'completions[0]'",
        ),
        (
            {"prompt": "p", "completions": " a b", "rewards": [1, 2]},
            ":2: field 'completions' must be a list, got ' a b'",
        ),
        ({"prompt": "p", "completions": [" a", " b"]}, ":2: field 'rewards' is missing"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_row_and_field(tmp_path, row, message):
    """Row 2 is bad (row 1 is good: the message names the file and line 2)."""
    good = {"prompt": "q", "chosen": " x", "rejected": " y"}
    if "completions" in row:
        good = {"prompt": "q", "completions": [" x", " y"], "rewards": [1.0, 0.0]}
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, row)))
    with pytest.raises(ValueError) as err:
        _records(path)
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert text.startswith(f"{P}: {path}")


def test_a_nan_reward_in_parquet_is_named_nan(tmp_path):
    """Issue 27 item 8: pandas writes a NaN reward to parquet as null, and the error said
    `got None`, naming neither NaN nor the missing value; written by pyarrow it stays a NaN."""
    rows = [
        {"prompt": "q", "completions": [" x", " y"], "rewards": [1.0, 0.0]},
        {"prompt": "p", "completions": [" a", " b"], "rewards": [1.0, float("nan")]},
    ]
    (tmp_path / "pandas").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "pandas" / "train.parquet")
    with pytest.raises(ValueError) as err:
        _records(tmp_path / "pandas")
    assert str(err.value) == (
        f"{P}: {tmp_path}/pandas/train.parquet: row 2 (prompt_id train-1): field 'rewards[1]' "
        "must be a finite number, got null (a missing value, or a NaN that pandas wrote to "
        "parquet as null)"
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "arrow").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "arrow" / "train.parquet")
    with pytest.raises(ValueError, match=r"row 2 \(prompt_id train-1\): field 'rewards\[1\]' "):
        _records(tmp_path / "arrow")
    with pytest.raises(ValueError, match=r"must be a finite number, got NaN$"):
        _records(tmp_path / "arrow")


def test_a_column_missing_from_every_row(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": " a"}] * 2)
    with pytest.raises(ValueError, match=r"train\.jsonl: no 'rejected' column \(columns: prompt, "):
        _records(path)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="is not an existing file or folder, or a Hugging Face"):
        load_tables(str(tmp_path / "nope"), P)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no split file"):
        load_tables(str(tmp_path / "empty"), P)
    _jsonl(tmp_path / "two" / "train.jsonl", PAIRWISE)
    pd.DataFrame(PAIRWISE).to_csv(tmp_path / "two" / "train.csv", index=False)
    with pytest.raises(ValueError, match="several 'train' files"):
        load_tables(str(tmp_path / "two"), P)
    (tmp_path / "broken.jsonl").write_text(
        '{"prompt": "p", "chosen": " a", "rejected": " b"}\n{oops\n'
    )
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        load_tables(str(tmp_path / "broken.jsonl"), P)
    (tmp_path / "short.csv").write_text("prompt,chosen,rejected\np, a, b\nq, c\n")
    with pytest.raises(ValueError, match=r"short\.csv:3: 2 field\(s\) where the header has 3"):
        load_tables(str(tmp_path / "short.csv"), P)
