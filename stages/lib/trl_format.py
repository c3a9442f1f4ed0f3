"""trl's preference format: our training pairs out as JSON Lines files, and how trl tokenises them.

trl's *standard* preference format is one row per pair with three plain-text columns,
``prompt``, ``chosen`` and ``rejected`` (what ``trl.DPOTrainer`` and most other preference
trainers read). :func:`save_pairs` writes every pair of PREFERENCES rows that way into a folder
of JSON Lines files, one per split: ``train.jsonl`` holds the pairs of our ``train`` prompts and
``test.jsonl`` those of our validation (``val``) prompts (trl's scripts train on ``train`` and
evaluate on ``test``)::

    from stages.lib.trl_format import save_pairs
    save_pairs(preference_rows, "data/pairs-trl", tokenizer)

    import datasets                                   # anywhere, e.g. in a trl script
    pairs = datasets.load_dataset("data/pairs-trl")   # DatasetDict: train, test
    pairs["train"][0]
    # {"prompt": "The film was", "chosen": " a delight.", "rejected": " dull.", "trl_differs": ""}

**Why plain files, not a ``save_to_disk`` folder.** ``datasets`` caches the result of every
``Dataset.map`` (and ``filter``) in a ``cache-<fingerprint>.arrow`` file beside the Arrow files
the dataset was loaded from. Loaded with ``load_from_disk``, a ``save_to_disk`` folder gets
trl's caches written into it (trl 1.16's ``DPOTrainer``: 3 files per split), and a DVC output
that gains files is modified: ``dvc status`` reports the stage changed and ``dvc repro`` runs it
again. ``load_dataset`` (or ``load_dataset("json", data_files=...)``) converts the files once
into the ``datasets`` cache (``HF_DATASETS_CACHE``, ``~/.cache/huggingface/datasets``) and every
map's cache goes there: whatever trl does with the pairs, the folder is only read.

The texts are the completions' texts (``completions``: decoded, special tokens dropped). Pairs
are written in row order, each row's pairs in order; a split without pairs has no file.

**Tokens.** trl tokenises the texts again (:func:`trl_tokenize`: trl 1.16's
``DPOTrainer._prepare_dataset`` for the standard format), while our trainer scores the prompt's
tokens (no special tokens) followed by the *sampled* ``completion_ids``
(:mod:`stages.lib.sequences`). Given the policy's tokenizer, every record gets a
``trl_differs`` column that says whether trl scores exactly our tokens for that pair (``""``)
or why not: a comma-separated list of :data:`REASONS`, in that order:

* ``boundary``: the prompt's last token(s) merge with a completion's first across the
  prompt/completion boundary (a completion that starts mid-word: prompt ``"The film was gre"``,
  completion ``"at fun"``). trl starts both completions where its tokens of the prompt stop
  being a prefix of the tokens of prompt + chosen or prompt + rejected, so the end of the
  prompt moves into both completions (trl warns once: "The tokenized prompt is not a prefix of
  the tokenized prompt+completion"); our trainer scores the prompt's tokens, then the sampled ids.
* ``special_tokens``: the tokenizer adds special tokens to a text (e.g. a BOS): trl's prompt
  has them, ours does not.
* ``eos``: a completion was cut at the length cap (``finished`` false): no EOS in ours, an EOS
  in trl's (it appends the EOS to every completion).
* ``retokenised``: otherwise, trl's tokens of a completion's text are not its sampled ids (not
  checked on a ``boundary`` pair, whose completions trl re-tokenises across the boundary).

``trl_differs`` is empty exactly when trl's prompt, chosen and rejected ids are ours (before
either side truncates to its maximum length). trl drops the extra column itself
(``remove_unused_columns``); ``stages/bench/align.py`` shows how to make both sides score the
same tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from stages.lib.common import atomic_path

#: trl's standard preference columns, in order.
COLUMNS = ("prompt", "chosen", "rejected")
#: The column that says where trl's tokens of a pair differ from ours (module docstring).
DIFFERS = "trl_differs"
#: Why trl's tokens of a pair differ from ours, in the order ``trl_differs`` lists them.
REASONS = ("boundary", "special_tokens", "eos", "retokenised")
#: Our split -> the exported split (trl scripts evaluate on ``test``).
SPLITS = {"train": "train", "val": "test"}


def common_prefix_length(*seqs: Sequence) -> int:
    """Leading items every one of ``seqs`` has in common: token ids (trl's
    ``common_prefix_length``) or the characters of texts (ingest's shared conversation prefix)."""
    n = 0
    for items in zip(*seqs):
        if any(x != items[0] for x in items):
            break
        n += 1
    return n


def _with_eos(text: str, eos: str) -> str:
    return text if text.endswith(eos) else text + eos


def trl_tokenize(tokenizer, prompt: str, chosen: str, rejected: str) -> dict[str, list[int]]:
    """trl 1.16 ``DPOTrainer``'s tokens of one standard-format (plain text) row: the EOS token's
    text is appended to ``chosen`` and ``rejected`` (unless they end with it), then the prompt,
    prompt + chosen and prompt + rejected are tokenised with the tokenizer's special tokens and
    the completions start where the prompt's tokens stop being a prefix of either joined text's
    (the shorter common prefix): ``{"prompt_ids", "chosen_ids", "rejected_ids"}``."""
    eos = tokenizer.eos_token
    texts = [prompt, prompt + _with_eos(chosen, eos), prompt + _with_eos(rejected, eos)]
    prompt_ids, chosen_ids, rejected_ids = tokenizer(texts)["input_ids"]
    n = min(
        common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids)
    )
    return {
        "prompt_ids": prompt_ids[:n],
        "chosen_ids": chosen_ids[n:],
        "rejected_ids": rejected_ids[n:],
    }


def _row_differences(row: dict, tokenizer) -> list[str]:
    """``trl_differs`` of each pair of one PREFERENCES row (module docstring)."""
    eos = tokenizer.eos_token
    prompt, texts = row["prompt"], row["completions"]
    used = sorted({k for pair in row["pairs"] for k in pair})
    joined = tokenizer([prompt] + [prompt + _with_eos(texts[k], eos) for k in used])["input_ids"]
    prompt_ids, full = joined[0], dict(zip(used, joined[1:]))
    ours = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for pair in row["pairs"]:
        n = min(common_prefix_length(prompt_ids, full[k]) for k in pair)
        reasons = set()
        if n < len(prompt_ids):
            reasons.add("boundary")
        if prompt_ids != ours:
            reasons.add("special_tokens")
        for k in pair:
            theirs, cut = full[k][n:], not row["finished"][k]
            if cut:
                reasons.add("eos")
                theirs = theirs[:-1] if theirs[-1:] == [tokenizer.eos_token_id] else theirs
            if n == len(prompt_ids) and theirs != row["completion_ids"][k]:
                reasons.add("retokenised")
        out.append(",".join(r for r in REASONS if r in reasons))
    return out


def pair_records(rows: Iterable[dict], tokenizer=None) -> dict[str, list[dict]]:
    """``{"train": [...], "test": [...]}``: one ``{prompt, chosen, rejected}`` record per pair
    of the PREFERENCES ``rows`` (winner chosen), by the row's split; given the policy's
    ``tokenizer``, each record also says ``trl_differs`` (module docstring)."""
    out: dict[str, list[dict]] = {name: [] for name in SPLITS.values()}
    for row in rows:
        split = SPLITS[row["split"]]
        texts = row["completions"]
        differs = _row_differences(row, tokenizer) if tokenizer is not None else None
        for i, (w, l) in enumerate(row["pairs"]):
            record = {"prompt": row["prompt"], "chosen": texts[w], "rejected": texts[l]}
            if differs is not None:
                record[DIFFERS] = differs[i]
            out[split].append(record)
    return out


def difference_counts(records: dict[str, list[dict]]) -> dict[str, int]:
    """Over every split's records (with ``trl_differs``): ``pairs`` whose tokens trl scores
    differently from ours, and the pairs of each reason (a pair can have several)."""
    found = [r[DIFFERS] for recs in records.values() for r in recs]
    reasons = [set(d.split(",")) for d in found]
    return {
        "pairs": sum(bool(d) for d in found),
        **{k: sum(k in r for r in reasons) for k in REASONS},
    }


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


def save_pairs(rows: Iterable[dict], folder: str | Path, tokenizer=None) -> dict[str, int]:
    """Write the pairs of PREFERENCES ``rows`` into ``folder`` (:func:`pair_records`, with
    ``trl_differs`` given the policy's ``tokenizer``; :func:`write_pairs`); returns the number of
    pairs per exported split."""
    return write_pairs(pair_records(rows, tokenizer), folder)
