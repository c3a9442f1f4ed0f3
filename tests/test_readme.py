"""The README's trl snippet ("Train trl's DPOTrainer on our pairs") runs exactly as printed, on
the CPU: the code block is taken from README.md by its section heading and exec'd unchanged in a
folder holding what it reads (``models/sft``: the tests' tiny GPT-2; ``data/pairs-trl``: written
by ``save_pairs`` with that tokenizer, as the ``pairs`` stage writes it), and leaves the export
exactly as it was (trl's caches go to the ``datasets`` cache)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from stages.lib.trl_format import save_pairs

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Train trl's DPOTrainer on our pairs"

# 4 train prompts x 2 pairs = 8 train pairs (one batch of trl's default 8 per epoch), 2 val
# prompts x 2 pairs = 4 test pairs: trl's default 3 epochs are 3 optimizer steps.
WORDS = "good bad fine awful great dull brilliant boring".split()
ROWS = [
    {
        "prompt": f"The film {i} was",
        "completions": [f" {w}." for w in WORDS[j : j + 4]],
        "pairs": [[0, 1], [2, 3]],
        "split": split,
    }
    for i, (split, j) in enumerate(
        [("train", 0), ("train", 4), ("train", 2), ("train", 1), ("val", 0), ("val", 3)]
    )
]


def readme_block(heading: str) -> str:
    """The one ```python block of README.md's section ``heading`` (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == heading)
    except StopIteration:
        pytest.fail(f"README.md has no section {heading!r}: update tests/test_readme.py")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks = re.findall(r"^```python\n(.*?)^```$", "".join(lines[start:end]), re.M | re.S)
    if len(blocks) != 1:
        pytest.fail(
            f"README.md's section {heading!r} has {len(blocks)} ```python blocks, expected 1: "
            "update tests/test_readme.py"
        )
    return blocks[0]


def test_the_section_has_the_snippet():
    source = readme_block(SECTION)
    assert "DPOTrainer(" in source and "trainer.train()" in source


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 deprecations inside trl
def test_the_readme_trl_snippet_runs_as_printed_on_the_cpu(
    tmp_path, monkeypatch, tiny_lm_dir, torch_one_thread
):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = readme_block(SECTION)
    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")
    export = tmp_path / "data/pairs-trl"
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    eos = tokenizer.eos_token_id
    rows = [  # sampled completions that stopped: their texts' tokens + EOS
        {
            **row,
            "completion_ids": [tokenizer(c)["input_ids"] + [eos] for c in row["completions"]],
            "finished": [True] * len(row["completions"]),
        }
        for row in ROWS
    ]
    assert save_pairs(rows, export, tokenizer) == {"train": 8, "test": 4}
    before = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}
    cache = tmp_path / "hf-datasets"  # datasets' cache here, not in ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.chdir(tmp_path)

    # Unchanged, so trl's output_dir is the README's /tmp/trl-dpo (checkpoint-3 is written there).
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(source, f"{README}:{SECTION[3:]}", "exec"), namespace)  # the text as printed

    assert namespace["trainer"].state.global_step > 0
    saved = tmp_path / "models/external/trl-dpo"
    trained = AutoModelForCausalLM.from_pretrained(saved).state_dict()
    sft = AutoModelForCausalLM.from_pretrained(tmp_path / "models/sft").state_dict()
    assert trained.keys() == sft.keys()
    assert any(not torch.equal(trained[k], sft[k]) for k in sft)  # the trained weights were saved
    assert AutoTokenizer.from_pretrained(saved).get_vocab() == namespace["tok"].get_vocab()
    # Issue 27 item 4: the export is only read. (With trl 1.16.0 / datasets 5.2.0 a save_to_disk
    # folder loaded with load_from_disk got 3 cache-<fingerprint>.arrow files per split written
    # into it, and DVC saw `pairs` modified.) trl's map caches are in datasets' cache instead.
    after = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}
    assert after == before
    assert len(list(cache.rglob("cache-*.arrow"))) >= 6  # 3 maps x 2 splits, elsewhere
