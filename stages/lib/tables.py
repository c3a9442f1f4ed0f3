"""Tables: local table files (JSON Lines or JSON, csv, parquet), checked before ``datasets``
reads them, and the Markdown tables the reports write (:func:`markdown_table`, with the
number and count wording they share: :func:`number`, :func:`plural`).

``datasets.load_dataset`` reports a broken file as ``StopIteration`` or "An error occurred while
generating the dataset", naming neither the problem nor the line. :func:`check_table` reads the
file once first and fails with a one-line error that says what is wrong and where::

    from stages.lib.tables import check_table
    check_table(Path("reviews/train.csv"), ("text", "label"), "data.source")
    # ValueError: data.source: reviews/train.csv:7: 1 field(s) where the header has 2 (no 'label')

What it checks: the file is not empty (blank lines only counts as empty; a csv with only a
header too); every JSON line (or the one JSON array of a ``.json`` file) parses and is an object
with every column; every csv row has exactly the header's fields; a parquet file opens, has every
column and at least one row. Field *values* are the business of the reader's contract
(:mod:`stages.lib.contracts`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from stages.lib.common import first_line

#: File suffix -> ``datasets`` builder name.
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def check_table(path: Path, columns: Sequence[str], parameter: str) -> int:
    """Check a local table file against the rules above; return its number of rows.

    Errors are ``ValueError("<parameter>: <path>[:<line>]: <what is wrong>")``."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{parameter}: {path}: unknown format (use {', '.join(sorted(FORMATS))})")
    where = f"{parameter}: {path}"
    if suffix == ".parquet":
        return _check_parquet(path, columns, where)
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{where} is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{where}:{line}: not UTF-8 text ({first_line(err)})") from None
    if suffix == ".csv":
        return _check_csv(text, columns, where)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _check_json_array(text, columns, where)
    return _check_json_lines(text, columns, where)


def _check_object(row: object, columns: Sequence[str], where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(
            f"{where}: no {_names(missing)} field (fields: {', '.join(map(str, row)) or 'none'})"
        )


def _check_json_lines(text: str, columns: Sequence[str], where: str) -> int:
    rows = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}:{number}: not valid JSON ({first_line(err)})") from None
        _check_object(row, columns, f"{where}:{number}")
        rows += 1
    return rows


def _check_json_array(text: str, columns: Sequence[str], where: str) -> int:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}:{err.lineno}: not valid JSON ({first_line(err)})") from None
    if not rows:
        raise ValueError(f"{where} is empty (an empty JSON array)")
    for index, row in enumerate(rows, start=1):
        _check_object(row, columns, f"{where}: array item {index}")
    return len(rows)


def _check_csv(text: str, columns: Sequence[str], where: str) -> int:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{where}: no {_names(missing)} column (header: {', '.join(header)})")
        rows = 0
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                lost = [c for c in columns if header.index(c) >= len(fields)]
                detail = f" (no {_names(lost)})" if lost else ""
                raise ValueError(
                    f"{where}:{reader.line_num}: {len(fields)} field(s) where the header has "
                    f"{len(header)}{detail}"
                )
            rows += 1
    except csv.Error as err:
        raise ValueError(f"{where}:{reader.line_num}: not valid csv ({err})") from None
    if not rows:
        raise ValueError(f"{where} is empty (a header, no rows)")
    return rows


def _check_parquet(path: Path, columns: Sequence[str], where: str) -> int:
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty")
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as err:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise ValueError(f"{where}: not a readable parquet file ({first_line(err)})") from None
    names = list(meta.schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{where}: no {_names(missing)} column (columns: {', '.join(names)})")
    if meta.num_rows == 0:
        raise ValueError(f"{where} is empty (no rows)")
    return meta.num_rows


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, a negative value that rounds to zero written as zero
    (``-0.0002`` -> ``0.000``, not ``-0.000``: a KL of float noise is no negative KL). For the
    unsigned columns of the reports; signed differences (``:+.3f``) keep their sign, which says
    on which side of 0 an interval's end lies."""
    text = f"{value:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        return text[1:]
    return text


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``nouns``, default ``noun + "s"``) unless ``n`` is 1:
    ``plural(1, "seed")`` -> ``1 seed``, ``plural(3, "seed")`` -> ``3 seeds``."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def markdown_table(head: list[str], lines: list[list[str]]) -> list[str]:
    """The lines of a Markdown table: the ``head`` cells, the rule, one line per row of cells."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def _names(columns: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in columns)
