"""trl's preference format: our training pairs out as a Hugging Face ``datasets`` folder.

trl's *standard* preference format is one row per pair with three plain-text columns,
``prompt``, ``chosen`` and ``rejected`` (what ``trl.DPOTrainer`` and most other preference
trainers read). :func:`save_pairs` writes every pair of PREFERENCES rows that way, with
``Dataset.save_to_disk``, as a ``DatasetDict`` whose ``train`` split holds the pairs of our
``train`` prompts and whose ``test`` split those of our validation (``val``) prompts (trl's
scripts train on ``train`` and evaluate on ``test``)::

    from stages.lib.trl_format import save_pairs
    save_pairs(preference_rows, "data/pairs-trl")

    import datasets                                   # anywhere, e.g. in a trl script
    pairs = datasets.load_from_disk("data/pairs-trl")
    pairs["train"][0]   # {"prompt": "The film was", "chosen": " a delight.", "rejected": " dull."}

The texts are the completions' texts (``completions``: decoded, special tokens dropped). A
text-based trainer re-tokenises them and appends its own EOS, so it scores the text's tokens,
not necessarily the exact token ids our trainer scores (the sampled ``completion_ids``; a
completion cut at the length cap has no EOS there): ``stages/bench/align.py`` shows how to make
both score the same tokens. Pairs are written in row order, each row's pairs in order.
"""

from __future__ import annotations

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


def save_pairs(rows: Iterable[dict], folder: str | Path) -> dict[str, int]:
    """Write the pairs of PREFERENCES ``rows`` into ``folder`` (``save_to_disk``, atomically:
    a failed write leaves no folder; a split without pairs, e.g. ``test`` with no validation
    prompts, is left out); returns the number of pairs per exported split."""
    import datasets

    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    records = pair_records(rows)
    data = datasets.DatasetDict(
        {  # an empty split is left out: datasets cannot save and load a split without rows
            split: datasets.Dataset.from_list(recs, features=features)
            for split, recs in records.items()
            if recs
        }
    )
    datasets.disable_progress_bars()
    with atomic_path(folder) as tmp:
        data.save_to_disk(str(tmp))
    return {split: len(recs) for split, recs in records.items()}
