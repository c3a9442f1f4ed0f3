"""trl's other preference formats in (stages.lib.ingest_formats, through read_records): the
conversational form rendered with a plain or the tokenizer's chat template exactly as trl
renders it, the implicit prompt cut exactly as trl cuts it, unpaired rows refused, and every bad
message a one-line error naming the file, row (from 1) and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from trl.data_utils import apply_chat_template, extract_prompt

from stages.lib.ingest_formats import Chat, detect, implicit_cut
from stages.lib.ingest_sources import Table, load_tables, read_records

P = "ingest.source"
#: A Zephyr-like template: the EOS ends every turn (so it is inside a multi-turn prompt).
EOS_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: A ChatML-like template whose turn end is not the EOS.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


#: Row 1 a single-turn prompt with a system message, row 2 a multi-turn prompt.
CONVERSATIONS = [
    {
        "prompt": [_m("system", "Be brief."), _m("user", "the film was")],
        "chosen": [_m("assistant", "great fun.")],
        "rejected": [_m("assistant", "dull.")],
    },
    {
        "prompt": [_m("user", "the plot"), _m("assistant", "was good"), _m("user", "and the cast")],
        "chosen": [_m("assistant", "brilliant acting.")],
        "rejected": [_m("assistant", "boring acting.")],
    },
]


def _implicit(row: dict) -> dict:
    return {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}


def _table(rows: list[dict]) -> Table:
    return Table("train.jsonl", rows, [f"train.jsonl:{i}" for i in range(1, len(rows) + 1)])


def _with_template(tok, template: str):
    """A copy of the session's tiny tokenizer (never modified in place) with a chat template."""
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def test_formats_are_told_apart_by_the_first_row():
    """Catches a detection that looks at column names only (messages read as text) or that
    treats a text prompt beside message lists as explicit (trl ignores it)."""
    text = {"prompt": "p", "chosen": " a", "rejected": " b"}
    conv = CONVERSATIONS[0]
    assert detect(text) == "pairwise"
    assert detect({"prompt": "p", "completions": [" a"], "rewards": [1]}) == "ranked"
    assert detect({"chosen": "p a", "rejected": "p b"}) == "pairwise-implicit"
    assert detect(conv) == "conversational"
    assert detect(_implicit(conv)) == "conversational-implicit"
    assert detect({"prompt": "p", **_implicit(conv)}) == "conversational-implicit"
    assert detect({"prompt": "p", "completion": " a", "label": True}) == "unpaired"


def test_plain_template_renders_every_row_the_same_way():
    """The documented plain template, multi-turn included: catches a completion that is not the
    last assistant turn, a missing "assistant:" generation prompt, or earlier assistant turns
    rendered unlike the completion. Explicit and implicit conversations give the same texts."""
    for rows in (CONVERSATIONS, [_implicit(r) for r in CONVERSATIONS]):
        records = read_records(_table(rows), P, Chat("plain"))
        assert [(r.prompt, r.completions) for r in records] == [
            ("system: Be brief.\nuser: the film was\nassistant:", [" great fun.", " dull."]),
            (
                "user: the plot\nassistant: was good\nuser: and the cast\nassistant:",
                [" brilliant acting.", " boring acting."],
            ),
        ]
        assert all(not r.templated and r.fields == ["chosen", "rejected"] for r in records)
    # the default (no chat given) is the plain template; auto without a template is plain too
    assert read_records(_table(CONVERSATIONS), P)[0].prompt.endswith("\nassistant:")
    assert Chat("auto", object()).name == "plain"


@pytest.mark.parametrize("template", [EOS_TEMPLATE, CHATML], ids=["eos-turns", "chatml"])
def test_chat_template_renders_as_trl_does(tiny_lm, template):
    """Prompt and completions equal trl's apply_chat_template (with extract_prompt for the
    implicit form), multi-turn prompts included; a completion ending with the EOS (then only
    whitespace) ends before it, since ingest appends the EOS id. Catches rendering the prompt
    without the generation prompt, taking the completion as the bare content, or keeping the
    template's EOS (a doubled EOS)."""
    tok = _with_template(tiny_lm[1], template)
    eos = tok.eos_token
    for rows, explicit in ((CONVERSATIONS, True), ([_implicit(r) for r in CONVERSATIONS], False)):
        records = read_records(_table(rows), P, Chat("auto", tok))
        for row, record in zip(rows, records):
            trl = apply_chat_template(row if explicit else extract_prompt(row), tok)
            cut = [t[: t.index(eos)] if eos in t else t for t in (trl["chosen"], trl["rejected"])]
            assert record.prompt == trl["prompt"] and record.completions == cut
            assert record.templated
    assert (
        records[1].prompt.count("<|user|>" if template == EOS_TEMPLATE else "<|im_start|>user") == 2
    )
    if template == CHATML:  # no EOS in this template: the texts are exactly trl's
        assert records[0].completions[0] == "great fun.<|im_end|>\n"
    # plain even where the tokenizer has a template
    assert read_records(_table(CONVERSATIONS), P, Chat("plain", tok))[0].prompt.startswith("system")


@pytest.mark.parametrize(
    "pair",
    [
        ("The film was good.", "The film was bad."),  # a space before the difference: moved
        ("The film was great.", "The film was good."),  # mid-word: trl keeps the 'g' in the prompt
        ("ab x", "ab  y"),
        ("The film, I think, was fun", "The film, I think, is dull"),
    ],
)
def test_implicit_prompt_is_cut_as_trl_cuts_it(pair):
    """trl 1.16's extract_prompt on the same texts: catches a plain longest common prefix (the
    space left in the prompt) or a cut back to a word boundary (trl does not)."""
    chosen, rejected = pair
    (record,) = read_records(_table([{"chosen": chosen, "rejected": rejected}]), P)
    trl = extract_prompt({"chosen": chosen, "rejected": rejected})
    assert (record.prompt, record.completions) == (trl["prompt"], [trl["chosen"], trl["rejected"]])
    assert implicit_cut(chosen, rejected) == len(trl["prompt"])
    assert record.prompt + record.completions[0] == chosen


def test_unpaired_rows_are_refused_naming_the_format():
    """trl's prompt/completion/label form: one line that names it and says what to do (catches
    the old message that only listed the columns found)."""
    rows = [{"prompt": "p", "completion": " a", "label": True}]
    with pytest.raises(ValueError) as err:
        read_records(_table(rows), P)
    text = str(err.value)
    assert text.startswith(f"{P}: train.jsonl: trl's unpaired preference format (prompt, ")
    assert "KTO-style unpaired losses are not implemented" in text and "\n" not in text


def _conv(**edit) -> dict:
    return {**copy.deepcopy(CONVERSATIONS[1]), **edit}


BAD = [
    (
        _conv(chosen=[_m("user", "more")]),
        ":2: field 'chosen' has no assistant turn (the last assistant turn is the completion)",
    ),
    (
        _conv(rejected=[_m("assistant", "dull."), _m("user", "why?")]),
        ":2: field 'rejected' message 2: a 'user' turn after the last assistant turn",
    ),
    (
        _conv(prompt=[_m("user", "hi"), _m("bot", "hello")]),
        ":2: field 'prompt' message 2: unknown role 'bot' (known: system, user, assistant, tool)",
    ),
    (
        _conv(chosen=["brilliant acting."]),
        ":2: field 'chosen' message 1: must be a {'role', 'content'} mapping, got 'brilliant",
    ),
    (_conv(chosen=[{"content": "x"}]), ":2: field 'chosen' message 1: 'role' must be text"),
    (
        _conv(prompt=[_m("user", "hi"), {"role": "user", "content": 5}]),
        ":2: field 'prompt' message 2: 'content' must be text, got 5",
    ),
    (
        _conv(prompt=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        ":2: field 'prompt' message 1: 'content' must be text, got [{'type': 'text'",
    ),
    (_conv(chosen=[_m("assistant", " ")]), ":2: field 'chosen' message 1: the completion is empty"),
    (_conv(rejected=[_m("assistant", "brilliant acting.")]), ":2: field 'rejected' is identical"),
    (_conv(prompt=[]), ":2: field 'prompt' has no messages"),
    (_conv(prompt=None), ":2: field 'prompt' is missing"),
    (_conv(prompt="the plot"), ":2: field 'prompt' must be a list of messages like the split's"),
]
IMPLICIT_BAD = [
    ({"chosen": "good fun", "rejected": "bad fun"}, ":2: fields 'chosen' and 'rejected' share no"),
    ({"chosen": " good", "rejected": " bad"}, ":2: fields 'chosen' and 'rejected' share no prefix"),
    (
        {"chosen": "it was", "rejected": "it was bad"},
        ":2: field 'chosen' is a prefix of 'rejected'",
    ),
    ({"chosen": "it was", "rejected": "it was"}, ":2: field 'rejected' is identical to 'chosen'"),
    ({"chosen": "it was", "rejected": None}, ":2: field 'rejected' is missing"),
    (
        {
            "chosen": [_m("user", "a"), _m("assistant", "b")],
            "rejected": [_m("user", "c"), _m("assistant", "d")],
        },
        ":2: fields 'chosen' and 'rejected' differ before their last assistant turn (message 1)",
    ),
    (
        {"chosen": [_m("assistant", "b")], "rejected": [_m("assistant", "d")]},
        ":2: field 'chosen' has no message before its assistant turn (no prompt)",
    ),
]


@pytest.mark.parametrize("row, message", BAD + IMPLICIT_BAD)
def test_bad_rows_are_one_line_errors_naming_file_row_and_field(tmp_path, row, message):
    """Row 1 is good, row 2 bad, read from a jsonl file through datasets (as ingest reads it):
    the message names the file, line 2 and the field, and is one line."""
    good = CONVERSATIONS[0] if "prompt" in row else _implicit(CONVERSATIONS[0])
    if isinstance(row.get("chosen"), str):
        good = {"chosen": "the film was good", "rejected": "the film was bad"}
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, row)))
    with pytest.raises(ValueError) as err:
        read_records(load_tables(str(path), P)["train"], P)
    text = str(err.value)
    assert text.startswith(f"{P}: {path}:2: ") and message in text and "\n" not in text, text


def test_template_failures_are_located(tiny_lm):
    """A template that raises (a jinja raise_exception), an EOS inside a completion, and
    chat_template: tokenizer without a template: one line each (catches a traceback escaping)."""
    raising = _with_template(tiny_lm[1], "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError) as err:
        read_records(_table(CONVERSATIONS), P, Chat("auto", raising))
    assert str(err.value) == (
        f"{P}: train.jsonl:1: field 'prompt': the chat template fails to render (roles must "
        f"alternate)"
    )
    inside = _with_template(
        tiny_lm[1], EOS_TEMPLATE.replace("{{ eos_token }}\n", "{{ eos_token }} more\n")
    )
    with pytest.raises(ValueError, match=r"^ingest\.source: train\.jsonl:1: field 'chosen': the "):
        read_records(_table(CONVERSATIONS), P, Chat("auto", inside))
    with pytest.raises(ValueError, match=r"^params: ingest\.chat_template: 'tokenizer', but "):
        read_records(_table(CONVERSATIONS), P, Chat("tokenizer", tiny_lm[1]))


def test_a_message_list_in_a_text_split_is_one_format_per_split(tmp_path):
    """Catches reading a text split's later message row as text (or the reverse)."""
    rows = [{"prompt": "p", "chosen": " a", "rejected": " b"}, CONVERSATIONS[0]]
    path = Path(tmp_path / "mixed.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError,
        match=r"mixed\.jsonl:2: field 'prompt' must be plain text, got a list \(a split has one",
    ):
        read_records(load_tables(str(path), P)["train"], P)
