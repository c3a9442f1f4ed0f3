"""Small helpers every stage uses: atomic outputs, seeding, seeded subsets, error summaries.

Stages write their outputs through :func:`atomic_path` (or :func:`write_json` /
:func:`write_jsonl`), so a failing stage never leaves a half-written file behind::

    from stages.lib.common import atomic_path, seeded_subset, write_json
    rows = seeded_subset(rows, 1000, f"{seed}-sft-texts")   # a seeded random subset, in order
    write_json("metrics/sft.json", {"perplexity": 12.3})
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar


def resolve_path(value: str) -> Path:
    """Expand ``~`` and ``$VARS`` in a path given as a parameter."""
    return Path(os.path.expanduser(os.path.expandvars(value)))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or folder); on success it replaces ``path``,
    on error it is removed, so readers never see a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write a small JSON document (metrics) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write JSON Lines atomically."""
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)


T = TypeVar("T")

#: A Hugging Face hub id: ``name`` or ``owner/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` looks like a hub id rather than a path (``./x``, ``/x``, ``~``, ``$X``)."""
    return not name.startswith((".", "/", "~", "$")) and bool(HUB_ID.match(name))


def prompt_text(text: str, words: int) -> str:
    """The prompt of a review: its first ``words`` whitespace-separated words, single-spaced."""
    return " ".join(text.split()[:words])


def seeded_subset(items: Sequence[T], limit: int | None, key: str) -> list[T]:
    """``limit`` items drawn at random under the seed string ``key``, kept in their order; all
    items when ``limit`` is None or not below ``len(items)``."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = random.Random(key).sample(range(len(items)), limit)
    return [items[i] for i in sorted(keep)]


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), cut at ``limit``."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def write_timings(stage: str, timings: dict[str, float]) -> None:
    """Write a stage's wall times to ``logs/timings/<stage>.json`` (git-ignored): timings never
    enter the tracked metrics or DVCLive logs, so re-running a stage leaves ``git status`` clean
    and ``dvc metrics diff`` empty."""
    from stages.lib.paths import timings_file

    write_json(timings_file(stage), {k: round(float(v), 2) for k, v in timings.items()})
