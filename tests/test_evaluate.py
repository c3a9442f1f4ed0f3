"""The ``evaluate`` stage: held-out check, end to end on tiny models, bad input (the compute
itself: tests/test_lib_evaluate.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.evaluate import check_held_out, main, policy_dir
from stages.lib.config import TinyClassifierConfig, TinyGPT2Config, load_params
from stages.lib.evaluate import ENTROPY_KEYS, METRIC_KEYS
from stages.lib.modeling import save_pretrained, tiny_classifier, tiny_gpt2, train_bpe_tokenizer
from stages.lib.synthetic import generate_splits

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: The repository's params; tests override single keys of it.
PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
#: Small settings for tiny models (gold needs the synthetic source).
SMALL = {
    "n_prompts": 5,
    "n_samples": 2,
    "max_new_tokens": 8,
    "batch_size": 4,
    "bootstrap": 200,
    "logit_chunk": 16,
}
TINY_GPT2 = TinyGPT2Config(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=64)


def test_held_out_check():
    train = [{"prompt_id": "train-1", "prompt": "The film was"}]
    check_held_out([{"prompt_id": "test-1", "prompt": "The film is"}], train)  # held out
    check_held_out([{"prompt_id": "test-1", "prompt": "the film was"}], train)  # case counts
    with pytest.raises(ValueError, match="share their prompt_id .*first: 'train-1'"):
        check_held_out([{"prompt_id": "train-1", "prompt": "Other words here"}], train)
    for text in ("The film was", " The  film was "):  # whitespace-normalised text
        with pytest.raises(ValueError, match="share their text .*first: 'test-2'"):
            check_held_out(
                [
                    {"prompt_id": "test-1", "prompt": "Other words"},
                    {"prompt_id": "test-2", "prompt": text},
                ],
                train,
            )


def test_policy_dir():
    assert policy_dir("sft", 2) == Path("models/sft")  # one SFT policy, evaluated per seed
    assert policy_dir("dpo", 2) == Path("models/aligned/dpo/seed-2")  # the run of that seed
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="must be 'sft' or a variant name"):
            policy_dir(bad, 0)


# ------------------------------------------------------------------------ end to end, CLI


def _prompts(path: Path, prefix: str, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"prompt_id": f"{prefix}-{i}", "prompt": t}) + "\n"
            for i, t in enumerate(texts)
        )
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tmp repo with eval/train prompts, models/sft, models/aligned/dpo/seed-{0,1} and
    models/reward."""
    root = tmp_path_factory.mktemp("ws")
    train, test = generate_splits(30, 10, 1)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    model = tiny_gpt2(tok, TINY_GPT2).eval()
    _prompts(
        root / "data/prompts/train.jsonl", "train", [" ".join(r["text"].split()[:4]) for r in train]
    )
    _prompts(
        root / "data/prompts/eval.jsonl", "test", [" ".join(r["text"].split()[:4]) for r in test]
    )
    (root / "data/prepared").mkdir(parents=True)  # the eval prompts' reviews: fixed contexts
    (root / "data/prepared/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    save_pretrained(model, tok, root / "models/sft")
    for seed in (0, 1):
        torch.manual_seed(1 + seed)
        save_pretrained(tiny_gpt2(tok, TINY_GPT2), tok, root / f"models/aligned/dpo/seed-{seed}")
    rtok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    rm = tiny_classifier(
        rtok,
        TinyClassifierConfig(
            vocab_size=300, n_layers=1, dim=16, n_heads=2, max_position_embeddings=128
        ),
    )
    save_pretrained(rm, rtok, root / "models/reward")
    save_pretrained(rm, rtok, root / "models/aligned/classifier/seed-0")  # not a causal LM
    return root


def _app():
    app = typer.Typer()
    app.command()(stage_command(main))
    app.command("noop")(lambda: None)  # keep `evaluate` a named sub-command
    return app


def _run(root: Path, monkeypatch, policy: str, *args: str, **evaluate):
    params = {
        **PARAMS,
        "data": {**PARAMS["data"], "source": "synthetic"},
        "evaluate": {**PARAMS["evaluate"], **SMALL, **evaluate},
        "quality": {**PARAMS["quality"], "measures": []},  # tests/test_quality_reference.py
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    return CliRunner().invoke(_app(), ["main", policy, *args])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.slow
def test_evaluate_end_to_end(workspace, monkeypatch):
    for policy in ("sft", "dpo"):
        result = _run(workspace, monkeypatch, policy)  # --seed: the first of `seeds`, 0
        assert result.exit_code == 0, result.output
        metrics = json.loads((workspace / f"metrics/eval/{policy}/seed-0.json").read_text())
        assert set(metrics) == set(METRIC_KEYS) | set(ENTROPY_KEYS)  # no timings
        assert 0 < metrics["entropy_first_k"] <= np.log(300) + 1e-6
        assert 0 < metrics["context_entropy"] <= np.log(300) + 1e-6
        assert metrics["context_tokens"] == sum(
            r["context_tokens"] for r in _rows(workspace / f"data/eval/{policy}/seed-0.jsonl")
        )
        assert metrics["n_prompts"] == 5 and metrics["n_samples"] == 2
        assert metrics["reward_lo"] <= metrics["reward"] <= metrics["reward_hi"]
        assert metrics["gold_lo"] <= metrics["gold"] <= metrics["gold_hi"]
        assert 0 < metrics["entropy"] <= np.log(300) + 1e-6
        assert 0 < metrics["length"] <= 8 and 0 < metrics["distinct_2"] <= 1
        rows = _rows(workspace / f"data/eval/{policy}/seed-0.jsonl")
        assert len(rows) == 5 and all(len(r["completions"]) == 2 == len(r["rewards"]) for r in rows)
        assert metrics["nll"] == pytest.approx(
            -np.mean([v for r in rows for v in r["logp"]]), abs=1e-4
        )
        # n_generated (EOS included) weights the per-sample entropy into the token-weighted one
        n = [c for r in rows for c in r["n_generated"]]
        h = [e for r in rows for e in r["entropy"]]
        assert metrics["entropy"] == pytest.approx(np.dot(h, n) / sum(n), abs=1e-5)
        assert n == [
            length + done
            for r in rows
            for length, done in zip(r["length"], r["finished"], strict=True)
        ]
    sft = json.loads((workspace / "metrics/eval/sft/seed-0.json").read_text())
    dpo = json.loads((workspace / "metrics/eval/dpo/seed-0.json").read_text())
    assert sft["kl"] == 0.0 and dpo["kl"] != 0.0
    rows = _rows(workspace / "data/eval/dpo/seed-0.jsonl")
    kl = np.mean([a - b for r in rows for a, b in zip(r["logp"], r["logp_sft"])])
    assert dpo["kl"] == pytest.approx(kl, abs=1e-4)


@pytest.mark.slow
def test_each_seed_is_its_own_run(workspace, monkeypatch):
    """--seed picks the aligned policy of that seed and the sampling seed; sft is evaluated
    once per seed, on other samples."""
    for seed in ("0", "1"):
        for policy in ("sft", "dpo"):
            result = _run(workspace, monkeypatch, policy, "--seed", seed)
            assert result.exit_code == 0, result.output
            assert f"-> metrics/eval/{policy}/seed-{seed}.json" in result.output
    eval_dir = workspace / "data/eval"
    sft = [_rows(eval_dir / f"sft/seed-{s}.jsonl") for s in (0, 1)]
    dpo = [_rows(eval_dir / f"dpo/seed-{s}.jsonl") for s in (0, 1)]
    assert [r["prompt_id"] for r in sft[0]] == [r["prompt_id"] for r in sft[1]]  # same prompts
    assert [r["logp"] for r in sft[0]] != [r["logp"] for r in sft[1]]  # other samples
    # seed 1 evaluates models/aligned/dpo/seed-1: its KL to sft differs from seed 0's policy's
    assert [r["logp_sft"] for r in dpo[0]] != [r["logp_sft"] for r in dpo[1]]
    result = _run(workspace, monkeypatch, "dpo", "--seed", "7")
    assert result.exit_code == 1
    assert "error: models/aligned/dpo/seed-7: policy folder not found" in result.output


def test_each_model_is_loaded_once_per_run(workspace, monkeypatch, tmp_path):
    """One run loads the policy once (sampling, the scoring pass with every entropy, the fixed
    contexts) and, for an aligned policy, models/sft once (kl); the rows carry the first-k and
    context fields."""
    import stages.lib.evaluate as evaluation

    root = _copy(workspace, tmp_path / "once", "data", "models/sft", "models/aligned/dpo")
    loads = []
    real = evaluation.load_causal_lm
    monkeypatch.setattr(evaluation, "load_causal_lm", lambda p: loads.append(str(p)) or real(p))
    for policy, want in (
        ("sft", ["models/sft"]),
        ("dpo", ["models/aligned/dpo/seed-0", "models/sft"]),
    ):
        loads.clear()
        result = _run(root, monkeypatch, policy, "--no-reward", n_prompts=3, fixed_contexts=2)
        assert result.exit_code == 0, result.output
        assert loads == want
        rows = _rows(root / f"data/eval/{policy}/seed-0.jsonl")
        assert [len(r["n_first_k"]) for r in rows] == [2, 2, 2]
        assert ["context_tokens" in r for r in rows] == [True, True, False]


@pytest.mark.parametrize(
    "policy, settings, message",
    [
        ("sft", {"n_samples": 0}, ["error: params: evaluate.n_samples: must be >= 1, got 0"]),
        (
            "sft",
            {"n_prompts": 11},
            [
                "error: params: evaluate.n_prompts: must be <= the 10 prompts "
                "of data/prompts/eval.jsonl, got 11"
            ],
        ),
        ("sft", {"bootstrap": "many"}, ["error: params: evaluate.bootstrap: must be int"]),
        (
            "nope",
            {},
            ["error: models/aligned/nope/seed-0: policy folder not found (run its align/sft"],
        ),
        ("classifier", {}, ["error: models/aligned/classifier/seed-0", "causal"]),
        ("../x", {}, ["error: policy '../x' must be 'sft' or a variant name"]),
    ],
)
def test_bad_input_is_one_line_error(workspace, monkeypatch, policy, settings, message):
    result = _run(workspace, monkeypatch, policy, **settings)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert all(m in result.output for m in message), result.output


def test_eval_prompt_also_in_train_fails(workspace, monkeypatch, tmp_path):
    root = tmp_path / "leak"
    shutil.copytree(workspace / "data", root / "data")
    eval_rows = (root / "data/prompts/eval.jsonl").read_text()
    (root / "data/prompts/train.jsonl").write_text(eval_rows.splitlines()[0] + "\n")
    result = _run(root, monkeypatch, "sft")
    assert (
        result.exit_code == 1
        and "share their prompt_id with a prompt of data/prompts/train.jsonl" in result.output
    )


# ------------------------------------------------------------------------ bring your own


def _copy(workspace: Path, root: Path, *items: str) -> Path:
    for item in items:
        shutil.copytree(workspace / item, root / item)
    return root


def test_without_a_reward_model_reward_is_not_available(workspace, monkeypatch, tmp_path):
    """--no-reward: nothing reads models/reward (there is none here) nor reward.* / data.*;
    entropy, nll, kl and distinct-n are measured, reward and gold are null."""
    from stages.lib.contracts import EVALUATION, read_rows

    root = _copy(workspace, tmp_path / "plain", "data", "models/sft", "models/aligned/dpo")
    for policy in ("sft", "dpo"):
        result = _run(root, monkeypatch, policy, "--no-reward")
        assert result.exit_code == 0, result.output
        assert f"{policy} (seed 0): reward n/a (no reward model), entropy" in result.output
    metrics = json.loads((root / "metrics/eval/dpo/seed-0.json").read_text())
    assert set(metrics) == set(METRIC_KEYS) | set(ENTROPY_KEYS)  # the entropies need no reward
    assert all(metrics[k] is None for k in ("reward", "reward_lo", "reward_hi", "gold"))
    assert metrics["entropy"] > 0 and metrics["nll"] > 0 and metrics["kl"] != 0.0
    assert 0 < metrics["distinct_2"] <= 1 and metrics["n_prompts"] == 5
    rows = read_rows(root / "data/eval/dpo/seed-0.jsonl", EVALUATION)
    assert all("rewards" not in r and "gold" not in r and len(r["logp_sft"]) == 2 for r in rows)
    # without --no-reward the same folder fails: the reward model is missing
    result = _run(root, monkeypatch, "sft")
    assert result.exit_code == 1 and "models/reward: reward model not found" in result.output


def test_external_policy_folder(workspace, monkeypatch, tmp_path):
    """--external: models/external/<name> is any causal LM with the SFT tokenizer, evaluated
    like an aligned policy (kl against models/sft); another tokenizer is refused up front."""
    root = _copy(workspace, tmp_path / "ext", "data", "models/sft", "models/reward")
    shutil.copytree(workspace / "models/aligned/dpo/seed-1", root / "models/external/trl-dpo")
    result = _run(root, monkeypatch, "trl-dpo", "--external", "--seed", "1")
    assert result.exit_code == 0, result.output
    metrics = json.loads((root / "metrics/eval/trl-dpo/seed-1.json").read_text())
    assert metrics["kl"] != 0.0 and metrics["reward"] is not None
    rows = _rows(root / "data/eval/trl-dpo/seed-1.jsonl")
    assert all(len(r["logp_sft"]) == 2 for r in rows)

    train, _ = generate_splits(30, 10, 7)  # another corpus: another BPE vocabulary
    other = train_bpe_tokenizer([r["text"][::-1] for r in train], vocab_size=280)
    save_pretrained(tiny_gpt2(other, TINY_GPT2), other, root / "models/external/other")
    result = _run(root, monkeypatch, "other", "--external")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        "error: models/external/other: tokenizer differs from models/sft's (vocabulary: "
    )
    assert "; first difference " in result.output and ": not in the vocabulary vs id " in (
        result.output
    )
    assert not (root / "metrics/eval/other").exists() and not (root / "data/eval/other").exists()
    result = _run(root, monkeypatch, "missing", "--external")
    assert result.exit_code == 1
    assert "error: models/external/missing: no model found" in result.output
