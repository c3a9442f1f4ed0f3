"""Issue 27 item 4: training trl's DPOTrainer on the exported pairs leaves the DVC output as it
was. In a scratch DVC repository (``dvc init --no-scm``) a one-stage ``dvc.yaml`` writes the
export as the ``pairs`` stage does (``save_pairs``, out ``data/pairs-trl``); trl trains on it,
loaded as the README's snippet loads it; then ``dvc status`` reports nothing changed and
``dvc repro`` runs nothing. The same run on the former export (a ``save_to_disk`` folder read
with ``load_from_disk``) is the control: trl's caches land in the folder and DVC sees it
modified, so the check can fail."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_readme import ROWS, SECTION, readme_block

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = {  # the stage command's last lines: the export, and the former one
    "jsonl": "from stages.lib.trl_format import save_pairs\n"
    "save_pairs(rows, 'data/pairs-trl', tokenizer)\n",
    "save_to_disk": "import datasets\n"
    "from stages.lib.trl_format import pair_records\n"
    "datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in "
    "pair_records(rows, tokenizer).items()}).save_to_disk('data/pairs-trl')\n",
}
WRITE = (
    "import json\n"
    "from transformers import AutoTokenizer\n"
    "rows = json.load(open('rows.json'))\n"
    "tokenizer = AutoTokenizer.from_pretrained('models/sft')\n"
)
UP_TO_DATE = "Data and pipelines are up to date."


def readme_load_line() -> str:
    """The README snippet's line that loads the pairs (``pairs = ...``)."""
    found = re.findall(r"^pairs = .*$", readme_block(SECTION), re.M)
    assert len(found) == 1, f"README.md's section {SECTION!r}: expected one 'pairs = ' line"
    return found[0]


def dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 deprecations inside trl
@pytest.mark.parametrize(
    "export, load, clean",
    [
        ("jsonl", readme_load_line(), True),
        ("save_to_disk", 'pairs = datasets.load_from_disk("data/pairs-trl")', False),
    ],
    ids=["export-as-the-readme-loads-it", "control-save-to-disk"],
)
def test_dvc_status_after_trl_trains_on_the_export(
    tmp_path, monkeypatch, tiny_lm_dir, torch_one_thread, export, load, clean
):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    repo = tmp_path / "repo"
    shutil.copytree(tiny_lm_dir, repo / "models/sft")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    eos = tokenizer.eos_token_id
    rows = [
        {
            **r,
            "completion_ids": [tokenizer(c)["input_ids"] + [eos] for c in r["completions"]],
            "finished": [True] * len(r["completions"]),
        }
        for r in ROWS
    ]
    (repo / "rows.json").write_text(json.dumps(rows))
    (repo / "write.py").write_text(WRITE + EXPORTS[export])
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  pairs:\n"
        f"    cmd: {shlex.quote(sys.executable)} write.py\n"
        "    deps: [write.py, rows.json, models/sft]\n"
        "    outs: [data/pairs-trl]\n"
    )
    dvc(["init", "--no-scm", "-q"], repo)
    assert "Running stage 'pairs'" in dvc(["repro"], repo)
    assert UP_TO_DATE in dvc(["status"], repo)
    before = files(repo / "data/pairs-trl")

    cache = tmp_path / "hf-datasets"  # datasets' cache here, not in ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.chdir(repo)
    namespace: dict = {"datasets": datasets}
    exec(load, namespace)
    pairs = namespace["pairs"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained("models/sft"),
            args=DPOConfig(
                output_dir=str(tmp_path / "trl"),
                report_to="none",
                use_cpu=True,
                max_steps=2,
                per_device_train_batch_size=4,
                save_strategy="no",
                disable_tqdm=True,
            ),
            train_dataset=pairs["train"],
            eval_dataset=pairs["test"],
            processing_class=tokenizer,
        )
        assert trainer.train().global_step == 2
        trainer.evaluate()

    status = dvc(["status"], repo)
    new = sorted(str(f) for f in files(repo / "data/pairs-trl").keys() - before.keys())
    if clean:
        assert UP_TO_DATE in status and files(repo / "data/pairs-trl") == before
        assert "Running stage" not in dvc(["repro"], repo)
        assert len(list(cache.rglob("cache-*.arrow"))) >= 6  # trl's caches: 3 maps x 2 splits
    else:  # the former export: trl's caches in the folder, the output modified
        assert "modified:" in status and "data/pairs-trl" in status, status
        assert new and all(re.fullmatch(r"(train|test)/cache-[0-9a-f]+\.arrow", f) for f in new)
