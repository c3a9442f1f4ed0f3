"""``prepare``: load reviews, clean them, and draw the train and eval prompts.

Reads ``data.*`` and ``seed`` from params.yaml; writes ``data/prepared/{train,test}.jsonl``
(contract ``PREPARED``), ``data/prompts/{train,eval}.jsonl`` (contract ``PROMPTS``) and
``metrics/prepare.json``::

    python -m stages prepare            # or: dvc repro prepare

``data.source`` is ``synthetic`` (the built-in corpus, :mod:`stages.lib.synthetic`), a local folder
with ``train`` and ``test`` files (jsonl, csv or parquet; columns ``text`` and ``label``), or a
Hugging Face dataset id such as ``stanfordnlp/imdb``. Folders and hub ids go through the same
``datasets.load_dataset`` call; a local file is first checked by :func:`stages.lib.tables.check_table`
(an empty file, a broken JSON line, a csv row missing a column or an unreadable parquet file
fails with the file and line).

Eval prompts are held out by *text*: a test review whose prompt (its first ``data.prompt_words``
words, single-spaced, case-sensitive) is also a train prompt is never drawn, so no policy is
evaluated on a prompt it was trained on. ``metrics/prepare.json`` counts the test reviews passed
over for that and the distinct prompt texts of each set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from pathlib import Path

import datasets
import typer

from stages.lib import paths
from stages.lib.common import (
    first_line,
    is_hub_id,
    prompt_text,
    resolve_path,
    seeded_subset,
    write_json,
    write_jsonl,
)
from stages.lib.config import DataConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREPARED, check_row
from stages.lib.synthetic import generate_splits
from stages.lib.tables import FORMATS, check_table

SPLITS = ("train", "test")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Remove ``<br />`` tags and normalise whitespace to single spaces."""
    return " ".join(_BR.sub(" ", text).split())


def _local_files(folder: Path) -> dict[str, str]:
    files = {}
    for split in SPLITS:
        found = [
            folder / f"{split}{ext}" for ext in FORMATS if (folder / f"{split}{ext}").is_file()
        ]
        if not found:
            raise ValueError(
                f"data.source: {folder} has no {split}.jsonl, {split}.csv or {split}.parquet"
            )
        if len(found) > 1:
            raise ValueError(
                f"data.source: {folder} has several {split} files "
                f"({', '.join(p.name for p in found)}); keep one"
            )
        check_table(found[0], ("text", "label"), "data.source")
        files[split] = str(found[0])
    kinds = {FORMATS[Path(f).suffix] for f in files.values()}
    if len(kinds) > 1:
        raise ValueError(f"data.source: train and test in {folder} must share one format")
    return files


def load_split_rows(source: str) -> dict[str, list[dict]]:
    """Load the raw ``train``/``test`` rows of a local folder or hub dataset with ``datasets``."""
    path = resolve_path(source)
    if path.is_dir():
        files = _local_files(path)
        builder, name = FORMATS[Path(files["train"]).suffix], str(path)
        loads = {s: (builder, {"data_files": {s: f}}) for s, f in files.items()}
    elif not is_hub_id(source):
        raise ValueError(
            f"data.source: {source!r} is not 'synthetic', an existing folder "
            f"or a Hugging Face dataset id"
        )
    else:
        name, loads = source, {None: (source, {})}
    datasets.disable_progress_bars()
    loaded = {}
    for split, (builder, kwargs) in loads.items():
        try:
            loaded.update(datasets.load_dataset(builder, **kwargs))
        except Exception as err:  # noqa: BLE001 - any loader failure is a bad data.source
            where = f"{name!r}" if split is None else f"{files[split]!r}"
            raise ValueError(f"data.source: cannot load {where} ({first_line(err)})") from None
    out = {}
    for split in SPLITS:
        if split not in loaded:
            raise ValueError(f"data.source: {name} has no '{split}' split")
        ds = loaded[split]
        for column in ("text", "label"):
            if column not in ds.column_names:
                raise ValueError(
                    f"data.source: {name} split '{split}' has no '{column}' column "
                    f"(columns: {', '.join(ds.column_names)})"
                )
        out[split] = [{"text": t, "label": lab} for t, lab in zip(ds["text"], ds["label"])]
    return out


def load_source(data: DataConfig, seed: int) -> dict[str, list[dict]]:
    """Raw rows per split for ``data.source``."""
    if data.source == "synthetic":
        train, test = generate_splits(data.synthetic.n_train, data.synthetic.n_test, seed)
        return {"train": train, "test": test}
    return load_split_rows(data.source)


def clean_rows(
    rows: list[dict], split: str, limit: int | None, seed: int
) -> tuple[list[dict], int]:
    """Assert the ``text``/``label`` contract, clean texts, drop empty ones, and optionally keep
    a seeded random subset of ``limit`` rows (in their original order).

    Returns the rows and how many were empty after cleaning."""
    out, empty = [], 0
    for i, row in enumerate(rows):
        check_row(row, PREPARED, f"data.source split '{split}' row {i + 1}")
        text = clean_text(row["text"])
        if text:
            out.append({"text": text, "label": int(row["label"])})
        else:
            empty += 1
    if not out:
        raise ValueError(f"data.source: split '{split}' is empty")
    return seeded_subset(out, limit, f"{seed}-{split}-rows"), empty


def make_prompts(
    rows: list[dict],
    n: int,
    words: int,
    seed: int,
    prefix: str,
    parameter: str,
    exclude: Collection[str] = frozenset(),
) -> tuple[list[dict], int, int]:
    """Draw ``n`` prompts (first ``words`` words) from reviews long enough to leave a completion
    and whose prompt text is not in ``exclude`` (held-out prompts exclude the train prompts).

    Returns the prompts, the number of reviews too short to qualify and the number left out
    because their prompt text is excluded. Prompt ids are ``<prefix>-<row index>`` so a
    prompt can be traced to its review."""
    long_enough = [i for i, row in enumerate(rows) if len(row["text"].split()) > words]
    eligible = [i for i in long_enough if prompt_text(rows[i]["text"], words) not in exclude]
    short, excluded = len(rows) - len(long_enough), len(long_enough) - len(eligible)
    if n > len(eligible):
        unseen = " whose prompt text is not a train prompt" if exclude else ""
        raise ValueError(
            f"params: {parameter}: must be <= {len(eligible)} (the {prefix} "
            f"reviews with more than {words} words{unseen}), got {n}"
        )
    picked = random.Random(f"{seed}-{prefix}-prompts").sample(eligible, n)
    prompts = [
        {"prompt_id": f"{prefix}-{i}", "prompt": prompt_text(rows[i]["text"], words)}
        for i in picked
    ]
    return prompts, short, excluded


def _split_stats(rows: list[dict], raw: int, empty: int, short: int) -> dict:
    return {
        "rows": len(rows),
        "source_rows": raw,
        "dropped_empty": empty,
        "too_short_for_prompt": short,
        "positive_share": round(sum(r["label"] for r in rows) / len(rows), 4),
    }


def prepare(params: dict) -> dict:
    """Run the stage on a params mapping; returns the metrics it wrote."""
    data, seed = read_section(params, "data", DataConfig), read_seed(params)
    limits = {"train": data.max_train_rows, "test": data.max_test_rows}
    raw = load_source(data, seed)
    cleaned = {s: clean_rows(raw[s], s, limits[s], seed) for s in SPLITS}
    split_rows = {s: rows for s, (rows, _) in cleaned.items()}
    train_prompts, short_train, _ = make_prompts(
        split_rows["train"],
        data.n_train_prompts,
        data.prompt_words,
        seed,
        "train",
        "data.n_train_prompts",
    )
    eval_prompts, short_test, overlap = make_prompts(
        split_rows["test"],
        data.n_eval_prompts,
        data.prompt_words,
        seed,
        "test",
        "data.n_eval_prompts",
        exclude={p["prompt"] for p in train_prompts},
    )
    write_jsonl(paths.PREPARED_TRAIN, split_rows["train"])
    write_jsonl(paths.PREPARED_TEST, split_rows["test"])
    write_jsonl(paths.TRAIN_PROMPTS, train_prompts)
    write_jsonl(paths.EVAL_PROMPTS, eval_prompts)
    short = {"train": short_train, "test": short_test}
    metrics = {
        **{s: _split_stats(split_rows[s], len(raw[s]), cleaned[s][1], short[s]) for s in SPLITS},
        "prompts": {
            "train": len(train_prompts),
            "train_distinct_texts": len({p["prompt"] for p in train_prompts}),
            "eval": len(eval_prompts),
            "eval_distinct_texts": len({p["prompt"] for p in eval_prompts}),
            # test reviews passed over because their prompt text is a train prompt
            "test_reviews_sharing_a_train_prompt": overlap,
        },
    }
    write_json(paths.metrics_file("prepare"), metrics)
    return metrics


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Load and clean the reviews, draw train and eval prompts."""
    metrics = prepare(load_params(params))
    typer.echo(
        f"prepared {metrics['train']['rows']} train / {metrics['test']['rows']} test "
        f"reviews, {metrics['prompts']['train']} train / {metrics['prompts']['eval']} "
        f"eval prompts"
    )
