"""Row contracts (:mod:`stages.lib.contracts`): one-line errors naming ``file:line`` and the
field, and the reference file matched against the preferences row by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.lib.common import write_jsonl
from stages.lib.contracts import (
    PREFERENCES,
    PREPARED,
    PROMPTS,
    REFERENCE,
    SAMPLES,
    SCORED,
    check_eos,
    check_row,
    read_reference,
    read_rows,
)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _sample(**kw) -> dict:
    return {
        "prompt_id": "train-0",
        "prompt": "The film",
        "completions": [" a", " b"],
        "completion_ids": [[7, 0], [8]],
        "finished": [True, False],
        **kw,
    }


def _scored(**kw) -> dict:
    return _sample(**{"rewards": [0.5, -1], **kw})


def test_read_rows_returns_rows_and_skips_blank_lines(tmp_path):
    path = _write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt_id": "a", "prompt": "x"}),
            "",
            json.dumps({"prompt_id": "b", "prompt": "y"}),
        ],
    )
    assert read_rows(path, PROMPTS) == [
        {"prompt_id": "a", "prompt": "x"},
        {"prompt_id": "b", "prompt": "y"},
    ]


@pytest.mark.parametrize(
    "lines, contract, message",
    [
        (
            ['{"prompt_id": "a", "prompt": "x"}', '{"prompt_id": "b"}'],
            PROMPTS,
            "rows.jsonl:2: missing field 'prompt' (prompt)",
        ),
        (
            ['{"prompt_id": "a", "prompt": "x"}', "{not json"],
            PROMPTS,
            "rows.jsonl:2: not valid JSON",
        ),
        (
            ['{"text": "x", "label": "1"}'],
            PREPARED,
            "rows.jsonl:1: field 'label' has type str, expected int",
        ),
        (
            ['{"text": "x", "label": true}'],
            PREPARED,
            "rows.jsonl:1: field 'label' has type bool, expected int",
        ),
        (['{"text": "x", "label": 2}'], PREPARED, "rows.jsonl:1: label must be 0 or 1, got 2"),
        (["[1, 2]"], PROMPTS, "rows.jsonl:1: expected a JSON object (prompt)"),
        (
            [json.dumps(_sample(completions=[]))],
            SAMPLES,
            "rows.jsonl:1: completions must be a non-empty list of strings",
        ),
        (
            ['{"prompt_id": "a", "prompt": "x", "completions": [" a"], "finished": [true]}'],
            SAMPLES,
            "rows.jsonl:1: missing field 'completion_ids' (samples)",
        ),
        (
            [json.dumps(_sample(completion_ids=[[7, 0]]))],
            SAMPLES,
            "rows.jsonl:1: completion_ids has 1 entries for 2 completions",
        ),
        (
            [json.dumps(_sample(completion_ids=[[7, -1], [8]]))],
            SAMPLES,
            "rows.jsonl:1: completion_ids must hold one list of token ids (integers >= 0) per",
        ),
        (
            [json.dumps(_sample(completion_ids=[[7, 1.0], [8]]))],
            SAMPLES,
            "rows.jsonl:1: completion_ids must hold one list of token ids",
        ),
        (
            [json.dumps(_sample(completion_ids=[[7, True], [8]]))],
            SAMPLES,
            "rows.jsonl:1: completion_ids must hold one list of token ids",
        ),
        (
            [json.dumps(_sample(completion_ids=[" a", [8]]))],
            SAMPLES,
            "rows.jsonl:1: completion_ids must hold one list of token ids",
        ),
        (
            [json.dumps(_sample(finished=[True]))],
            SAMPLES,
            "rows.jsonl:1: finished must hold 2 booleans, one per completion",
        ),
        (
            [json.dumps(_sample(finished=[1, 0]))],
            SAMPLES,
            "rows.jsonl:1: finished must hold 2 booleans, one per completion",
        ),
        (
            [json.dumps(_sample(completion_ids=[[], [8]]))],
            SAMPLES,
            "rows.jsonl:1: completion 0 is finished but has no token ids (its EOS is missing)",
        ),
        (
            [json.dumps(_scored(completion_ids=[[7, 0]]))],
            SCORED,
            "rows.jsonl:1: completion_ids has 1 entries for 2 completions",
        ),
        (
            [json.dumps(_scored(finished=[True, None], pairs=[[0, 1]], split="train"))],
            PREFERENCES,
            "rows.jsonl:1: finished must hold 2 booleans",
        ),
        (
            [json.dumps(_scored(rewards=[1.0]))],
            SCORED,
            "rows.jsonl:1: rewards has 1 values for 2 completions",
        ),
        (
            [json.dumps(_scored(gold=[1.0, "x"]))],
            SCORED,
            "rows.jsonl:1: gold must hold finite numbers",
        ),
        (
            [json.dumps(_scored(pairs=[[0, 0]], split="train"))],
            PREFERENCES,
            "rows.jsonl:1: pairs entry [0, 0] must be two distinct completion indices below 2",
        ),
        (
            [json.dumps(_scored(pairs=[[0, 2]], split="train"))],
            PREFERENCES,
            "rows.jsonl:1: pairs entry [0, 2] must be two distinct completion indices below 2",
        ),
        (
            [json.dumps(_scored(pairs=[[1, 0]]))],
            PREFERENCES,
            "rows.jsonl:1: missing field 'split' (preferences)",
        ),
        (
            [json.dumps(_scored(pairs=[[0, 1], [1, 0]], split="train"))],  # rewards 0.5, -1
            PREFERENCES,
            "rows.jsonl:1: pairs entry [1, 0]: rewards[1] = -1 must be above rewards[0] = 0.5 "
            "(the winner comes first; ties are never pairs)",
        ),
        (
            [json.dumps(_scored(rewards=[1.0, 1.0], pairs=[[0, 1]], split="train"))],
            PREFERENCES,
            "rows.jsonl:1: pairs entry [0, 1]: rewards[0] = 1.0 must be above rewards[1] = 1.0",
        ),
    ],
)
def test_read_rows_errors_name_file_line_and_field(tmp_path, lines, contract, message):
    path = _write_lines(tmp_path / "rows.jsonl", lines)
    with pytest.raises(ValueError) as err:
        read_rows(path, contract)
    text = str(err.value)
    assert text.startswith(f"{tmp_path}/{message}") and "\n" not in text, text


def test_read_rows_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: file not found \(prompt\)"):
        read_rows(tmp_path / "nope.jsonl", PROMPTS)
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows \(samples\)"):
        read_rows(_write_lines(tmp_path / "empty.jsonl", ["", " "]), SAMPLES)


def test_sample_rows_carry_ids_through_scored_and_preferences():
    row = _sample(completion_ids=[[7, 0], []], finished=[True, False])  # an empty cut completion
    assert check_row(row, SAMPLES, "x") is row
    scored = {**row, "rewards": [0.0, 1.0]}
    assert check_row(scored, SCORED, "x") is scored
    assert check_row({**scored, "pairs": [[1, 0]], "split": "val"}, PREFERENCES, "x")
    for contract in (SCORED, PREFERENCES):  # the sample fields are required downstream too
        with pytest.raises(ValueError, match="missing field 'finished'"):
            check_row(
                {k: v for k, v in _scored(pairs=[], split="train").items() if k != "finished"},
                contract,
                "x",
            )


def test_optional_fields_and_int_as_float():
    row = _scored()
    assert check_row(row, SCORED, "x") is row  # no gold, an int reward: fine
    assert check_row(_scored(gold=[0, 1.5]), SCORED, "x")["gold"] == [0, 1.5]
    with pytest.raises(ValueError, match="field 'gold' has type dict, expected list"):
        check_row(_scored(gold={}), SCORED, "x")


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"prompt_id": "a", "logps": [0.0, -1.0], "n_tokens": [1]}, "logps has 2 values"),
        ({"prompt_id": "a", "logps": [], "n_tokens": []}, "logps has 0 values"),
        ({"prompt_id": "a", "logps": [float("nan")], "n_tokens": [1]}, "logps must hold finite"),
        ({"prompt_id": "a", "logps": [True], "n_tokens": [1]}, "logps must hold finite"),
        ({"prompt_id": "a", "logps": [-1.0], "n_tokens": [-1]}, "n_tokens must hold integers >= 0"),
        ({"prompt_id": "a", "logps": [-1.0], "n_tokens": [1.0]}, "n_tokens must hold integers"),
        ({"prompt_id": "a", "logps": [-1.0]}, "missing field 'n_tokens' (reference log-probs)"),
    ],
)
def test_reference_contract(row, needle):
    with pytest.raises(ValueError) as err:
        check_row(row, REFERENCE, "data/reference.jsonl:1")
    assert str(err.value).startswith(f"data/reference.jsonl:1: {needle}"), str(err.value)


def _preferences(n: int = 3) -> list[dict]:
    return [_scored(prompt_id=f"train-{i}", pairs=[[0, 1]], split="train") for i in range(n)]


def _references(prefs: list[dict]) -> list[dict]:
    return [
        {
            "prompt_id": p["prompt_id"],
            "logps": [-1.0] * len(p["completions"]),
            "n_tokens": [1] * len(p["completions"]),
        }
        for p in prefs
    ]


def test_read_reference_matches_rows(tmp_path):
    prefs = _preferences()
    write_jsonl(tmp_path / "ref.jsonl", _references(prefs))
    assert read_reference(tmp_path / "ref.jsonl", prefs) == _references(prefs)


def test_read_reference_mismatches(tmp_path):
    prefs = _preferences()
    path = tmp_path / "ref.jsonl"
    write_jsonl(path, _references(prefs)[:2])
    with pytest.raises(
        ValueError,
        match=r"ref\.jsonl: 2 rows for 3 preferences rows \(re-run "
        r"the reference stage\)",
    ):
        read_reference(path, prefs)
    write_jsonl(path, _references(prefs[1:] + prefs[:1]))
    with pytest.raises(
        ValueError,
        match=r"ref\.jsonl:1: row 'train-1' with 2 log-probs does not "
        r"match preferences row 'train-0' with 2 completions",
    ):
        read_reference(path, prefs)
    refs = _references(prefs)
    refs[2] = {**refs[2], "logps": [-1.0], "n_tokens": [1]}
    write_jsonl(path, refs)
    with pytest.raises(ValueError, match=r"ref\.jsonl:3: row 'train-2' with 1 log-probs"):
        read_reference(path, prefs)
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_reference(tmp_path / "none.jsonl", prefs)


def test_evaluation_rows_without_rewards():
    """`evaluate --no-reward` writes no rewards: the row is still checked, against its
    entropies."""
    from stages.lib.contracts import EVALUATION

    row = {"prompt_id": "test-1", "entropy": [2.0, 2.5], "n_generated": [3, 4], "logp": [-1, -2]}
    assert check_row(row, EVALUATION, "f:1") == row
    with pytest.raises(ValueError, match=r"^f:1: logp has 1 values for 2 completions$"):
        check_row({**row, "logp": [-1.0]}, EVALUATION, "f:1")
    with pytest.raises(ValueError, match=r"^f:1: entropy must hold at least one sample$"):
        check_row({**row, "entropy": [], "n_generated": [], "logp": []}, EVALUATION, "f:1")
    with pytest.raises(ValueError, match=r"^f:1: entropy has 1 values for 2 completions$"):
        check_row({**row, "rewards": [1.0, 2.0], "entropy": [1.0]}, EVALUATION, "f:1")


# ------------------------------------------------------------------------------ EOS and finished


class _Tokenizer:
    """What :func:`check_eos` reads of a tokenizer: its EOS id and vocabulary size."""

    eos_token_id = 0

    def __len__(self) -> int:
        return 10


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"finished": [False, True]},
            "completion 0: field 'finished' is false but its last id is EOS (0)",
        ),
        (
            {"finished": [True, True]},
            "completion 1: field 'finished' is true but its last id 8 is not EOS (0)",
        ),
        (
            {"finished": [True, True], "completion_ids": [[7, 0], []]},
            "completion 1: field 'finished' is true but it has no ids, not even EOS (0)",
        ),
        (
            {"completion_ids": [[0, 7, 0], [8]]},
            "completion 0: field 'completion_ids' holds EOS (0) before its last id",
        ),
        (
            {"completion_ids": [[7, 0], [0, 8]]},
            "completion 1: field 'completion_ids' holds EOS (0) before its last id",
        ),
        (
            {"completion_ids": [[7, 0], [10]]},
            "completion 1: field 'completion_ids' holds token id 10, outside the 10-token vocabulary",
        ),
    ],
)
def test_check_eos_names_file_row_completion_and_field(change, message):
    """EOS is the last id exactly when ``finished`` is true (no EOS before the end), checked
    with the tokenizer; the error names the file, the row, the completion and the field."""
    good = _preferences(2)
    assert check_eos(good, "data/preferences.jsonl", _Tokenizer()) is good
    rows = [good[0], {**good[1], **change}]
    with pytest.raises(ValueError) as err:
        check_eos(rows, "data/preferences.jsonl", _Tokenizer())
    text = str(err.value)
    assert text.startswith(f"data/preferences.jsonl: row 2 ('train-1'), {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize(
    "stage",
    ["reference", "align"],
)
def test_every_preferences_reader_checks_eos_against_finished(stage, tmp_path, monkeypatch):
    """A preferences file whose ``finished`` flags were all flipped is refused by every stage
    that reads it, with the located error of :func:`check_eos`, before anything is written."""
    from test_align import _params, make_micro_project

    from stages.align import align
    from stages.reference import reference

    make_micro_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = Path("data/preferences.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, [{**r, "finished": [not f for f in r["finished"]]} for r in rows])
    reference_file = Path("data/reference.jsonl").read_text()
    assert rows[0]["finished"][0] is False and rows[0]["completion_ids"][0][-1] != 0  # EOS is 0
    run = {
        "reference": lambda: reference(_params(), progress=False),
        "align": lambda: align("dpo", _params(epochs=1)),
    }
    with pytest.raises(ValueError) as err:
        run[stage]()
    prefix = "align@dpo-0: " if stage == "align" else ""
    assert str(err.value) == (
        f"{prefix}data/preferences.jsonl: row 1 ('p0'), completion 0: field 'finished' is true "
        f"but its last id {rows[0]['completion_ids'][0][-1]} is not EOS (0)"
    )
    assert not Path("models/aligned").exists() and not Path("metrics").exists()
    assert Path("data/reference.jsonl").read_text() == reference_file  # not rewritten
