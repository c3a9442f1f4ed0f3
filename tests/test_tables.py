"""``stages.lib.tables``: local table files checked, with the file and line of what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from stages.lib.tables import check_table, markdown_table, number, plural

COLUMNS = ("text", "label")


def _file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    "name, content, rows",
    [
        ("a.jsonl", '{"text": "x", "label": 1}\n\n{"text": "y", "label": 0, "extra": 2}\n', 2),
        ("a.json", '[{"text": "x", "label": 1},\n {"text": "y", "label": 0}]', 2),
        ("a.json", '{"text": "x", "label": 1}\n', 1),  # .json may also hold JSON lines
        ("a.csv", 'text,label\n"x, with a comma",1\n"multi\nline",0\n', 2),
        ("a.csv", "\ufefftext,label\nx,1\n", 1),  # a byte-order mark is not part of the header
    ],
)
def test_good_files_count_rows(tmp_path, name, content, rows):
    assert check_table(_file(tmp_path, name, content), COLUMNS, "data.source") == rows


def test_parquet_rows_and_columns(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"text": ["x", "y", "z"], "label": [1, 0, 1]}).to_parquet(path)
    assert check_table(path, COLUMNS, "data.source") == 3
    with pytest.raises(ValueError, match=r"a\.parquet: no 'rewards' column \(columns: text, label"):
        check_table(path, ("text", "rewards"), "data.source")
    pd.DataFrame({"text": [], "label": []}).to_parquet(path)
    with pytest.raises(ValueError, match=r"a\.parquet is empty \(no rows\)$"):
        check_table(path, COLUMNS, "data.source")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", "", "a.jsonl is empty"),
        ("a.jsonl", '{"text": "x", "label": 1}\n{"text": "x"', "a.jsonl:2: not valid JSON ("),
        ("a.jsonl", '{"text": "x", "label": 1}\n"x"\n', "a.jsonl:2: a row must be a JSON object"),
        ("a.jsonl", '{"text": "x"}\n', "a.jsonl:1: no 'label' field (fields: text)"),
        ("a.json", "[\n]", "a.json is empty (an empty JSON array)"),
        ("a.json", '[{"text": "x", "label": 1},\n {"text": ]', "a.json:2: not valid JSON ("),
        ("a.json", '[{"text": "x", "label": 1}, {"label": 0}]', "a.json: array item 2: no 'text'"),
        ("a.csv", "text,label\n", "a.csv is empty (a header, no rows)"),
        ("a.csv", "text,label\nx,1\ny,0,extra\n", "a.csv:3: 3 field(s) where the header has 2"),
        ("a.csv", "label,text\n1\n", "a.csv:2: 1 field(s) where the header has 2 (no 'text')"),
        ("a.csv", "text\nx\n", "a.csv: no 'label' column (header: text)"),
        ("a.tsv", "text\tlabel\n", "a.tsv: unknown format (use .csv, .json, .jsonl, .parquet)"),
        ("a.parquet", "", "a.parquet is empty"),
        ("a.parquet", "not parquet at all", "a.parquet: not a readable parquet file ("),
        ("a.jsonl", b'{"text": "x", "label": 1}\n{"text": "\xff"}', "a.jsonl:2: not UTF-8 text"),
    ],
)
def test_bad_files_are_located(tmp_path, name, content, message):
    path = _file(tmp_path, name, content)
    with pytest.raises(ValueError) as err:
        check_table(path, COLUMNS, "data.source")
    text = str(err.value)
    assert text.startswith(f"data.source: {tmp_path}/{message}"), text
    assert "\n" not in text
    assert re.sub(r"\s+", " ", text) == text.strip()


def test_markdown_table_lines():
    assert markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
        "| 3 | 4 |",
    ]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]


# --------------------------------------------------------------------------- report wording
# Issue 27 item 8: the reports printed a KL of float noise as `-0.000` and counted "1 seeds";
# number() and plural() did not exist, so these tests failed on the old code.


@pytest.mark.parametrize(
    "value, digits, text",
    [
        (-0.0002, 3, "0.000"),  # was -0.000
        (-0.0, 3, "0.000"),  # a negative zero itself
        (-0.0004999, 3, "0.000"),
        (-0.0005001, 3, "-0.001"),  # a value that shows as negative keeps its sign
        (-0.126, 3, "-0.126"),
        (0.0002, 3, "0.000"),
        (97.97, 2, "97.97"),
        (-0.004, 2, "0.00"),
        (float("nan"), 3, "nan"),
    ],
)
def test_number_never_writes_a_negative_zero(value, digits, text):
    assert number(value, digits) == text


def test_plural_agrees_with_the_count():
    assert plural(1, "seed") == "1 seed" and plural(3, "seed") == "3 seeds"
    assert plural(0, "sample") == "0 samples"
    assert plural(1, "policy", "policies") == "1 policy"
    assert plural(2, "policy", "policies") == "2 policies"
