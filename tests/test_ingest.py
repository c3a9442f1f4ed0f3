"""The ``ingest`` stage: a trl-format or ranked dataset becomes the files sample/score/pairs would
have written (and reference and align run on them unchanged); bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.ingest import ingest, main
from stages.lib.config import load_params
from stages.lib.contracts import PREFERENCES, PREPARED, PROMPTS, read_rows

BYO = load_params(Path(__file__).resolve().parents[1] / "byo" / "params.yaml")
OUTPUTS = ("data", "metrics")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _params(policy: Path, **ingest_keys) -> dict:
    return {
        **BYO,
        "ingest": {**BYO["ingest"], "source": "prefs", **ingest_keys},
        "sft": {**BYO["sft"], "model": str(policy)},
    }


def _pairwise(n: int, prefix: str) -> list[dict]:
    return [
        {"prompt": f"{prefix} {i} was", "chosen": f" good {i}.", "rejected": f" bad {i}."}
        for i in range(n)
    ]


def test_writes_what_sample_score_pairs_would(tmp_path, monkeypatch, tiny_lm_dir):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(Path("prefs/train.jsonl"), _pairwise(30, "the film"))
    _write_jsonl(Path("prefs/test.jsonl"), _pairwise(8, "a movie"))
    out = ingest(_params(tiny_lm_dir))
    prefs = read_rows("data/preferences.jsonl", PREFERENCES)
    assert prefs == out.preferences and len(prefs) == 30
    assert len(read_rows("data/prompts/eval.jsonl", PROMPTS)) == 8
    assert len(read_rows("data/prompts/train.jsonl", PROMPTS)) == 30
    assert len(read_rows("data/prepared/train.jsonl", PREPARED)) == out.metrics["train"]["prompts"]
    assert len(read_rows("data/prepared/test.jsonl", PREPARED)) == 8
    exported = datasets.load_dataset("data/pairs-trl")
    assert len(exported["train"]) == out.metrics["train"]["pairs"]
    assert len(exported["test"]) == out.metrics["val"]["pairs"] == 3
    assert json.loads(Path("metrics/ingest.json").read_text()) == out.metrics


def _app():
    app = typer.Typer()
    app.command()(stage_command(main))
    app.command("noop")(lambda: None)
    return app


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p, rows: rows.__setitem__(3, {**rows[3], "rejected": rows[3]["chosen"]}),
            "error: ingest.source: prefs/train.jsonl:4: field 'rejected' is identical to 'chosen'",
        ),
        (
            lambda p, rows: rows.__setitem__(5, {**rows[5], "chosen": ""}),
            "error: ingest.source: prefs/train.jsonl:6: field 'chosen' is empty",
        ),
        (
            lambda p, rows: p["sft"].__setitem__("model", "tiny"),
            "error: params: sft.model: must be a pretrained policy",
        ),
        (
            lambda p, rows: p["ingest"].__setitem__("source", "./missing"),
            "error: ingest.source: './missing' is not an existing file or folder",
        ),
        (
            lambda p, rows: p["ingest"].__setitem__("eval_fraction", 1.5),
            "error: params: ingest.eval_fraction: must be in [0, 1), got 1.5",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch, tiny_lm_dir, edit, message
):
    monkeypatch.chdir(tmp_path)
    params, rows = _params(tiny_lm_dir), _pairwise(10, "the film")
    edit(params, rows)
    _write_jsonl(Path("prefs/train.jsonl"), rows)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(_app(), ["main"])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert not any(Path(d).exists() for d in OUTPUTS)


def test_ranked_rows_train_a_listwise_loss(tmp_path, monkeypatch, tiny_lm_dir, torch_one_thread):
    """Ranked rows keep all K completions and their rewards: reference scores every one and a
    Plackett-Luce variant trains on the full ranking, as on sampled rows."""
    from stages.align import align
    from stages.lib.modeling import load_causal_lm, save_pretrained
    from stages.reference import reference

    monkeypatch.chdir(tmp_path)
    rows = [
        {
            "prompt": f"the film {i} was",
            "completions": [f" good {i}.", f" fine {i}.", f" bad {i}."],
            "rewards": [2.0, 1.0, -1.0],
        }
        for i in range(24)
    ]
    _write_jsonl(Path("prefs/train.jsonl"), rows)
    params = _params(tiny_lm_dir, eval_fraction=0.2)
    params["seeds"] = [0]
    params["align"] = {
        "common": {**BYO["align"]["common"], "epochs": 1, "batch_prompts": 4, "eval_steps": 2},
        "variants": {"pl": {"loss": "plackett_luce", "divergence": "reverse_kl", "beta": 0.3}},
    }
    out = ingest(params)
    assert out.metrics["format"] == "ranked"
    assert all(len(r["completion_ids"]) == 3 and r["rewards"][0] == 2.0 for r in out.preferences)
    save_pretrained(*load_causal_lm(tiny_lm_dir), "models/sft")  # what sft (epochs 0) writes
    summary = reference(params, progress=False)
    assert summary["completions"] == 3 * len(out.preferences) and summary["cut"] == 0
    metrics = align("pl", params, seed=0)
    assert metrics["steps"] >= 1 and Path("models/aligned/pl/seed-0/config.json").is_file()


# --------------------------------------------------------------------------- trl's other formats

#: A template whose turns end with the EOS (so a multi-turn prompt holds EOS tokens).
EOS_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _conversations(n: int, prefix: str) -> list[dict]:
    """trl's conversational rows; odd rows have a multi-turn prompt."""
    rows = []
    for i in range(n):
        prompt = [_m("user", f"{prefix} {i}")]
        if i % 2:
            prompt = [_m("user", f"{prefix} {i} plot"), _m("assistant", "was good"), *prompt]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [_m("assistant", f"good {i}.")],
                "rejected": [_m("assistant", f"bad {i}.")],
            }
        )
    return rows


def _plain(prompt: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


@pytest.fixture(scope="module")
def template_lm_dir(tmp_path_factory, tiny_lm_dir) -> Path:
    """The tiny policy with EOS_TEMPLATE as its tokenizer's chat template."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat") / "lm"
    shutil.copytree(tiny_lm_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = EOS_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def test_conversational_rows_with_the_plain_template(tmp_path, monkeypatch, tiny_lm_dir, tiny_lm):
    """The tiny policy has no chat template, so auto renders with the plain one, the same for
    the train rows, the eval prompts (test split), the SFT texts and the trl export. Catches a
    template applied to the train rows only, or a completion that is not the last turn."""
    tok = tiny_lm[1]
    monkeypatch.chdir(tmp_path)
    train, test = _conversations(20, "the film"), _conversations(6, "a movie")
    _write_jsonl(Path("prefs/train.jsonl"), train)
    _write_jsonl(Path("prefs/test.jsonl"), test)
    out = ingest(_params(tiny_lm_dir))
    assert out.metrics["format"] == "conversational" and out.metrics["chat_template"] == "plain"
    for row in read_rows("data/preferences.jsonl", PREFERENCES):
        i = int(row["prompt_id"].split("-")[1])
        assert row["prompt"] == _plain(train[i]["prompt"])
        assert row["completions"] == [f" good {i}.", f" bad {i}."]
        assert row["completion_ids"] == [
            tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for t in row["completions"]
        ]
    assert read_rows("data/preferences.jsonl", PREFERENCES)[1]["prompt"] == (
        "user: the film 1 plot\nassistant: was good\nuser: the film 1\nassistant:"
    )
    evals = read_rows("data/prompts/eval.jsonl", PROMPTS)
    assert [p["prompt"] for p in evals] == [_plain(r["prompt"]) for r in test]
    assert read_rows("data/prepared/test.jsonl", PREPARED)[0]["text"] == (
        "user: a movie 0\nassistant: good 0."
    )
    exported = datasets.load_dataset("data/pairs-trl")["train"][0]
    first = next(r for r in out.preferences if r["split"] == "train")
    assert exported == {
        "prompt": first["prompt"],
        **dict(zip(("chosen", "rejected"), first["completions"])),
        "trl_differs": "",  # the plain template's prompt ends on a token boundary: trl agrees
    }


def test_conversational_rows_with_the_tokenizers_chat_template(
    tmp_path, monkeypatch, template_lm_dir
):
    """auto uses the policy tokenizer's chat template (the implicit form gives the same rows);
    its EOS tokens in a multi-turn prompt are kept, the completion's own EOS is the appended one;
    chat_template: plain overrides it. Catches the template's EOS refused in the prompt or
    doubled at the end of a completion, or a template ignored."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(template_lm_dir)
    eos = tok.eos_token
    monkeypatch.chdir(tmp_path)
    rows = _conversations(20, "the film")
    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows
    ]
    outs = {}
    for name, data in (("explicit", rows), ("implicit", implicit)):
        _write_jsonl(Path(f"{name}/train.jsonl"), data)
        outs[name] = ingest(_params(template_lm_dir, source=name, eval_fraction=0.2))
    out = outs["explicit"]
    assert out.metrics["chat_template"] == "tokenizer"
    assert outs["implicit"].metrics["format"] == "conversational-implicit"
    assert outs["implicit"].preferences == out.preferences
    row = next(r for r in out.preferences if int(r["prompt_id"].split("-")[1]) % 2)  # multi-turn
    i = int(row["prompt_id"].split("-")[1])
    assert row["prompt"] == (
        f"<|user|>\nthe film {i} plot{eos}\n<|assistant|>\nwas good{eos}\n<|user|>\n"
        f"the film {i}{eos}\n<|assistant|>\n"
    )
    assert row["completions"] == [f"good {i}.", f"bad {i}."]
    assert row["completion_ids"] == [
        tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for t in row["completions"]
    ]
    assert all(p["prompt"].startswith("<|user|>\n") for p in out.eval_prompts)
    plain = ingest(
        _params(template_lm_dir, source="explicit", eval_fraction=0.2, chat_template="plain")
    )
    assert plain.metrics["chat_template"] == "plain"
    assert plain.preferences[0]["prompt"] == _plain(rows[0]["prompt"])


def _bad(kind: str):
    """An edit of (params, rows) for test_bad_conversational_input_is_one_line."""

    def edit(params, rows):
        if kind == "no assistant":
            rows[2]["chosen"] = [_m("user", "more")]
        elif kind == "unknown role":
            rows[2]["prompt"] = [_m("narrator", "once")]
        elif kind == "not a dict":
            rows[2]["rejected"] = ["bad 2."]
        elif kind == "template fails":
            params["sft"]["model"] = params["sft"]["model"].replace("lm", "raising")
        elif kind == "no common prefix":
            rows[:] = [
                {"chosen": f"the film {i} was good", "rejected": f"the film {i} was bad"}
                for i in range(10)
            ]
            rows[2] = {"chosen": "good", "rejected": "bad"}
        elif kind == "unpaired":
            rows[:] = [{"prompt": "p", "completion": " a", "label": True}] * 3
        elif kind == "tokenizer without template":
            params["ingest"]["chat_template"] = "tokenizer"
            params["sft"]["model"] = params["sft"]["model"].replace("lm", "plain")

    return edit


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no assistant", "prefs/train.jsonl:3: field 'chosen' has no assistant turn"),
        ("unknown role", "prefs/train.jsonl:3: field 'prompt' message 1: unknown role 'narrator'"),
        ("not a dict", "prefs/train.jsonl:3: field 'rejected' message 1: must be a {'role'"),
        (
            "template fails",
            "prefs/train.jsonl:1: field 'prompt': the chat template fails to render",
        ),
        ("no common prefix", "prefs/train.jsonl:3: fields 'chosen' and 'rejected' share no prefix"),
        ("unpaired", "prefs/train.jsonl: trl's unpaired preference format (prompt, completion,"),
        ("tokenizer without template", "params: ingest.chat_template: 'tokenizer', but sft.model"),
    ],
)
def test_bad_conversational_input_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch, tiny_lm_dir, template_lm_dir, kind, message
):
    """Rows count from 1 (the jsonl line); the field is named; nothing is written."""
    import shutil

    from transformers import AutoTokenizer

    models = tmp_path / "models"
    shutil.copytree(template_lm_dir, models / "lm")
    shutil.copytree(tiny_lm_dir, models / "plain")
    shutil.copytree(template_lm_dir, models / "raising")
    tok = AutoTokenizer.from_pretrained(models / "raising")
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    tok.save_pretrained(models / "raising")
    monkeypatch.chdir(tmp_path)
    params, rows = _params(models / "lm"), _conversations(10, "the film")
    _bad(kind)(params, rows)
    _write_jsonl(Path("prefs/train.jsonl"), rows)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(_app(), ["main"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: ingest.source: {message}") or result.output.startswith(
        f"error: {message}"
    ), result.output
    assert result.output.count("\n") == 1, result.output
    assert not any(Path(d).exists() for d in OUTPUTS)


# --------------------------------------------------------------------------- hub ids under DVC

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "byo.md").read_text()


def test_a_hub_dataset_snapshot_is_the_hub_dataset(tmp_path, monkeypatch, tiny_lm_dir):
    """The snapshot command of docs/byo.md, run as printed (a local DatasetDict stands in for
    the hub), gives a save_to_disk folder whose ingest is byte-identical to ingesting the hub id
    directly; under DVC (DVC_STAGE set) the id is one line saying how to snapshot it, and nothing
    is written. Catches a snapshot that loses splits or rows, and a hub download under DVC."""
    import re

    hub = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(_conversations(20, "the film")),
            "test": datasets.Dataset.from_list(_conversations(6, "a movie")),
        }
    )

    def load_dataset(name, *args, **kwargs):
        assert name == "someone/prefs" and not args and not kwargs
        return hub

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    (tmp_path / "direct").mkdir()
    monkeypatch.chdir(tmp_path / "direct")
    ingest(_params(tiny_lm_dir, source="someone/prefs"))
    command = re.search(r"python -c \"(import datasets; [^\"]+'byo/preferences'\))\"", DOCS)
    assert command, "docs/byo.md: the snapshot command"
    (tmp_path / "repo" / "byo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")  # the repository root, as the docs say
    exec(command.group(1).replace("<id>", "someone/prefs"))  # noqa: S102 - the documented code
    monkeypatch.chdir(tmp_path / "repo" / "byo")
    ingest(_params(tiny_lm_dir, source="preferences"))
    files = sorted(
        p.relative_to(tmp_path / "direct")
        for d in OUTPUTS
        for p in (tmp_path / "direct" / d).rglob("*")
        if p.is_file()
    )
    assert len(files) > 5 and all(
        (tmp_path / "direct" / f).read_bytes() == (tmp_path / "repo" / "byo" / f).read_bytes()
        for f in files
    )
    (tmp_path / "dvc").mkdir()
    monkeypatch.chdir(tmp_path / "dvc")
    monkeypatch.setenv("DVC_STAGE", "ingest")
    Path("params.yaml").write_text(yaml.safe_dump(_params(tiny_lm_dir, source="someone/prefs")))
    result = CliRunner().invoke(_app(), ["main"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        "error: ingest.source: 'someone/prefs' is not a local file or folder, and under DVC the "
        'source must be a tracked local copy: from the repository root run python -c "import '
        "datasets; datasets.load_dataset('someone/prefs').save_to_disk('byo/preferences')\" && "
        "dvc add byo/preferences, then set ingest.source: preferences"
    )
    assert not any(Path(d).exists() for d in OUTPUTS)
