"""The ``ingest`` stage's compute: checked preference records -> the files ``sample`` ->
``score`` -> ``pairs`` (and ``prepare``) would have written, so ``sft``, ``reference``, ``align``
and ``evaluate`` run on them unchanged::

    from stages.lib.ingest import IngestConfig, build_outputs
    out = build_outputs(tables, cfg, pairs_cfg, tokenizer, seed)
    out.preferences, out.train_prompts, out.eval_prompts, out.prepared, out.metrics

* **Texts.** Rows come in as texts: trl's standard and ranked forms as they are, its
  implicit-prompt and conversational forms as :mod:`stages.lib.ingest_formats` turns them into
  prompt and completions (conversations rendered with ``ingest.chat_template``, ``auto``: the
  policy tokenizer's chat template when it has one, else the plain template; the metrics say
  which, ``chat_template``, for conversational data). The same template renders every row, so
  the eval prompts too.
* **Tokens.** A completion's ``completion_ids`` are its text tokenised on its own with the
  policy's tokenizer (no special tokens added) followed by the EOS, as a sampled completion
  that stopped has them (``finished`` is true); the prompt is tokenised by the stages that read
  it, as for sampled rows. A text that contains the EOS token itself is refused (its own EOS
  would end the completion early), except a prompt rendered by the chat template, whose EOS
  tokens are the template's turn ends.
* **Rows and pairs.** One PREFERENCES row per source row, ``prompt_id`` ``<split>-<index>``
  (0-based row index, as ``dataset[split][index]``; an error names a row counted from 1 and
  this id: ``row 3 (prompt_id train-2)``). A pairwise row has completions
  ``[chosen, rejected]``, rewards ``[1, 0]`` (the preference as a label, not a reward-model
  score) and the pair ``[[0, 1]]``; a ranked row keeps its completions and rewards and gets
  the pairs of ``pairs.strategy`` (:func:`stages.lib.pairs.make_pairs`, seeded per prompt as
  the ``pairs`` stage does; tied rewards give no pair and a row without a pair is dropped and
  counted).
* **Held-out prompts, by text** (whitespace-normalised, case-sensitive, as ``prepare`` and
  ``pairs`` hold them out). Eval prompts come from the source's ``ingest.test_split`` when it
  has one (its prompts whose text is not a train prompt's; the others are counted and skipped),
  else from ``ingest.eval_fraction`` of the train split's prompt texts, held out of training;
  at most ``ingest.n_eval_prompts`` distinct texts (a seeded subset, in order). The remaining
  train rows give ``pairs.val_fraction`` of their prompt texts to validation (``split: val``),
  exactly as ``pairs`` does.
* **SFT texts.** ``data/prepared/{train,test}.jsonl`` hold prompt + preferred completion
  (``chosen``, or the best-rewarded one) of the train-split rows and of the eval rows, with
  label 1: the ``sft`` stage keeps (``sft.epochs: 0``) or fine-tunes the policy on them and
  reports the held-out perplexity of the preferred completions.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from stages.lib.common import seeded_subset
from stages.lib.config import PairsConfig, param, positive_int, unit_interval
from stages.lib.contracts import PREFERENCES, check_row
from stages.lib.ingest_formats import CHAT_TEMPLATES, CONVERSATIONAL, Chat
from stages.lib.ingest_sources import Record, Table, read_records
from stages.lib.pairs import hold_out_by_text, make_pairs, pair_rng

PARAMETER = "ingest.source"


@dataclass(frozen=True)
class IngestConfig:
    """``ingest`` (``byo/params.yaml``): where the preference dataset comes from and how its
    prompts are split."""

    source: str = param(
        "a HF dataset id, a save_to_disk folder, a folder of split files or one file",
        check=lambda v: v.strip() != "",
        must="a non-empty string",
    )
    train_split: str = param("the split to train on", "train", check=lambda v: v.strip() != "")
    test_split: str | None = param(
        "the split eval prompts come from (null or absent: held out of the train split)", "test"
    )
    eval_fraction: float = param(
        "share of train prompt texts held out for eval when there is no test split",
        0.1,
        check=unit_interval,
        must="in [0, 1)",
    )
    n_eval_prompts: int = param("eval prompts at most", 100, check=positive_int, must=">= 1")
    max_train_rows: int | None = param(
        "seeded subset of train rows (null = all)", None, check=positive_int, must="null or >= 1"
    )
    chat_template: str = param(
        "how conversational rows become text: auto (the tokenizer's chat template if it has "
        "one, else plain), tokenizer or plain",
        "auto",
        check=lambda v: v in CHAT_TEMPLATES,
        must=" or ".join(CHAT_TEMPLATES),
    )


@dataclass
class Outputs:
    """What ``ingest`` writes (see :func:`build_outputs`)."""

    preferences: list[dict]
    train_prompts: list[dict]
    eval_prompts: list[dict]
    prepared: dict[str, list[dict]]
    metrics: dict


def _norm(text: str) -> str:
    return " ".join(text.split())


def tokenize_records(records: list[Record], tokenizer) -> list[list[list[int]]]:
    """Per record, per completion: its tokens (no special tokens added) + EOS. A prompt or
    completion containing the EOS token is a one-line error naming the row and field (except
    a prompt rendered by the tokenizer's chat template, whose EOS tokens are the template's)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("params: sft.model: its tokenizer has no EOS token")
    texts = [c for r in records for c in r.completions]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    prompt_ids = tokenizer([r.prompt for r in records], add_special_tokens=False)["input_ids"]
    out, start = [], 0
    for record, prompt in zip(records, prompt_ids):
        mine = ids[start : start + len(record.completions)]
        start += len(record.completions)
        checked = list(zip(record.fields, mine))
        if not record.templated:
            checked.insert(0, ("prompt", prompt))
        for field, tokens in checked:
            if eos in tokens:
                raise ValueError(
                    f"{record.where}: field '{field}' contains the tokenizer's EOS token "
                    f"{tokenizer.eos_token!r}"
                )
        out.append([[*t, eos] for t in mine])
    return out


def _best(record: Record) -> str:
    return record.completions[max(range(len(record.rewards)), key=record.rewards.__getitem__)]


def _eval_split(
    tables: dict[str, Table],
    train: list[tuple[str, Record]],
    cfg: IngestConfig,
    seed: int,
    chat: Chat,
) -> tuple[list[tuple[str, Record]], list[tuple[str, Record]], str, int]:
    """(train rows kept, eval rows, where eval prompts come from, test rows skipped for sharing
    a train prompt's text)."""
    if cfg.test_split is not None and cfg.test_split in tables:
        test = tables[cfg.test_split]
        records = read_records(test, PARAMETER, chat)
        texts = {_norm(r.prompt) for _, r in train}
        kept = [(f"{cfg.test_split}-{i}", r) for i, r in enumerate(records)]
        held = [(pid, r) for pid, r in kept if _norm(r.prompt) not in texts]
        return train, held, f"split '{cfg.test_split}'", len(kept) - len(held)
    if cfg.eval_fraction == 0:
        missing = f"no '{cfg.test_split}' split" if cfg.test_split else "no test split"
        raise ValueError(
            f"params: ingest.eval_fraction: must be > 0 when the source has {missing} (eval "
            f"prompts are then held out of the train split), got 0.0"
        )
    out = hold_out_by_text(
        [(pid, r.prompt) for pid, r in train],
        cfg.eval_fraction,
        f"{seed}-ingest-eval",
        "ingest.eval_fraction",
    )
    kept = [(pid, r) for pid, r in train if pid not in out]
    held = [(pid, r) for pid, r in train if pid in out]
    return kept, held, f"{cfg.eval_fraction} of split '{cfg.train_split}' held out", 0


def _eval_prompts(held: list[tuple[str, Record]], n: int, seed: int) -> list[dict]:
    """One PROMPTS row per distinct eval prompt text (its first row), a seeded subset of n."""
    first: dict[str, dict] = {}
    for pid, r in held:
        first.setdefault(_norm(r.prompt), {"prompt_id": pid, "prompt": r.prompt})
    return seeded_subset(list(first.values()), n, f"{seed}-ingest-eval-prompts")


def _pairs(record: Record, prompt_id: str, cfg: PairsConfig, seed: int) -> list[list[int]]:
    if record.pairs is not None:
        return record.pairs
    if cfg.strategy == "rso" and cfg.rso.n_select >= len(record.rewards):
        raise ValueError(
            f"params: pairs.rso.n_select: must be < the {len(record.rewards)} completions of "
            f"{record.where}, got {cfg.rso.n_select}"
        )
    pairs, _ = make_pairs(record.rewards, cfg, pair_rng(seed, prompt_id))
    return [list(p) for p in pairs]


def build_outputs(
    tables: dict[str, Table], cfg: IngestConfig, pairs_cfg: PairsConfig, tokenizer, seed: int
) -> Outputs:
    """Check every row, split prompts, pair ranked rows and tokenise (module docstring)."""
    if cfg.train_split not in tables:
        raise ValueError(
            f"params: ingest.train_split: the source has no '{cfg.train_split}' split "
            f"(splits: {', '.join(tables)})"
        )
    source, chat = tables[cfg.train_split], Chat(cfg.chat_template, tokenizer)
    records = read_records(source, PARAMETER, chat)
    rows = [(f"{cfg.train_split}-{i}", r) for i, r in enumerate(records)]
    rows = seeded_subset(rows, cfg.max_train_rows, f"{seed}-ingest-rows")
    train, held, eval_source, skipped = _eval_split(tables, rows, cfg, seed, chat)
    eval_prompts = _eval_prompts(held, cfg.n_eval_prompts, seed)
    if not eval_prompts:
        raise ValueError(
            f"{PARAMETER}: no eval prompt left: every prompt of {eval_source} is also a train "
            f"prompt"
        )
    val = hold_out_by_text(
        [(pid, r.prompt) for pid, r in train],
        pairs_cfg.val_fraction,
        f"{seed}-pairs-val",
        "pairs.val_fraction",
    )
    ids = tokenize_records([r for _, r in train], tokenizer)
    preferences, dropped = [], 0
    for (pid, record), completion_ids in zip(train, ids):
        pairs = _pairs(record, pid, pairs_cfg, seed)
        if not pairs:
            dropped += 1
            continue
        row = {
            "prompt_id": pid,
            "prompt": record.prompt,
            "completions": record.completions,
            "completion_ids": completion_ids,
            "finished": [True] * len(completion_ids),
            "rewards": record.rewards,
            "pairs": pairs,
            "split": "val" if pid in val else "train",
        }
        preferences.append(check_row(row, PREFERENCES, record.where))
    counts = {
        s: sum(len(r["pairs"]) for r in preferences if r["split"] == s) for s in ("train", "val")
    }
    if counts["train"] == 0:
        raise ValueError(
            f"{PARAMETER}: no train pair left in {source.name} ({dropped} row(s) without a "
            f"pair: tied rewards; lower pairs.val_fraction if the pairs went to validation)"
        )
    texts = {
        s: {_norm(r["prompt"]) for r in preferences if r["split"] == s} for s in ("train", "val")
    }
    eval_texts = {_norm(p["prompt"]) for p in eval_prompts}
    lengths = [len(c) for r in preferences for c in r["completion_ids"]]
    used = [source, *([tables[cfg.test_split]] if cfg.test_split in tables else [])]
    conversational = any(t.format in CONVERSATIONAL for t in used)
    metrics = {
        "format": source.format,
        **({"chat_template": chat.name} if conversational else {}),
        "source_rows": len(records),
        "rows": len(rows),
        "rows_without_pairs": dropped,
        "eval_source": eval_source,
        "test_rows_sharing_train_text": skipped,
        **{
            s: {"prompts": sum(r["split"] == s for r in preferences), "pairs": counts[s]}
            for s in ("train", "val")
        },
        "eval_prompts": len(eval_prompts),
        "prompt_texts": {**{s: len(t) for s, t in texts.items()}, "eval": len(eval_texts)},
        "val_texts_in_train": len(texts["val"] & texts["train"]),
        "eval_texts_in_train": len(eval_texts & (texts["train"] | texts["val"])),
        "mean_completion_tokens": round(fmean(lengths), 4),
    }
    prepared = {
        "train": [{"text": r.prompt + _best(r), "label": 1} for pid, r in train if pid not in val],
        "test": [{"text": r.prompt + _best(r), "label": 1} for _, r in held],
    }
    return Outputs(
        preferences,
        [{"prompt_id": pid, "prompt": r.prompt} for pid, r in train],
        eval_prompts,
        prepared,
        metrics,
    )
