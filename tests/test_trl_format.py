"""Our training pairs out in trl's preference format: the records, the ``datasets`` folder, and
trl's ``DPOTrainer`` reading it and taking a step on a tiny local model (and trl's tokens of a
completion are the tokens ``ingest`` gives it)."""

from __future__ import annotations

import warnings

import datasets
import pytest

from stages.lib.ingest import tokenize_records
from stages.lib.ingest_sources import Table, read_records
from stages.lib.trl_format import COLUMNS, pair_records, save_pairs

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


def test_saved_folder_loads_with_load_from_disk(tmp_path):
    assert save_pairs(ROWS, tmp_path / "pairs") == {"train": 2, "test": 1}
    loaded = datasets.load_from_disk(str(tmp_path / "pairs"))
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].column_names == list(COLUMNS)
    assert loaded["train"].to_list() == pair_records(ROWS)["train"]
    assert loaded["test"][0] == {"prompt": "It is", "chosen": " great", "rejected": " dull"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_split_without_pairs_is_left_out(tmp_path):
    """datasets cannot save and load a split without rows: no validation pairs, no test split."""
    counts = save_pairs([r for r in ROWS if r["split"] == "train"], tmp_path / "pairs")
    assert counts == {"train": 2, "test": 0}
    assert list(datasets.load_from_disk(str(tmp_path / "pairs"))) == ["train"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", fail)
    with pytest.raises(OSError, match="disk full"):
        save_pairs(ROWS, tmp_path / "pairs")
    assert list(tmp_path.iterdir()) == []


def test_trl_trains_on_the_exported_pairs(tmp_path, tiny_lm_dir, torch_one_thread):
    """The folder goes to trl's DPOTrainer as it is: tokenised by trl (prompt, chosen and
    rejected ids, EOS appended) and one optimizer step taken with a finite loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    save_pairs(ROWS, tmp_path / "pairs")
    pairs = datasets.load_from_disk(str(tmp_path / "pairs"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
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


def test_the_folder_is_byte_identical_on_a_rerun(tmp_path):
    """DVC hashes the folder: the same pairs give the same bytes (fingerprints included)."""
    save_pairs(ROWS, tmp_path / "a")
    save_pairs(ROWS, tmp_path / "b")
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert files and all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
