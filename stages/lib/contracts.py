"""Data contracts: one per file that flows between stages, asserted whenever a stage reads it.

Each contract names the fields a JSON Lines row must have, their types, and a row check.
``read_rows(path, CONTRACT)`` raises a one-line ``ValueError`` naming the file, the row
(1-based line number) and the missing or bad field::

    rows = read_rows("data/prompts/train.jsonl", PROMPTS)
    reference = read_reference("data/reference.jsonl", preferences)   # REFERENCE, row-matched
    check_eos(preferences, "data/preferences.jsonl", tokenizer)       # EOS last iff finished

A preference pair ``[w, l]`` needs ``rewards[w] > rewards[l]`` (ties are never pairs).

A missing file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Check = Callable[[dict], "str | None"]


@dataclass(frozen=True)
class Contract:
    """Fields (name -> type or tuple of types) plus an optional row check returning an error."""

    name: str
    fields: dict[str, type | tuple[type, ...]]
    check: Check | None = None
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)


def _is_type(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _label(row: dict) -> str | None:
    return None if row["label"] in (0, 1) else f"label must be 0 or 1, got {row['label']!r}"


def _strings(row: dict, key: str) -> str | None:
    items = row[key]
    if not items or not all(isinstance(c, str) for c in items):
        return f"{key} must be a non-empty list of strings"
    return None


def _floats(row: dict, key: str, n: int) -> str | None:
    values = row[key]
    if len(values) != n:
        return f"{key} has {len(values)} values for {n} completions"
    if not all(_is_type(v, float) and math.isfinite(v) for v in values):
        return f"{key} must hold finite numbers"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _generated(row: dict) -> str | None:
    """``completion_ids`` (one list of token ids >= 0 per completion) and ``finished`` (one bool
    per completion; a finished completion holds at least its EOS). That the last id is the
    tokenizer's EOS exactly when ``finished`` is checked where the tokenizer is known
    (:func:`check_eos`)."""
    n, ids, finished = len(row["completions"]), row["completion_ids"], row["finished"]
    if len(ids) != n:
        return f"completion_ids has {len(ids)} entries for {n} completions"
    if not all(isinstance(c, list) and all(_is_int(t) and t >= 0 for t in c) for c in ids):
        return "completion_ids must hold one list of token ids (integers >= 0) per completion"
    if len(finished) != n or not all(isinstance(f, bool) for f in finished):
        return f"finished must hold {n} booleans, one per completion"
    for k, (c, done) in enumerate(zip(ids, finished)):
        if done and not c:
            return f"completion {k} is finished but has no token ids (its EOS is missing)"
    return None


def _samples(row: dict) -> str | None:
    return _strings(row, "completions") or _generated(row)


def _scored(row: dict) -> str | None:
    n = len(row["completions"])
    return (
        _samples(row)
        or _floats(row, "rewards", n)
        or (_floats(row, "gold", n) if "gold" in row else None)
    )


def _preferences(row: dict) -> str | None:
    err = _scored(row)
    if err:
        return err
    n = len(row["completions"])
    for pair in row["pairs"]:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(_is_type(i, int) for i in pair)
            or not all(0 <= i < n for i in pair)
            or pair[0] == pair[1]
        ):
            return f"pairs entry {pair!r} must be two distinct completion indices below {n}"
    rewards = row["rewards"]
    for w, l in row["pairs"]:
        if not rewards[w] > rewards[l]:
            return (
                f"pairs entry {[w, l]!r}: rewards[{w}] = {rewards[w]!r} must be above "
                f"rewards[{l}] = {rewards[l]!r} (the winner comes first; ties are never pairs)"
            )
    return None


def _evaluation(row: dict) -> str | None:
    key = "rewards" if "rewards" in row else "entropy"  # no rewards without a reward model
    n = len(row[key])
    if n < 1:
        return f"{key} must hold at least one sample"
    for key in ("rewards", "entropy", "logp", "logp_sft", "gold"):
        err = _floats(row, key, n) if key in row else None
        if err:
            return err
    if len(row["n_generated"]) != n or not all(_is_int(c) and c >= 0 for c in row["n_generated"]):
        return f"n_generated must hold {n} integers >= 0"
    return None


def _reference(row: dict) -> str | None:
    logps, n_tokens = row["logps"], row["n_tokens"]
    if not logps or len(logps) != len(n_tokens):
        return f"logps has {len(logps)} values and n_tokens {len(n_tokens)}; expected K each"
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in logps
    ):
        return "logps must hold finite numbers"
    if not all(_is_int(n) and n >= 0 for n in n_tokens):
        return "n_tokens must hold integers >= 0"
    return None


#: ``data/prepared/{train,test}.jsonl``: a cleaned review and its label (1 = positive).
PREPARED = Contract("prepared review", {"text": str, "label": int}, _label)
#: ``data/prompts/{train,eval}.jsonl``: a prompt (first words of a review) and its stable id.
PROMPTS = Contract("prompt", {"prompt_id": str, "prompt": str})
#: The fields of a sample row: K completions of a prompt, each as its decoded text (special
#: tokens dropped; what the reward model reads), the token ids the policy generated
#: (``completion_ids``, EOS last when it emitted one; what training and the reference score) and
#: whether it ended with EOS (``finished``).
_SAMPLE_FIELDS = {
    "prompt_id": str,
    "prompt": str,
    "completions": list,
    "completion_ids": list,
    "finished": list,
}
#: ``data/samples.jsonl``: K sampled completions (without the prompt) per prompt.
SAMPLES = Contract("samples", _SAMPLE_FIELDS, _samples)
#: ``data/scored.jsonl``: samples plus one reward (and gold score, if any) per completion.
SCORED = Contract(
    "scored samples", {**_SAMPLE_FIELDS, "rewards": list}, _scored, optional={"gold": list}
)
#: ``data/preferences.jsonl``: scored samples plus ``pairs`` [[w, l], ...], w preferred.
PREFERENCES = Contract(
    "preferences",
    {**_SAMPLE_FIELDS, "rewards": list, "pairs": list, "split": str},
    _preferences,
    optional={"gold": list},
)
#: ``data/eval/<policy>/seed-<s>.jsonl`` (written by ``evaluate``, read by ``report``): per eval
#: prompt, each sample's reward (and gold), mean entropy per generated token, generated
#: positions (EOS included) and log-prob under the policy (and under the SFT policy). Without a
#: reward model (``evaluate --no-reward``) a row has no ``rewards``.
EVALUATION = Contract(
    "evaluation samples",
    {"prompt_id": str, "entropy": list, "n_generated": list, "logp": list},
    _evaluation,
    optional={"rewards": list, "gold": list, "logp_sft": list},
)
#: ``data/reference.jsonl``: per preferences row, the SFT log-prob (summed over completion
#: tokens, EOS included when generated) and token count of each of its K completions, in the
#: preferences order.
REFERENCE = Contract(
    "reference log-probs", {"prompt_id": str, "logps": list, "n_tokens": list}, _reference
)


def check_row(row: object, contract: Contract, where: str) -> dict:
    """Assert one row against a contract; ``where`` is ``file:line`` for the message."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object ({contract.name})")
    for name, kind in {**contract.fields, **contract.optional}.items():
        if name not in row:
            if name in contract.optional:
                continue
            raise ValueError(f"{where}: missing field '{name}' ({contract.name})")
        if not _is_type(row[name], kind):
            raise ValueError(
                f"{where}: field '{name}' has type {type(row[name]).__name__}, "
                f"expected {getattr(kind, '__name__', kind)}"
            )
    err = contract.check(row) if contract.check else None
    if err:
        raise ValueError(f"{where}: {err}")
    return row


def read_rows(path: str | Path, contract: Contract) -> list[dict]:
    """Read a JSON Lines file and assert every row against ``contract``; empty files fail."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found ({contract.name})")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            rows.append(check_row(row, contract, f"{path}:{lineno}"))
    if not rows:
        raise ValueError(f"{path}: no rows ({contract.name})")
    return rows


def read_reference(path: str | Path, preferences: list[dict]) -> list[dict]:
    """Read ``data/reference.jsonl`` and assert it matches ``preferences`` row by row (same
    prompt ids in the same order, one value per completion)."""
    rows = read_rows(path, REFERENCE)
    if len(rows) != len(preferences):
        raise ValueError(
            f"{path}: {len(rows)} rows for {len(preferences)} preferences rows "
            f"(re-run the reference stage)"
        )
    for n, (ref, pref) in enumerate(zip(rows, preferences), start=1):
        if ref["prompt_id"] != pref["prompt_id"] or len(ref["logps"]) != len(pref["completions"]):
            raise ValueError(
                f"{path}:{n}: row {ref['prompt_id']!r} with {len(ref['logps'])} "
                f"log-probs does not match preferences row {pref['prompt_id']!r} "
                f"with {len(pref['completions'])} completions"
            )
    return rows


def check_eos(rows: list[dict], path: str | Path, tokenizer) -> list[dict]:
    """Assert what SAMPLES, SCORED and PREFERENCES rows (read from ``path``) cannot check
    without the policy's ``tokenizer``: every token id is inside its vocabulary and a
    completion's last id is EOS exactly when ``finished`` is true (no EOS anywhere else).
    Every stage that reads those rows with its tokenizer calls this; the one-line
    ``ValueError`` names the file, the row (1-based), the completion and the field."""
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    for n, row in enumerate(rows, start=1):
        for k, (ids, done) in enumerate(zip(row["completion_ids"], row["finished"])):
            where = f"{path}: row {n} ({row['prompt_id']!r}), completion {k}"
            if any(t >= vocab for t in ids):
                raise ValueError(
                    f"{where}: field 'completion_ids' holds token id {max(ids)}, outside the "
                    f"{vocab}-token vocabulary"
                )
            last = ids[-1] if ids else None
            if done and last != eos:
                got = f"its last id {last} is not" if ids else "it has no ids, not even"
                raise ValueError(f"{where}: field 'finished' is true but {got} EOS ({eos})")
            if not done and eos is not None and last == eos:
                raise ValueError(
                    f"{where}: field 'finished' is false but its last id is EOS ({eos})"
                )
            if eos is not None and eos in ids[:-1]:
                raise ValueError(
                    f"{where}: field 'completion_ids' holds EOS ({eos}) before its last id"
                )
    return rows


def _best_of_n(row: dict) -> str | None:
    n = len(row["completions"])
    err = _strings(row, "completions") or _floats(row, "rewards", n)
    return err or (_floats(row, "gold", n) if "gold" in row else None)


#: ``data/best_of_n/seed-<s>.jsonl`` (written by ``best-of-n``, read by ``frontier``): per eval
#: prompt, the SFT policy's n_max sampled completions and their rewards (and gold scores).
BEST_OF_N = Contract(
    "best-of-n draws",
    {"prompt_id": str, "prompt": str, "completions": list, "rewards": list},
    _best_of_n,
    optional={"gold": list},
)
