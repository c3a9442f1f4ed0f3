"""trl's tokens of an exported pair against ours (issue 27 item 6): :func:`trl_tokenize` is trl
1.16 ``DPOTrainer``'s own tokenisation (its ``_prepare_dataset``, called directly) on every row,
mid-word completions included, and ``trl_differs`` is empty exactly when trl scores the tokens
our trainer scores (the prompt's tokens, then the sampled ids), else names why not."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from stages.lib.trl_format import DIFFERS, REASONS, difference_counts, pair_records, trl_tokenize

CORPUS = [
    "The film was great fun and the acting was great.",
    "a great film, fun and dull, the plot was bad.",
]
#: The demo's pairs, where present (data/preferences.jsonl and models/sft checked out).
DEMO = Path(os.environ.get("DEMO_DIR", Path(__file__).resolve().parents[1]))


def bpe_tokenizer(bos: bool = False):
    """A byte-level BPE tokenizer trained on CORPUS (" great" is one token, " gre" is " gr" +
    "e"); EOS ``<|endoftext|>``, and with ``bos`` a ``<s>`` added before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            min_frequency=2,
            special_tokens=["<|endoftext|>", "<s>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def preference_row(tokenizer, prompt, completions, ids=None, finished=None, split="train"):
    """A PREFERENCES row whose completions were sampled as their text's own tokens + EOS
    (``ids`` and ``finished`` override), with the one pair [0, 1]."""
    eos = tokenizer.eos_token_id
    if ids is None:
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in completions]
    return {
        "prompt_id": prompt,
        "prompt": prompt,
        "completions": completions,
        "completion_ids": ids,
        "finished": finished or [True] * len(completions),
        "pairs": [[0, 1]],
        "split": split,
    }


def trl_prepare(tokenizer, records: list[dict]) -> list[dict]:
    """trl 1.16 DPOTrainer's tokenisation of ``records``: its ``_prepare_dataset`` (EOS text
    appended, prompt and prompt + completion tokenised, the boundary moved where they
    diverge) called directly, on an in-memory dataset."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    args = DPOConfig(output_dir="/nonexistent", use_cpu=True, report_to="none")
    trainer = types.SimpleNamespace(_tokenizer=tokenizer)  # all _prepare_dataset reads of self
    dataset = datasets.Dataset.from_list(
        [{c: r[c] for c in ("prompt", "chosen", "rejected")} for r in records]
    )
    return DPOTrainer._prepare_dataset(trainer, dataset, tokenizer, args, "train").to_list()


def ours(tokenizer, row: dict, w: int, l: int) -> tuple[list[int], list[int], list[int]]:
    """The tokens our trainer scores for the pair (stages.lib.sequences)."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    return prompt, row["completion_ids"][w], row["completion_ids"][l]


def check_against_trl(tokenizer, rows: list[dict]) -> list[str]:
    """Every pair of ``rows``: trl_tokenize is trl's tokenisation and trl_differs is empty
    exactly when trl's tokens are ours, ``boundary`` exactly when trl shortened the prompt;
    returns the trl_differs of the pairs in order."""
    records = [r for split in pair_records(rows, tokenizer).values() for r in split]
    pairs = [
        (row, w, l)
        for split in ("train", "val")
        for row in rows
        if row["split"] == split
        for w, l in row["pairs"]
    ]
    theirs = trl_prepare(tokenizer, records)
    assert len(theirs) == len(records) == len(pairs)
    for record, trl_row, (row, w, l) in zip(records, theirs, pairs):
        mine = trl_tokenize(tokenizer, record["prompt"], record["chosen"], record["rejected"])
        assert mine == {k: trl_row[k] for k in mine}, record
        same = (trl_row["prompt_ids"], trl_row["chosen_ids"], trl_row["rejected_ids"]) == ours(
            tokenizer, row, w, l
        )
        assert same == (record[DIFFERS] == ""), record
        shortened = len(trl_row["prompt_ids"]) < len(tokenizer(record["prompt"])["input_ids"])
        assert shortened == ("boundary" in record[DIFFERS].split(",")), record
    return [r[DIFFERS] for r in records]


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_mid_word_completion_moves_the_end_of_the_prompt_in_trl(tok):
    """Prompt "The film was gre" + completion "at fun": trl's tokens of the joined text have
    " great", so trl starts both completions after "The film was" and puts " gre" in them."""
    assert tok.convert_ids_to_tokens(tok("The film was gre")["input_ids"])[-2:] == ["Ġgr", "e"]
    got = trl_tokenize(tok, "The film was gre", "at fun", " dull")
    assert got["prompt_ids"] == tok("The film was")["input_ids"]
    assert got["chosen_ids"] == tok(" great fun")["input_ids"] + [tok.eos_token_id]
    assert tok.decode(got["rejected_ids"]) == " gre dull<|endoftext|>"
    assert got == {
        k: v
        for k, v in trl_prepare(
            tok, [{"prompt": "The film was gre", "chosen": "at fun", "rejected": " dull"}]
        )[0].items()
        if k in got
    }
    row = preference_row(tok, "The film was gre", ["at fun", " dull"])
    assert check_against_trl(tok, [row]) == ["boundary"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_trl_differs_names_every_reason_and_agrees_with_trl_on_every_row(tok):
    eos = tok.eos_token_id
    great_fun = [
        t for w in ("great", "fun") for t in tok(f" {w}", add_special_tokens=False)["input_ids"]
    ]
    chars = [t for c in " great" for t in tok(c, add_special_tokens=False)["input_ids"]]
    assert chars != tok(" great", add_special_tokens=False)["input_ids"]  # a non-canonical path
    rows = [
        preference_row(tok, "The film was", [" great fun", " bad"]),  # clean
        preference_row(tok, "The film was gre", ["at fun", " dull"]),  # mid-word chosen
        preference_row(tok, "The film was gre", [" dull", "at"]),  # mid-word rejected
        preference_row(tok, "The film was ", ["great", "bad"]),  # the space joins the word
        preference_row(tok, "The plot was", [" great", " bad"], split="val"),
        preference_row(  # cut at the length cap: no EOS in ours
            tok,
            "The acting was",
            [" great fun", " bad"],
            ids=[great_fun, tok(" bad", add_special_tokens=False)["input_ids"] + [eos]],
            finished=[False, True],
        ),
        preference_row(  # sampled one character at a time
            tok,
            "The acting was",
            [" great", " dull"],
            ids=[chars + [eos], tok(" dull", add_special_tokens=False)["input_ids"] + [eos]],
        ),
        preference_row(  # mid-word and cut
            tok,
            "a film was gre",
            ["at", " bad"],
            ids=[
                tok("at", add_special_tokens=False)["input_ids"],
                tok(" bad")["input_ids"] + [eos],
            ],
            finished=[False, True],
        ),
    ]
    rows[0]["completions"].append(" dull")
    rows[0]["completion_ids"].append(tok(" dull", add_special_tokens=False)["input_ids"] + [eos])
    rows[0]["finished"].append(True)
    rows[0]["pairs"] = [[0, 1], [2, 1], [0, 2]]
    differs = check_against_trl(tok, rows)
    assert differs == [
        "",
        "",
        "",
        "boundary",
        "boundary",
        "boundary",
        "eos",
        "retokenised",
        "boundary,eos",
        "",
    ]
    records = pair_records(rows, tok)
    assert [r[DIFFERS] for r in records["test"]] == [""]
    assert difference_counts(records) == {
        "pairs": 6,
        "boundary": 4,
        "special_tokens": 0,
        "eos": 2,
        "retokenised": 1,
    }


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_tokenizer_that_adds_a_bos_differs_on_every_pair():
    """trl tokenises with the tokenizer's special tokens, ours without: a BOS only in trl's."""
    tok = bpe_tokenizer(bos=True)
    assert tok("The")["input_ids"][0] == tok.convert_tokens_to_ids("<s>")
    rows = [
        preference_row(tok, "The film was", [" great", " bad"]),
        preference_row(tok, "The film was gre", ["at fun", " dull"]),
    ]
    assert check_against_trl(tok, rows) == ["special_tokens", "boundary,special_tokens"]


def test_without_a_tokenizer_the_records_have_trl_s_three_columns(tok):
    row = preference_row(tok, "The film was gre", ["at fun", " dull"])
    assert pair_records([row]) == {
        "train": [{"prompt": "The film was gre", "chosen": "at fun", "rejected": " dull"}],
        "test": [],
    }
    assert REASONS == ("boundary", "special_tokens", "eos", "retokenised")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_demo_pairs_against_trl():
    """The committed demo's 2,000 pairs (where checked out: ``dvc pull``; DEMO_DIR overrides the
    repository root): trl_differs against trl's own tokenisation on every pair."""
    prefs, sft = DEMO / "data/preferences.jsonl", DEMO / "models/sft"
    if not prefs.is_file() or not (sft / "tokenizer.json").is_file():
        pytest.skip(f"the demo's pairs are not checked out under {DEMO} (dvc pull)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft)
    rows = [json.loads(line) for line in prefs.read_text(encoding="utf-8").splitlines()]
    differs = check_against_trl(tokenizer, rows)
    boundary = [d for d in differs if "boundary" in d]
    assert len(differs) == sum(len(r["pairs"]) for r in rows) and boundary
