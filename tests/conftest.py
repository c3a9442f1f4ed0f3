"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: The real IMDB copy beside the repository (never copied into it); override with IMDB_DIR.
IMDB_DIR = Path(os.environ.get("IMDB_DIR", Path(__file__).resolve().parents[1] / ".." / "shared"
                               / "data" / "imdb"))


@pytest.fixture
def imdb_dir() -> Path:
    """The real IMDB folder, or a clean skip where it is absent."""
    if not (IMDB_DIR / "train.jsonl").is_file() or not (IMDB_DIR / "test.jsonl").is_file():
        pytest.skip(f"real IMDB copy not found at {IMDB_DIR} (set IMDB_DIR)")
    return IMDB_DIR.resolve()
