"""Small shared helpers: atomic outputs, seeded subsets, hub ids, error summaries, timings."""

from __future__ import annotations

import json
import os

import pytest

from stages.lib.common import (
    atomic_path,
    first_line,
    is_hub_id,
    resolve_path,
    seed_everything,
    seeded_subset,
    write_json,
    write_jsonl,
    write_timings,
)


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_path_folders(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.bin").write_text("old")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.bin"]


def test_write_json_and_jsonl(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": 0.5})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 0.5,\n  "b": 1\n}\n'
    write_jsonl(tmp_path / "r.jsonl", [{"x": "é"}, {"x": 2}])
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"x": "é"}, {"x": 2}] and "é" in lines[0]


def test_seeded_subset_is_seeded_ordered_and_complete_when_large():
    items = list(range(100))
    a, b = seeded_subset(items, 10, "0-x"), seeded_subset(items, 10, "0-x")
    assert a == b == sorted(a) and len(set(a)) == 10
    assert seeded_subset(items, 10, "1-x") != a
    assert seeded_subset(items, None, "0-x") == items == seeded_subset(items, 100, "0-x")


def test_seeded_subset_matches_the_historic_draw():
    """The draw every stage made before this helper existed (so results do not move)."""
    import random

    items = [f"t{i}" for i in range(50)]
    keep = random.Random("7-sft-texts").sample(range(50), 12)
    assert seeded_subset(items, 12, "7-sft-texts") == [items[i] for i in sorted(keep)]


@pytest.mark.parametrize(
    ("name", "hub"),
    [
        ("gpt2", True),
        ("lvwerra/gpt2-imdb", True),
        ("./models/sft", False),
        ("/abs", False),
        ("~/m", False),
        ("$HOME/m", False),
        ("a/b/c", False),
        ("", False),
    ],
)
def test_is_hub_id(name, hub):
    assert is_hub_id(name) is hub


def test_first_line():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("x" * 500), limit=10) == "x" * 10


def test_resolve_path_expands_user_and_vars(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    assert str(resolve_path("$DATA_ROOT/imdb")) == "/data/imdb"
    assert str(resolve_path("~/x")) == os.path.expanduser("~/x")


def test_seed_everything_makes_torch_repeatable():
    import torch

    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_write_timings_goes_to_the_ignored_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_timings("align-dpo", {"wall_s": 1.234567})
    assert json.loads((tmp_path / "logs/timings/align-dpo.json").read_text()) == {"wall_s": 1.23}
