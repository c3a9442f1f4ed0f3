"""Our training pairs out in trl's preference format: the records, the folder of JSON Lines files
(read with ``datasets.load_dataset``, never written to), trl's ``DPOTrainer`` reading it and
taking a step on a tiny local model (and trl's tokens of a completion are the tokens ``ingest``
gives it), a copy of it read back by ``ingest``. trl's tokens of each pair against ours
(``trl_differs``, mid-word completions included): tests/test_trl_tokens.py."""

from __future__ import annotations

import shutil
import warnings

import datasets
import pytest

from stages.lib import trl_format
from stages.lib.ingest import tokenize_records
from stages.lib.ingest_sources import Table, load_tables, read_records
from stages.lib.trl_format import COLUMNS, DIFFERS, pair_records, save_pairs

ROWS = [
    {
        "prompt": "The film was",
        "completions": [" good.", " bad.", " fine.", " awful."],
        "pairs": [[0, 1], [2, 3]],
        "split": "train",
    },
    {"prompt": "It is", "completions": [" dull", " great"], "pairs": [[1, 0]], "split": "val"},
    {"prompt": "I saw", "completions": [" it", " them"], "pairs": [], "split": "train"},
]


def test_one_record_per_pair_winner_chosen_by_split():
    assert pair_records(ROWS) == {
        "train": [
            {"prompt": "The film was", "chosen": " good.", "rejected": " bad."},
            {"prompt": "The film was", "chosen": " fine.", "rejected": " awful."},
        ],
        "test": [{"prompt": "It is", "chosen": " great", "rejected": " dull"}],
    }


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """``datasets``' cache in a temporary folder (not ~/.cache): load_dataset converts the
    files there and every map caches beside that copy."""
    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_saved_folder_is_json_lines_that_load_dataset_reads(tmp_path, hf_cache):
    assert save_pairs(ROWS, tmp_path / "pairs") == {"train": 2, "test": 1}
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["test.jsonl", "train.jsonl"]
    assert (tmp_path / "pairs/test.jsonl").read_text(encoding="utf-8") == (
        '{"prompt": "It is", "chosen": " great", "rejected": " dull"}\n'
    )
    before = _files(tmp_path / "pairs")
    loaded = datasets.load_dataset(str(tmp_path / "pairs"))
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].column_names == list(COLUMNS)
    assert loaded["train"].to_list() == pair_records(ROWS)["train"]
    assert loaded["test"][0] == {"prompt": "It is", "chosen": " great", "rejected": " dull"}
    assert _files(tmp_path / "pairs") == before  # read, not written: the copy is in the cache
    assert all(str(f["filename"]).startswith(str(hf_cache)) for f in loaded["train"].cache_files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_split_without_pairs_is_left_out(tmp_path, hf_cache):
    """An empty split gets no file (datasets cannot load an empty JSON Lines file)."""
    counts = save_pairs([r for r in ROWS if r["split"] == "train"], tmp_path / "pairs")
    assert counts == {"train": 2, "test": 0}
    assert [p.name for p in (tmp_path / "pairs").iterdir()] == ["train.jsonl"]
    assert list(datasets.load_dataset(str(tmp_path / "pairs"))) == ["train"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    real = trl_format.json.dumps

    def fail_on_test(record, **kwargs):
        if record["prompt"] == "It is":  # the test split, after train.jsonl was written
            raise OSError("disk full")
        return real(record, **kwargs)

    monkeypatch.setattr(trl_format.json, "dumps", fail_on_test)
    with pytest.raises(OSError, match="disk full"):
        save_pairs(ROWS, tmp_path / "pairs")
    assert list(tmp_path.iterdir()) == []


def test_a_rewrite_replaces_the_folder(tmp_path):
    save_pairs(ROWS, tmp_path / "pairs")
    save_pairs([r for r in ROWS if r["split"] == "train"], tmp_path / "pairs")
    assert [p.name for p in (tmp_path / "pairs").iterdir()] == ["train.jsonl"]


def test_texts_are_written_as_utf8_unescaped(tmp_path):
    rows = [{**ROWS[1], "prompt": "Ça, c'est", "completions": [" génial 🎬", " nul"]}]
    save_pairs(rows, tmp_path / "pairs")
    text = (tmp_path / "pairs/test.jsonl").read_bytes().decode("utf-8")
    assert '"Ça, c\'est"' in text and "génial 🎬" in text


def test_a_copy_of_the_export_is_an_ingest_source(tmp_path, hf_cache, tiny_lm):
    """``cp -r data/pairs-trl byo/preferences``: ingest reads the copy as a folder of split
    files (the extra ``trl_differs`` column is ignored) and gets every pair back."""
    _, tokenizer = tiny_lm
    rows = _with_ids(ROWS, tokenizer)
    save_pairs(rows, tmp_path / "pairs", tokenizer)
    shutil.copytree(tmp_path / "pairs", tmp_path / "preferences")
    tables = load_tables(str(tmp_path / "preferences"), "ingest.source")
    assert set(tables) == {"train", "test"}
    for split, recs in pair_records(rows).items():
        records = read_records(tables[split], "ingest.source")
        assert [(r.prompt, *r.completions) for r in records] == [
            (p["prompt"], p["chosen"], p["rejected"]) for p in recs
        ]
        assert records[0].where == f"ingest.source: {tmp_path}/preferences/{split}.jsonl:1"


def _with_ids(rows, tokenizer):
    """``rows`` with the ``completion_ids`` (text tokens + EOS) and ``finished`` of sampled
    completions that stopped."""
    eos = tokenizer.eos_token_id
    return [
        {
            **r,
            "completion_ids": [
                tokenizer(c, add_special_tokens=False)["input_ids"] + [eos]
                for c in r["completions"]
            ],
            "finished": [True] * len(r["completions"]),
        }
        for r in rows
    ]


def test_trl_trains_on_the_exported_pairs(tmp_path, hf_cache, tiny_lm_dir, torch_one_thread):
    """The folder goes to trl's DPOTrainer as ``load_dataset`` reads it, ``trl_differs``
    column included: tokenised by trl (prompt, chosen and rejected ids, EOS appended), one
    optimizer step taken with a finite loss, and nothing written into the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    save_pairs(_with_ids(ROWS, tokenizer), tmp_path / "pairs", tokenizer)
    before = _files(tmp_path / "pairs")
    pairs = datasets.load_dataset(str(tmp_path / "pairs"))
    assert pairs["train"].column_names == [*COLUMNS, DIFFERS]
    assert pairs["train"][DIFFERS] == ["", ""]  # trl scores exactly the sampled tokens
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    with warnings.catch_warnings():  # transformers 5 deprecation notices raised inside trl
        warnings.simplefilter("ignore", FutureWarning)
        args = DPOConfig(
            output_dir=str(tmp_path / "out"),
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=2,
            per_device_eval_batch_size=1,
            max_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            beta=0.1,
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=pairs["train"],
            eval_dataset=pairs["test"],
            processing_class=tokenizer,
        )
        tokenised = trainer.train_dataset[0]
        eos = tokenizer.eos_token_id
        assert tokenised["prompt_ids"] == tokenizer("The film was")["input_ids"]
        assert tokenised["chosen_ids"] == tokenizer(" good.")["input_ids"] + [eos]
        assert tokenised["rejected_ids"] == tokenizer(" bad.")["input_ids"] + [eos]
        # ingest (trl-format data in) tokenises a completion exactly as trl does
        records = read_records(Table("t", pairs["train"].to_list(), ["t:1", "t:2"]), "source")
        ours = tokenize_records(records, tokenizer)[0]
        assert ours == [tokenised["chosen_ids"], tokenised["rejected_ids"]]
        result = trainer.train()
    assert result.global_step == 1 and result.training_loss == pytest.approx(0.6931, abs=0.05)
    assert _files(tmp_path / "pairs") == before  # trl's caches went to the datasets cache
    assert list(hf_cache.rglob("cache-*.arrow"))


def test_the_folder_is_byte_identical_on_a_rerun(tmp_path, tiny_lm):
    """DVC hashes the folder: the same pairs give the same bytes."""
    rows = _with_ids(ROWS, tiny_lm[1])
    save_pairs(rows, tmp_path / "a", tiny_lm[1])
    save_pairs(rows, tmp_path / "b", tiny_lm[1])
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert files and all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
