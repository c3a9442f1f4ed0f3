"""Preference datasets in: trl's formats or the ranked form, read and checked row by row.

A source (``ingest.source``) is a Hugging Face dataset id, a local ``save_to_disk`` folder (what
``datasets.load_from_disk`` reads), a local folder of split files (``train.jsonl`` and optionally
``test.jsonl``; jsonl, json, csv or parquet; e.g. a copy of our own ``data/pairs-trl``) or one
such file (the train split). A hub id is loaded with ``datasets.load_dataset`` only outside DVC: under
DVC (``DVC_STAGE`` is set for every stage command) the source is a tracked dependency, so a hub
id is refused with the command that snapshots it (docs/byo.md). Every split is one of these
formats, told apart by its first row (:func:`stages.lib.ingest_formats.detect`):

* **pairwise**, trl's standard preference format: ``prompt``, ``chosen``, ``rejected``, plain
  text (one preference pair per row);
* **ranked**: ``prompt``, ``completions`` (a list of K >= 2 texts) and ``rewards`` (K numbers),
  for the listwise losses; pairs are drawn from the rewards with ``pairs.strategy``;
* **pairwise-implicit**: ``chosen``, ``rejected`` text only, the prompt their common prefix;
* **conversational** (``prompt``, ``chosen``, ``rejected`` lists of ``{"role", "content"}``
  messages) and **conversational-implicit** (``chosen``, ``rejected`` whole conversations):
  rendered to text with ``ingest.chat_template``, the last assistant turn the completion;
* **unpaired** (``prompt``, ``completion``, ``label``): refused, naming the format and what to do.

The last three: :mod:`stages.lib.ingest_formats`. Every row is checked before anything is
written; a bad one is a one-line ``ValueError`` naming the file and line (jsonl, csv), array
item (json) or row (parquet, datasets), all counted from 1 (an array item or row also names
the ``prompt_id`` the row gets, ``<split>-<index>``, whose index counts from 0: ``row 3
(prompt_id train-2)``), and the field::

    from stages.lib.ingest_sources import load_tables, read_records
    tables = load_tables("preferences", "ingest.source")       # {"train": Table, "test": Table}
    records = read_records(tables["train"], "ingest.source", chat)   # chat: conversational rows
    # ingest.source: preferences/train.jsonl:7: field 'rejected' is identical to 'chosen'

Refused: a missing or null field, a text field that is not text (or a message list in a split
whose first row is text: one format per split), an empty (or whitespace-only) text, ``chosen``
identical to ``rejected``, a ranked row with fewer than 2 completions, two identical
completions, rewards that are not one finite number per completion, and the message errors of
:mod:`stages.lib.ingest_formats`. Texts are kept exactly as given (no stripping): the completion
is what follows the prompt.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from stages.lib.common import first_line, is_hub_id, resolve_path
from stages.lib.ingest_formats import (
    EXPECTED,
    UNPAIRED,
    Chat,
    columns_of,
    detect,
    messages,
    split_conversation,
    split_implicit,
)
from stages.lib.tables import FORMATS, check_table

PAIRWISE = ("prompt", "chosen", "rejected")
RANKED = ("prompt", "completions", "rewards")


@dataclass
class Table:
    """One split of a source: its rows, the location of each (for messages) and its name."""

    name: str
    rows: list[dict]
    where: list[str]

    @property
    def format(self) -> str:
        """The format of the first row's columns (:func:`stages.lib.ingest_formats.detect`):
        ``pairwise``, ``ranked``, ``pairwise-implicit``, ``conversational``,
        ``conversational-implicit`` or ``unpaired``."""
        return detect(self.rows[0]) if self.rows else "pairwise"


@dataclass
class Record:
    """A checked row: the prompt, its completions (chosen first for a pairwise row), one
    reward per completion (pairwise: 1 chosen, 0 rejected), the pair of a pairwise row (None
    for a ranked row: drawn later), the row's location, the field name of each completion and
    whether the prompt was rendered by the tokenizer's chat template (its special tokens, the
    EOS included, are then the template's own and kept)."""

    where: str
    prompt: str
    completions: list[str]
    rewards: list[float]
    pairs: list[list[int]] | None
    fields: list[str]
    templated: bool = False


# --------------------------------------------------------------------------- loading


def _counted(what: str, split: str, n: int) -> list[str]:
    """``<what> <i> (prompt_id <split>-<i - 1>)`` for i = 1..n: rows and array items count
    from 1 (``row 3`` is the third), the ``prompt_id`` ingest gives the row from 0, as
    ``dataset[split][i - 1]`` indexes it; both are named so neither is mistaken for the other."""
    return [f"{what} {i} (prompt_id {split}-{i - 1})" for i in range(1, n + 1)]


def _locations(path: Path, n: int, split: str) -> list[str]:
    """Where each of the ``n`` rows of split ``split``'s local file is: ``<path>:<line>``
    (jsonl, csv: the file's line, as an editor counts it), ``<path>: array item <i> (prompt_id
    <split>-<i - 1>)`` (a json array) or ``<path>: row <i> (prompt_id ...)`` (parquet)."""
    suffix = path.suffix.lower()
    found: list[str] = []
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".json" and text.lstrip().startswith("["):
            found = [f"{path}: {item}" for item in _counted("array item", split, n)]
        else:
            found = [f"{path}:{i}" for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".csv":
        reader = csv.reader(path.read_text(encoding="utf-8-sig").splitlines(keepends=True))
        next(reader, None)
        found = [f"{path}:{reader.line_num}" for fields in reader if fields]
    return found if len(found) == n else [f"{path}: {row}" for row in _counted("row", split, n)]


def _rows(dataset) -> list[dict]:
    columns = dataset.column_names
    data = dataset.to_dict()
    return [{c: data[c][i] for c in columns} for i in range(len(dataset))]


def _split_files(folder: Path, parameter: str) -> dict[str, Path]:
    """``{split: file}`` of a folder of split files (one file per split name)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in FORMATS:
            if path.stem in files:
                raise ValueError(
                    f"{parameter}: {folder} has several '{path.stem}' files "
                    f"({files[path.stem].name}, {path.name}); keep one"
                )
            files[path.stem] = path
    if not files:
        raise ValueError(
            f"{parameter}: {folder} holds no split file (train.jsonl, train.csv, "
            f"train.parquet, ...) and is not a datasets save_to_disk folder"
        )
    return files


def _load_files(files: dict[str, Path], parameter: str) -> dict[str, Table]:
    import datasets

    datasets.disable_progress_bars()
    tables = {}
    for split, path in files.items():
        check_table(path, (), parameter)  # the columns depend on the format: read_records
        try:
            loaded = datasets.load_dataset(
                FORMATS[path.suffix.lower()], data_files={split: str(path)}, split=split
            )
        except Exception as err:  # noqa: BLE001 - any loader failure is a bad source file
            raise ValueError(f"{parameter}: {path}: cannot load ({first_line(err)})") from None
        rows = _rows(loaded)
        tables[split] = Table(str(path), rows, _locations(path, len(rows), split))
    return tables


def _load_dataset_dict(data, name: str) -> dict[str, Table]:
    import datasets

    if isinstance(data, datasets.Dataset):
        data = {"train": data}
    tables = {}
    for split, ds in data.items():
        rows, where = _rows(ds), f"{name} split '{split}'"
        tables[split] = Table(
            where, rows, [f"{where} {r}" for r in _counted("row", split, len(rows))]
        )
    return tables


def load_tables(source: str, parameter: str) -> dict[str, Table]:
    """Every split of ``source`` (see the module docstring) as a :class:`Table`."""
    import datasets

    path = resolve_path(source)
    datasets.disable_progress_bars()
    if path.is_file():
        return _load_files({"train": path}, parameter)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                data = datasets.load_from_disk(str(path))
            except Exception as err:  # noqa: BLE001 - any loader failure is a bad source
                raise ValueError(f"{parameter}: {path}: cannot load ({first_line(err)})") from None
            return _load_dataset_dict(data, str(path))
        return _load_files(_split_files(path, parameter), parameter)
    if not is_hub_id(source):
        raise ValueError(
            f"{parameter}: {source!r} is not an existing file or folder, or a Hugging Face "
            f"dataset id"
        )
    if os.environ.get("DVC_STAGE"):  # set by DVC for every stage command it runs
        raise ValueError(
            f"{parameter}: {source!r} is not a local file or folder, and under DVC the source "
            f'must be a tracked local copy: from the repository root run python -c "import '
            f"datasets; datasets.load_dataset('{source}').save_to_disk('byo/preferences')\" && "
            f"dvc add byo/preferences, then set ingest.source: preferences (docs/byo.md)"
        )
    try:
        data = datasets.load_dataset(source)
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad source
        raise ValueError(f"{parameter}: cannot load {source!r} ({first_line(err)})") from None
    return _load_dataset_dict(data, repr(source))


# --------------------------------------------------------------------------- checking rows


def _shown(value) -> str:
    """A bad value as a message shows it: ``NaN`` for a float NaN, ``null (...)`` for None (a
    missing value: pandas writes a NaN to parquet as null, so a NaN reward arrives as one),
    else its repr."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if value is None:
        return "null (a missing value, or a NaN that pandas wrote to parquet as null)"
    return repr(value)


def _text(value, where: str, field: str) -> str:
    if value is None:
        raise ValueError(f"{where}: field '{field}' is missing")
    if isinstance(value, (list, dict)):
        raise ValueError(
            f"{where}: field '{field}' must be plain text, got a {type(value).__name__} (a "
            f"split has one format, told by its first row)"
        )
    if not isinstance(value, str):
        raise ValueError(f"{where}: field '{field}' must be text, got {_shown(value)}")
    if not value.strip():
        raise ValueError(f"{where}: field '{field}' is empty")
    return value


def pairwise_record(row: dict, where: str) -> Record:
    """A checked pairwise row (``prompt``, ``chosen``, ``rejected``)."""
    prompt, chosen, rejected = (_text(row.get(f), where, f) for f in PAIRWISE)
    if chosen == rejected:
        raise ValueError(f"{where}: field 'rejected' is identical to 'chosen'")
    return Record(where, prompt, [chosen, rejected], [1.0, 0.0], [[0, 1]], ["chosen", "rejected"])


def ranked_record(row: dict, where: str) -> Record:
    """A checked ranked row (``prompt``, ``completions``, ``rewards``)."""
    prompt = _text(row.get("prompt"), where, "prompt")
    completions, rewards = row.get("completions"), row.get("rewards")
    for field, value in (("completions", completions), ("rewards", rewards)):
        if value is None:
            raise ValueError(f"{where}: field '{field}' is missing")
        if not isinstance(value, list):
            raise ValueError(f"{where}: field '{field}' must be a list, got {value!r}")
    if len(completions) < 2:
        raise ValueError(
            f"{where}: field 'completions' has {len(completions)} completion(s); a ranked row "
            f"needs at least 2"
        )
    texts = [_text(c, where, f"completions[{k}]") for k, c in enumerate(completions)]
    seen: dict[str, int] = {}
    for k, text in enumerate(texts):
        if text in seen:
            raise ValueError(
                f"{where}: field 'completions[{k}]' is identical to 'completions[{seen[text]}]'"
            )
        seen[text] = k
    if len(rewards) != len(texts):
        raise ValueError(
            f"{where}: field 'rewards' has {len(rewards)} values for {len(texts)} completions"
        )
    for k, r in enumerate(rewards):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(
                f"{where}: field 'rewards[{k}]' must be a finite number, got {_shown(r)}"
            )
    fields = [f"completions[{k}]" for k in range(len(texts))]
    return Record(where, prompt, texts, [float(r) for r in rewards], None, fields)


def implicit_record(row: dict, where: str) -> Record:
    """A checked implicit-prompt row (``chosen``, ``rejected`` text sharing the prompt)."""
    chosen, rejected = (_text(row.get(f), where, f) for f in ("chosen", "rejected"))
    if chosen == rejected:
        raise ValueError(f"{where}: field 'rejected' is identical to 'chosen'")
    prompt, chosen, rejected = split_implicit(chosen, rejected, where)
    return Record(where, prompt, [chosen, rejected], [1.0, 0.0], [[0, 1]], ["chosen", "rejected"])


def conversational_record(row: dict, where: str, chat: Chat, explicit: bool) -> Record:
    """A checked conversational row (lists of messages), rendered to text with ``chat``."""
    prompt = messages(row.get("prompt"), where, "prompt") if explicit else None
    chosen, rejected = (messages(row.get(f), where, f) for f in ("chosen", "rejected"))
    context, win, lose = split_conversation(prompt, chosen, rejected, where)
    texts = chat.render(context, win, lose, where, "prompt" if explicit else "chosen")
    fields = ["chosen", "rejected"]
    return Record(
        where, texts[0], list(texts[1:]), [1.0, 0.0], [[0, 1]], fields, chat.name != "plain"
    )


def read_records(table: Table, parameter: str, chat: Chat | None = None) -> list[Record]:
    """Every row of ``table`` checked (its format's columns first, then row by row);
    conversational rows are rendered with ``chat`` (default: the plain template)."""
    if not table.rows:
        raise ValueError(f"{parameter}: {table.name} has no rows")
    fmt = table.format
    if fmt == "unpaired":
        raise ValueError(f"{parameter}: {table.name}: {UNPAIRED}")
    present = set(table.rows[0])
    missing = [c for c in columns_of(fmt) if c not in present]
    if missing:
        raise ValueError(
            f"{parameter}: {table.name}: no {', '.join(repr(c) for c in missing)} column "
            f"(columns: {', '.join(map(str, table.rows[0]))}; expected {EXPECTED})"
        )
    chat = chat or Chat()
    checks = {
        "pairwise": pairwise_record,
        "ranked": ranked_record,
        "pairwise-implicit": implicit_record,
        "conversational": lambda row, where: conversational_record(row, where, chat, True),
        "conversational-implicit": lambda r, where: conversational_record(r, where, chat, False),
    }
    check = checks[fmt]
    return [check(row, f"{parameter}: {where}") for row, where in zip(table.rows, table.where)]
