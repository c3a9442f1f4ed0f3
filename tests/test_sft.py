"""The ``sft`` stage and the shared model helpers, on a micro corpus with 1-layer models.

Every test runs the stage in ``tmp_path`` (never touching the repository's data) and loads
models from folders through the same ``from_pretrained`` code path a hub id uses.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from stages.common import StageError
from stages.modeling import (EOS, PAD, load_pretrained, save_pretrained, tiny_gpt2,
                             train_bpe_tokenizer)
from stages.sft import perplexity, run_sft

TINY = {"vocab_size": 320, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128,
        "dropout": 0.0}


def write_micro_corpus(root, n_train: int = 100, n_test: int = 20, seed: int = 0) -> list[str]:
    """``data/prepared/{train,test}.jsonl`` of synthetic reviews under ``root``."""
    from stages.synthetic import generate_splits

    train, test = generate_splits(n_train, n_test, seed)
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["text"] for r in train]


def sft_params(**overrides) -> dict:
    sft = {"model": "tiny", "epochs": 2, "max_length": 128, "max_train_texts": None,
           "batch_size": 8, "learning_rate": 3.0e-3, "warmup": 0.0, "weight_decay": 0.0,
           "logging_steps": 1, "eval_texts": 10, "tiny": dict(TINY)}
    tiny = overrides.pop("tiny", {})
    sft.update(overrides)
    sft["tiny"].update(tiny)
    return {"seed": 0, "sft": sft}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh stage working directory holding the micro corpus."""
    monkeypatch.chdir(tmp_path)
    write_micro_corpus(tmp_path)
    return tmp_path


def save_tiny_lm(folder, texts, *, drop_pad: bool = False, n_positions: int = 128):
    """A randomly initialised tiny GPT-2 + tokenizer saved like a hub checkpoint."""
    tokenizer = train_bpe_tokenizer(texts, 320, model_max_length=n_positions)
    torch.manual_seed(1)
    model = tiny_gpt2(tokenizer, {**TINY, "n_positions": n_positions})
    if drop_pad:  # like hub gpt2: no pad token at all
        tokenizer.pad_token = None
        model.config.pad_token_id = None
    save_pretrained(model, tokenizer, folder)
    return folder


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bpe_tokenizer_has_distinct_pad_no_bos_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    texts = ["A great film, truly great.", "A dull film and a dull plot."] * 20
    tok = train_bpe_tokenizer(texts, 280)
    assert tok.eos_token == EOS and tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    ids = tok("A great film")["input_ids"]
    assert tok.eos_token_id not in ids and tok.decode(ids) == "A great film"  # nothing added
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("A great film" + EOS)["input_ids"] == ids + [tok.eos_token_id]
    assert loaded.pad_token == PAD and loaded.bos_token is None


def test_tiny_sft_trains_loss_goes_down_and_saves_a_loadable_policy(workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = run_sft(sft_params())
    assert metrics["final_train_loss"] < metrics["first_train_loss"] - 1.0
    assert metrics["train_texts"] == 100 and metrics["steps"] == 26
    assert math.isfinite(metrics["perplexity"]) and 1 < metrics["perplexity"] < 320
    assert json.loads((workdir / "metrics/sft.json").read_text()) == pytest.approx(metrics)
    assert (workdir / "logs/sft/metrics.json").is_file()  # DVCLive training curves
    model = AutoModelForCausalLM.from_pretrained(workdir / "models/sft")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models/sft")
    assert tokenizer.pad_token == PAD and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert not list(workdir.glob("models/.sft.tmp-*"))  # written atomically


def test_sft_same_seed_gives_identical_weights(tmp_path, monkeypatch):
    weights = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_micro_corpus(folder, n_train=40, n_test=5)
        run_sft(sft_params(epochs=1))
        model, _ = load_pretrained("models/sft", "causal", "sft.model")
        weights.append(state(model))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pretrained_folder_is_copied_with_epochs_0_and_gets_a_pad_token(workdir, capsys):
    texts = [json.loads(line)["text"] for line in open("data/prepared/train.jsonl")]
    source = save_tiny_lm(workdir / "pretrained", texts, drop_pad=True)
    original, _ = load_pretrained(str(source), "causal", "sft.model")
    capsys.readouterr()
    metrics = run_sft(sft_params(model=str(source), epochs=0))
    assert "no pad token" in capsys.readouterr().out  # the documented pad = eos fix-up
    assert metrics["train_texts"] == 0 and math.isfinite(metrics["perplexity"])
    copied, tokenizer = load_pretrained("models/sft", "causal", "sft.model")
    assert tokenizer.pad_token == tokenizer.eos_token == EOS
    before, after = state(original), state(copied)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretrained_folder_is_fine_tuned(workdir):
    texts = [json.loads(line)["text"] for line in open("data/prepared/train.jsonl")]
    source = save_tiny_lm(workdir / "pretrained", texts)
    metrics = run_sft(sft_params(model="./pretrained", epochs=1))
    assert metrics["final_train_loss"] < metrics["first_train_loss"]
    original, _ = load_pretrained(str(source), "causal", "sft.model")
    tuned, _ = load_pretrained("models/sft", "causal", "sft.model")
    assert not torch.equal(original.transformer.h[0].mlp.c_fc.weight,
                           tuned.transformer.h[0].mlp.c_fc.weight)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    texts = ["A great film, truly great.", "A dull film and a dull plot."] * 20
    tokenizer = train_bpe_tokenizer(texts, 280)
    model = tiny_gpt2(tokenizer, TINY)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the input embeddings: every logit is 0
        model.transformer.wte.weight.zero_()
    assert perplexity(model, tokenizer, texts[:3], 64, 2) == pytest.approx(len(tokenizer), rel=1e-5)


@pytest.mark.parametrize("name", ["./missing-model", "/nonexistent/folder", "not a hub id!"])
def test_unloadable_model_names_the_parameter(workdir, name):
    with pytest.raises(StageError, match=r"^sft\.model: .*(no such folder)"):
        run_sft(sft_params(model=name, epochs=1))


def test_folder_without_a_model_names_the_parameter(workdir):
    (workdir / "empty").mkdir()
    with pytest.raises(StageError, match=r"^sft\.model: folder 'empty' has no config.json"):
        run_sft(sft_params(model="empty", epochs=1))
    (workdir / "broken").mkdir()
    (workdir / "broken" / "config.json").write_text("{}")
    with pytest.raises(StageError, match=r"^sft\.model: cannot load 'broken' as a causal model"):
        run_sft(sft_params(model="broken", epochs=1))


def test_context_shorter_than_max_length_names_the_parameter(workdir):
    with pytest.raises(StageError, match=r"sft\.max_length=128 exceeds the model's context of 64"):
        run_sft(sft_params(tiny={"n_positions": 64}))
    texts = [json.loads(line)["text"] for line in open("data/prepared/train.jsonl")]
    save_tiny_lm(workdir / "short", texts, n_positions=64)
    with pytest.raises(StageError, match=r"sft\.max_length"):
        run_sft(sft_params(model="short", epochs=0))
    assert not (workdir / "models/sft").exists()


def test_bad_params_name_the_key(workdir):
    with pytest.raises(StageError, match=r"sft\.epochs is 0 but sft\.model is 'tiny'"):
        run_sft(sft_params(epochs=0))
    with pytest.raises(StageError, match=r"sft\.tiny\.n_embd=33 must be divisible by"):
        run_sft(sft_params(tiny={"n_embd": 33}))
    with pytest.raises(StageError, match=r"sft\.learning_rate must be float"):
        run_sft(sft_params(learning_rate="2e-3"))
    with pytest.raises(StageError, match=r"section 'sft' is missing"):
        run_sft({"seed": 0})


def test_training_curves_are_logged_in_a_git_repo_without_commits(tmp_path, monkeypatch):
    """DVCLive raises in a Git repo without commits (treeverse/dvclive#522); a freshly
    initialised project still gets its curves."""
    import shutil
    import subprocess

    from stages.modeling import open_live

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    live = open_live("logs/sft")
    live.log_metric("loss", 1.5)
    live.next_step()
    live.end()
    assert (tmp_path / "logs/sft/plots/metrics/loss.tsv").is_file()
