"""trl's preference format: our training pairs out as JSON Lines files that trl reads.

trl's *standard* preference format is one row per pair with three plain-text columns,
``prompt``, ``chosen`` and ``rejected`` (what ``trl.DPOTrainer`` and most other preference
trainers read). :func:`save_pairs` writes every pair of PREFERENCES rows that way into a folder
of JSON Lines files, one per split: ``train.jsonl`` holds the pairs of our ``train`` prompts and
``test.jsonl`` those of our validation (``val``) prompts (trl's scripts train on ``train`` and
evaluate on ``test``)::

    from stages.lib.trl_format import save_pairs
    save_pairs(preference_rows, "data/pairs-trl")

    import datasets                                   # anywhere, e.g. in a trl script
    pairs = datasets.load_dataset("data/pairs-trl")   # DatasetDict: train, test
    pairs["train"][0]    # {"prompt": "The film was", "chosen": " a delight.", "rejected": " dull."}

**Why plain files, not a ``save_to_disk`` folder.** ``datasets`` caches the result of every
``Dataset.map`` (and ``filter``) in a ``cache-<fingerprint>.arrow`` file beside the Arrow files
the dataset was loaded from. Loaded with ``load_from_disk``, a ``save_to_disk`` folder gets
trl's caches written into it (trl 1.16's ``DPOTrainer``: 3 files per split), and a DVC output
that gains files is modified: ``dvc status`` reports the stage changed and ``dvc repro`` runs it
again. ``load_dataset`` (or ``load_dataset("json", data_files=...)``) converts the files once
into the ``datasets`` cache (``HF_DATASETS_CACHE``, ``~/.cache/huggingface/datasets``) and every
map's cache goes there: whatever trl does with the pairs, the folder is only read.

The texts are the completions' texts (``completions``: decoded, special tokens dropped). A
text-based trainer re-tokenises them and appends its own EOS, so it scores the text's tokens,
not necessarily the exact token ids our trainer scores (the sampled ``completion_ids``; a
completion cut at the length cap has no EOS there): ``stages/bench/align.py`` shows how to make
both score the same tokens. Pairs are written in row order, each row's pairs in order; a
split without pairs has no file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from stages.lib.common import atomic_path

#: trl's standard preference columns, in order.
COLUMNS = ("prompt", "chosen", "rejected")
#: Our split -> the exported split (trl scripts evaluate on ``test``).
SPLITS = {"train": "train", "val": "test"}


def pair_records(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """``{"train": [...], "test": [...]}``: one ``{prompt, chosen, rejected}`` record per pair
    of the PREFERENCES ``rows`` (winner chosen), by the row's split."""
    out: dict[str, list[dict]] = {name: [] for name in SPLITS.values()}
    for row in rows:
        split = SPLITS[row["split"]]
        texts = row["completions"]
        for w, l in row["pairs"]:
            out[split].append({"prompt": row["prompt"], "chosen": texts[w], "rejected": texts[l]})
    return out


def write_pairs(records: dict[str, list[dict]], folder: str | Path) -> dict[str, int]:
    """Write ``{split: records}`` into ``folder`` as ``<split>.jsonl`` (UTF-8, one JSON object
    per line, atomically: a failed write leaves no folder; a split without records gets no
    file); returns the number of records per split."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for split, recs in records.items():
            if recs:
                with (tmp / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    return {split: len(recs) for split, recs in records.items()}


def save_pairs(rows: Iterable[dict], folder: str | Path) -> dict[str, int]:
    """Write the pairs of PREFERENCES ``rows`` into ``folder`` (:func:`pair_records`,
    :func:`write_pairs`); returns the number of pairs per exported split."""
    return write_pairs(pair_records(rows), folder)
