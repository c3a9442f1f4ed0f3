"""Shared plumbing for every stage: one-line errors, params, atomic outputs, seeding.

Every command reads ``params.yaml`` once, takes the sections it needs, and writes its outputs
through :func:`atomic_path`, so a failing stage never leaves a half-written file behind::

    from stages.common import StageError, load_params, atomic_path
    data = load_params("params.yaml")["data"]
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml


class StageError(Exception):
    """A user-facing error: the message is one line naming the parameter, file or row."""


def stage_command(fn: Callable) -> Callable:
    """Wrap a Typer command so a :class:`StageError` prints ``error: <msg>`` and exits 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import typer

        try:
            return fn(*args, **kwargs)
        except StageError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=1) from None

    return wrapper


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read the whole params file (a mapping of sections)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise StageError(f"{path}: expected a mapping of sections")
    return params


_MISSING = object()


def param(section: dict, dotted: str, kind: type | tuple[type, ...] | None = None,
          check: Callable[[Any], bool] | None = None, what: str = "", default: Any = _MISSING) -> Any:
    """Fetch ``section[dotted]`` (dotted is the full key, e.g. ``data.prompt_words``; its first
    component names the section and is skipped), checking its type and an optional predicate."""
    value: Any = section
    for key in dotted.split(".")[1:]:
        if not isinstance(value, dict) or key not in value:
            if default is not _MISSING:
                return default
            raise StageError(f"params: {dotted} is missing")
        value = value[key]
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise StageError(f"params: {dotted} must be {names}, got {value!r}")
    if check is not None and not check(value):
        raise StageError(f"params: {dotted} {what or 'is invalid'}, got {value!r}")
    return value


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
