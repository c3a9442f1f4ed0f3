"""The ``prepare`` stage: sources, cleaning, prompts, metrics and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import build_app
from stages.lib.config import load_params
from stages.lib.contracts import PREPARED, PROMPTS, read_rows
from stages.prepare import clean_rows, clean_text, make_prompts, prepare

ROOT = Path(__file__).resolve().parents[1]

OUTPUTS = [
    "data/prepared/train.jsonl",
    "data/prepared/test.jsonl",
    "data/prompts/train.jsonl",
    "data/prompts/eval.jsonl",
    "metrics/prepare.json",
]


def _params(source: str = "synthetic", **data) -> dict:
    """The repository's params with a small ``data`` section (``source`` and ``data``
    overrides on top)."""
    params = load_params(ROOT / "params.yaml")
    params["data"].update(
        {
            "source": source,
            "synthetic": {"n_train": 300, "n_test": 100},
            "n_train_prompts": 50,
            "n_eval_prompts": 20,
        },
        **data,
    )
    return params


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "text": f"Review {i + offset} is <br /><br />quite   long and {'good' if i % 2 else 'bad'}.",
            "label": i % 2,
        }
        for i in range(n)
    ]


def _write(folder: Path, fmt: str, train: list[dict], test: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        frame = pd.DataFrame(rows)
        if fmt == "jsonl":
            frame.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
        elif fmt == "csv":
            frame.to_csv(folder / f"{split}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{split}.parquet")
    return folder


def _check_outputs(metrics: dict, n_train: int, n_eval: int) -> None:
    train = read_rows("data/prepared/train.jsonl", PREPARED)
    test = read_rows("data/prepared/test.jsonl", PREPARED)
    for row in train + test:
        assert "<br" not in row["text"] and "  " not in row["text"]
    prompts = read_rows("data/prompts/train.jsonl", PROMPTS)
    evals = read_rows("data/prompts/eval.jsonl", PROMPTS)
    assert len(prompts) == n_train and len(evals) == n_eval
    assert len({p["prompt_id"] for p in prompts}) == n_train
    train_texts = [r["text"] for r in train]
    test_texts = [r["text"] for r in test]
    for p in prompts:
        index = int(p["prompt_id"].split("-")[1])
        assert p["prompt_id"].startswith("train-") and train_texts[index].startswith(p["prompt"])
        assert len(p["prompt"].split()) == 4
    for p in evals:
        index = int(p["prompt_id"].split("-")[1])
        assert p["prompt_id"].startswith("test-") and test_texts[index].startswith(p["prompt"])
    assert metrics == json.loads(Path("metrics/prepare.json").read_text())
    assert metrics["prompts"]["train"] == n_train and metrics["prompts"]["eval"] == n_eval
    assert not {p["prompt"] for p in prompts} & {p["prompt"] for p in evals}  # held out by text
    assert metrics["prompts"]["train_distinct_texts"] == len({p["prompt"] for p in prompts})
    assert metrics["prompts"]["eval_distinct_texts"] == len({p["prompt"] for p in evals})
    assert metrics["train"]["rows"] == len(train)


def test_clean_text():
    assert clean_text("A  film.<br /><br />Great\tfun<br/>end ") == "A film. Great fun end"


def test_make_prompts_drops_short_reviews_and_is_seeded():
    rows = [{"text": "one two three", "label": 1}] + [
        {"text": f"a b c d e{i}", "label": 0} for i in range(5)
    ]
    prompts, dropped, excluded = make_prompts(rows, 3, 4, 0, "train", "data.n_train_prompts")
    assert dropped == 1 and excluded == 0 and len(prompts) == 3
    assert all(p["prompt"] == "a b c d" and p["prompt_id"] != "train-0" for p in prompts)
    assert prompts == make_prompts(rows, 3, 4, 0, "train", "data.n_train_prompts")[0]


def test_make_prompts_excludes_texts():
    rows = [{"text": f"a b c d{i % 3} e", "label": 0} for i in range(9)]
    prompts, _, excluded = make_prompts(
        rows, 3, 4, 0, "test", "data.n_eval_prompts", exclude={"a b c d0", "a b c d1"}
    )
    assert excluded == 6 and {p["prompt"] for p in prompts} == {"a b c d2"}
    with pytest.raises(
        ValueError,
        match=r"^params: data\.n_eval_prompts: must be <= 3 \(the test reviews with more than 4 "
        r"words whose prompt text is not a train prompt\), got 4$",
    ):
        make_prompts(rows, 4, 4, 0, "test", "data.n_eval_prompts", exclude={"a b c d0", "a b c d1"})


def test_prepare_synthetic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = prepare(_params())
    _check_outputs(metrics, 50, 20)
    # the synthetic reviews open with templates: some test reviews share a train prompt's text
    assert metrics["prompts"]["test_reviews_sharing_a_train_prompt"] > 0
    assert 0.4 <= metrics["train"]["positive_share"] <= 0.6
    first = Path("data/prompts/train.jsonl").read_text()
    prepare(_params())
    assert Path("data/prompts/train.jsonl").read_text() == first


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_prepare_local_folder(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    source = _write(tmp_path / "src", fmt, _rows(40), _rows(30, offset=100))
    metrics = prepare(_params(str(source), n_train_prompts=10, n_eval_prompts=5))
    _check_outputs(metrics, 10, 5)
    assert metrics["train"]["rows"] == 40 and metrics["test"]["rows"] == 30


def test_prepare_max_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _write(tmp_path / "src", "jsonl", _rows(40), _rows(30, offset=100))
    metrics = prepare(
        _params(
            str(source), n_train_prompts=10, n_eval_prompts=5, max_train_rows=20, max_test_rows=12
        )
    )
    assert metrics["train"]["rows"] == 20 and metrics["test"]["rows"] == 12


def test_prepare_real_imdb(tmp_path, monkeypatch, imdb_dir):
    monkeypatch.chdir(tmp_path)
    metrics = prepare(_params(str(imdb_dir), n_train_prompts=500, n_eval_prompts=200))
    _check_outputs(metrics, 500, 200)
    assert metrics["train"]["rows"] == 24904 and metrics["test"]["rows"] == 24678


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": "synthetc"}, "data.source: cannot load 'synthetc'"),
        ({"source": "./no/such/folder"}, "data.source: './no/such/folder' is not"),
        ({"source": ""}, "params: data.source: must be a non-empty string, got ''"),
        ({"prompt_words": 0}, "params: data.prompt_words: must be >= 1, got 0"),
        (
            {"n_train_prompts": 10**6},
            "params: data.n_train_prompts: must be <= 300 (the train "
            "reviews with more than 4 words), got 1000000",
        ),
        ({"n_eval_prompts": "ten"}, "params: data.n_eval_prompts: must be int, got 'ten'"),
        ({"max_test_rows": 0}, "params: data.max_test_rows: must be null or >= 1, got 0"),
        (
            {"synthetic": {"n_train": 0, "n_test": 5}},
            "params: data.synthetic.n_train: must be >= 1, got 0",
        ),
        ({"prompt_word": 4}, "params: data.prompt_word: not a known key (known: source, "),
    ],
)
def test_bad_params(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        prepare(
            _params(
                **{k: v for k, v in change.items() if k != "source"},
                **({"source": change["source"]} if "source" in change else {}),
            )
        )
    assert not any(Path(p).exists() for p in OUTPUTS)


def test_eval_prompts_cannot_avoid_train_texts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = [{"text": f"The same opening words, review {i}.", "label": i % 2} for i in range(10)]
    source = _write(tmp_path / "src", "jsonl", same, same[:3] + _rows(2))
    with pytest.raises(
        ValueError,
        match=r"^params: data\.n_eval_prompts: must be <= 2 \(the test reviews with more than "
        r"4 words whose prompt text is not a train prompt\), got 3$",
    ):
        prepare(_params(str(source), n_train_prompts=1, n_eval_prompts=3))
    assert not any(Path(p).exists() for p in OUTPUTS)
    metrics = prepare(_params(str(source), n_train_prompts=1, n_eval_prompts=2))
    assert metrics["prompts"]["test_reviews_sharing_a_train_prompt"] == 3


@pytest.mark.parametrize(
    "train, test, message",
    [
        ([{"txt": "a b c d e", "label": 1}], _rows(3), r"train\.jsonl:1: no 'text' field"),
        ([{"text": "a b c d e", "y": 1}], _rows(3), r"train\.jsonl:1: no 'label' field"),
        ([{"text": "a b c d e", "label": 2}], _rows(3), "row 1: label must be 0 or 1"),
        ([{"text": "<br />", "label": 1}], _rows(3), "split 'train' is empty"),
    ],
)
def test_bad_files(tmp_path, monkeypatch, train, test, message):
    monkeypatch.chdir(tmp_path)
    source = _write(tmp_path / "src", "jsonl", train, test)
    with pytest.raises(ValueError, match=message):
        prepare(_params(str(source), n_train_prompts=1, n_eval_prompts=1))
    assert not any(Path(p).exists() for p in OUTPUTS)


def test_missing_split_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _write(tmp_path / "src", "jsonl", _rows(5), _rows(5))
    (source / "test.jsonl").unlink()
    with pytest.raises(ValueError, match="has no test.jsonl"):
        prepare(_params(str(source)))


def test_missing_section_or_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^params: section 'data' is missing$"):
        prepare({"seed": 0})
    with pytest.raises(ValueError, match=r"^params: seed: is missing"):
        prepare({"data": _params()["data"]})
    assert not any(Path(p).exists() for p in OUTPUTS)


def test_clean_rows_keeps_a_seeded_subset_in_order():
    rows = [{"text": f"review {i} <br />", "label": i % 2} for i in range(30)]
    kept, empty = clean_rows(rows, "train", 10, 0)
    assert empty == 0 and len(kept) == 10
    ids = [int(r["text"].split()[1]) for r in kept]
    assert ids == sorted(ids) and kept == clean_rows(rows, "train", 10, 0)[0]
    assert kept != clean_rows(rows, "train", 10, 1)[0]  # the seed picks the subset
    assert clean_rows(rows, "train", 30, 0)[0] == clean_rows(rows, "train", None, 0)[0]


def test_cli_help():
    result = CliRunner().invoke(build_app("prepare"), ["prepare", "--help"])
    assert result.exit_code == 0 and "--params" in result.output


def test_cli_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(_params(prompt_words=0)))
    result = CliRunner().invoke(build_app("prepare"), ["prepare"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: params: data.prompt_words: must be >= 1, got 0"
    assert not Path("data").exists()


def _bad_source(folder: Path, name: str, content: bytes) -> Path:
    """A source folder with a valid test.jsonl and ``name`` holding ``content``."""
    _write(folder, "jsonl", _rows(3), _rows(3))
    (folder / "train.jsonl").unlink()
    (folder / name).write_bytes(content)
    if name.endswith((".csv", ".parquet")):  # train and test share one format
        test = pd.DataFrame(_rows(3))
        (folder / "test.jsonl").unlink()
        if name.endswith(".csv"):
            test.to_csv(folder / "test.csv", index=False)
        else:
            test.to_parquet(folder / "test.parquet")
    return folder


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train.jsonl", b"", "train.jsonl is empty$"),
        ("train.jsonl", b"\n  \n", "train.jsonl is empty$"),
        (
            "train.jsonl",
            b'{"text": "a b c d e", "label": 1}\n{"text": "a b c d e", "label": 1\n',
            r"train\.jsonl:2: not valid JSON \(Expecting ',' delimiter",
        ),
        ("train.jsonl", b'{"text": "a b c d e", "label": 1}\n[1, 2]\n', "train.jsonl:2: a row"),
        ("train.jsonl", b'{"text": "caf\xe9 b c d", "label": 1}\n', r"train\.jsonl:1: not UTF-8"),
        ("train.csv", b"text,label\n", r"train\.csv is empty \(a header, no rows\)"),
        (
            "train.csv",
            b'text,label\n"a b c d e",1\n"a b c d e"\n',
            r"train\.csv:3: 1 field\(s\) where the header has 2 \(no 'label'\)",
        ),
        ("train.csv", b"review,label\nx,1\n", r"train\.csv: no 'text' column \(header: review"),
        ("train.parquet", b"PAR1 not really parquet", r"train\.parquet: not a readable parquet"),
        ("train.parquet", b"", r"train\.parquet is empty$"),
    ],
)
def test_bad_source_file_is_located(tmp_path, monkeypatch, name, content, message):
    monkeypatch.chdir(tmp_path)
    source = _bad_source(tmp_path / "src", name, content)
    with pytest.raises(ValueError) as err:
        prepare(_params(str(source), n_train_prompts=1, n_eval_prompts=1))
    text = str(err.value)
    assert text.startswith(f"data.source: {source / name}") and "\n" not in text
    assert re.search(message, text), text
    assert not any(Path(p).exists() for p in OUTPUTS)
    assert not Path("data").exists() and not Path("metrics").exists()
