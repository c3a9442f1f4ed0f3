"""Dress rehearsal of the ``paper`` profile, offline: every code path it uses, end to end.

The ``paper`` profile needs the hub (``stanfordnlp/imdb``, ``lvwerra/gpt2-imdb``,
``lvwerra/distilbert-imdb``) and a GPU. The rehearsal runs its exact composed parameters
(``conf/config.yaml`` + ``conf/profile/paper.yaml``) through ``dvc repro`` in a scratch git +
DVC repository, except for:

* ``data.source``: the local IMDB copy (``../shared/data/imdb`` or ``$IMDB_DIR``);
* ``sft.model``: a saved GPT-2 124M (``GPT2Config()``: 12 layers, 768 wide, 50,257-token
  vocabulary; random weights) with a byte-level BPE tokenizer of exactly 50,257 tokens trained
  on the IMDB reviews (EOS, no pad token: like the hub's GPT-2 tokenizer);
* ``reward.model``: a saved DistilBERT classifier (``DistilBertConfig()``, 66M, two labels,
  random weights) with its own BPE tokenizer;
* the cuts (:data:`CUTS`): a handful of prompts, one variant (``dpo``), one seed, a few steps,
  small perplexity/accuracy sets.

So it exercises copying with ``epochs: 0`` (both models), the 50k-vocabulary logits in
``sample``, ``reference``, ``align`` and ``evaluate``, fused AdamW, the DistilBERT scorer and the
report. Each stage runs as ``dvc repro --single-item <stage>``; its wall time and peak resident
memory (``wait4``'s ``ru_maxrss`` of ``dvc repro``: the largest process of the stage, DVC's own
included) are
recorded, with the step-0 implicit rewards logged by ``align`` (β·r at the first step: zero up
to rounding when the policy starts as the SFT copy)::

    python -m stages bench --only paper          # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

#: What the rehearsal changes in the composed paper parameters besides the three sources.
CUTS = {
    "seeds": [0],
    "data": {"n_train_prompts": 40, "n_eval_prompts": 8},
    "sft": {"eval_texts": 8},
    "reward": {"eval_texts": 32},
    "evaluate": {"n_prompts": 8},
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def paper_params(root: Path, imdb: Path, sft: Path, reward: Path) -> dict:
    """The composed ``paper`` parameters with the local sources and :data:`CUTS`."""
    config = yaml.safe_load((root / "conf/config.yaml").read_text())
    config.pop("defaults", None)
    params = _merge(config, yaml.safe_load((root / "conf/profile/paper.yaml").read_text()))
    params = _merge(params, CUTS)
    params["data"]["source"] = str(imdb)
    params["sft"]["model"] = str(sft)
    params["reward"]["model"] = str(reward)
    params["align"]["variants"] = {"dpo": params["align"]["variants"]["dpo"]}
    return params


def _texts(imdb: Path, n: int) -> list[str]:
    with open(imdb / "train.jsonl") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def save_paper_models(folder: Path, imdb: Path) -> tuple[Path, Path]:
    """Save the GPT-2 124M policy and the DistilBERT reward model (random weights) described in
    the module docstring into ``folder``; returns their two folders."""
    import torch
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    from stages.lib.modeling import EOS, save_pretrained, train_bpe_tokenizer

    texts = _texts(imdb, 25_000)
    vocab = GPT2Config().vocab_size
    bpe = train_bpe_tokenizer(texts, vocab, model_max_length=1024)._tokenizer
    missing = vocab - bpe.get_vocab_size()
    if missing > 0:  # IMDB alone may not give 50,257 merges: fill the vocabulary up
        bpe.add_tokens([f"<|unused{i}|>" for i in range(missing)])
    gpt2_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, model_max_length=1024)
    if len(gpt2_tok) != vocab:
        raise ValueError(f"rehearsal: GPT-2 tokenizer has {len(gpt2_tok)} tokens, not {vocab}")
    torch.manual_seed(0)
    eos = gpt2_tok.eos_token_id
    policy = GPT2LMHeadModel(GPT2Config(bos_token_id=eos, eos_token_id=eos))
    save_pretrained(policy, gpt2_tok, folder / "gpt2-124m")
    bert_tok = train_bpe_tokenizer(texts[:5000], 8000, model_max_length=512)
    reward = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=30522, pad_token_id=bert_tok.pad_token_id, num_labels=2)
    )
    save_pretrained(reward, bert_tok, folder / "distilbert")
    return folder / "gpt2-124m", folder / "distilbert"


#: Runs a command and prints its peak resident memory. A child's ``ru_maxrss`` starts at the RSS
#: of the process that forked it (Linux keeps the pre-exec high-water mark), so the command is
#: started from this small interpreter, not from the benchmark holding torch and the models.
_PEAK = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(f'peak_kib={usage.ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _run(args: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak resident MiB (the largest process of the command) and output."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    peak = next((line for line in reversed(lines) if line.startswith("peak_kib=")), "peak_kib=0")
    output = proc.stdout + "\n".join(line for line in lines if not line.startswith("peak_kib="))
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise ValueError(
            f"rehearsal: {' '.join(args[2:])} failed (exit {proc.returncode}):\n{tail}"
        )
    return seconds, int(peak.split("=")[1]) / 1024, output


def step0_rewards(repo: Path) -> dict:
    """β·r of the chosen and rejected completions logged at ``align``'s first step."""
    out = {}
    for name in ("chosen_reward", "rejected_reward"):
        path = next((repo / "logs/align/dpo/seed-0/plots/metrics/train").glob(f"{name}.tsv"))
        with open(path) as f:
            first = next(csv.DictReader(f, delimiter="\t"))
        out[name] = float(first[name])
    return out


def rehearse(root: Path, imdb: Path, workdir: Path | None = None) -> dict:
    """Run the rehearsal with the code in ``root``; returns per-stage wall time and peak memory,
    the composed parameters and the step-0 rewards."""
    imdb = imdb.resolve()  # the stages run in the scratch repository
    if not (imdb / "train.jsonl").is_file():
        raise FileNotFoundError(f"rehearsal: {imdb / 'train.jsonl'} not found (set IMDB_DIR)")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        sft, reward = save_paper_models(tmp / "models", imdb)
        build_s = time.perf_counter() - start
        repo = tmp / "repo"
        repo.mkdir()
        for item in ("stages", "conf", "dvc.yaml"):
            src = root / item
            if src.is_dir():
                shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, repo / item)
        params = paper_params(root, imdb, sft, reward)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "STAGES_WARM": "0",  # each stage's own process: its peak memory is measured
            "GIT_AUTHOR_NAME": "rehearsal",
            "GIT_AUTHOR_EMAIL": "rehearsal@example.invalid",
            "GIT_COMMITTER_NAME": "rehearsal",
            "GIT_COMMITTER_EMAIL": "rehearsal@example.invalid",
            "PYTHONPATH": "",
        }
        dvc = [sys.executable, "-m", "dvc"]
        for args in (
            ["git", "init", "-q"],
            dvc + ["init", "-q"],
            ["git", "add", "-A"],
            ["git", "commit", "-qm", "paper rehearsal"],
        ):
            _run(args, repo, env)
        # dvc.yaml lists the stages in dependency order (`dvc repro --dry` cannot: it hashes
        # deps that do not exist yet)
        _, _, listed = _run(dvc + ["stage", "list", "--name-only"], repo, env)
        order = [line.strip() for line in listed.splitlines() if line.strip()]
        stages = {}
        for stage in order:
            seconds, mib, _ = _run(dvc + ["repro", "--single-item", stage], repo, env)
            stages[stage] = {"wall_s": round(seconds, 1), "peak_mib": round(mib)}
        summary = (repo / "reports/summary.md").read_text()
        return {
            "build_models_s": round(build_s, 1),
            "stages": stages,
            "total_s": round(sum(s["wall_s"] for s in stages.values()), 1),
            "peak_mib": max(s["peak_mib"] for s in stages.values()),
            "step0": step0_rewards(repo),
            "params": params,
            "summary_lines": len(summary.splitlines()),
        }
