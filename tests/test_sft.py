"""The ``sft`` stage (stages/sft.py) on a micro corpus with 1-layer models.

Every test runs the stage in ``tmp_path`` (never touching the repository's data), starting from
the repository's params.yaml with the ``sft`` section shrunk to seconds, and loads models from
folders through the same ``from_pretrained`` code path a hub id uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from stages.cli import build_app
from stages.lib.config import TinyGPT2Config, load_params
from stages.lib.modeling import (
    EOS,
    PAD,
    load_pretrained,
    save_pretrained,
    tiny_gpt2,
    train_bpe_tokenizer,
)
from stages.lib.synthetic import generate_splits
from stages.sft import perplexity, perplexity_warning, run_sft

ROOT = Path(__file__).resolve().parents[1]
TINY = TinyGPT2Config(vocab_size=320, n_layer=1, n_embd=32, n_head=2, n_positions=128)
#: The micro run: what the tests change in the repository's ``sft`` section.
MICRO = {
    "epochs": 2,
    "max_length": 128,
    "max_train_texts": None,
    "batch_size": 8,
    "learning_rate": 3.0e-3,
    "warmup": 0.0,
    "weight_decay": 0.0,
    "logging_steps": 1,
    "eval_texts": 10,
}


def write_micro_corpus(root, n_train: int = 100, n_test: int = 20, seed: int = 0) -> list[str]:
    """``data/prepared/{train,test}.jsonl`` of synthetic reviews under ``root``."""
    train, test = generate_splits(n_train, n_test, seed)
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["text"] for r in train]


def sft_params(**overrides) -> dict:
    """The repository's params with the ``sft`` section shrunk to :data:`MICRO` and
    ``overrides`` (``tiny`` merges into ``sft.tiny``)."""
    params = load_params(ROOT / "params.yaml")
    sft = params["sft"]
    sft.update(MICRO)
    sft["tiny"].update(dataclasses.asdict(TINY), **overrides.pop("tiny", {}))
    sft.update(overrides)
    return params


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
    model = tiny_gpt2(tokenizer, dataclasses.replace(TINY, n_positions=n_positions))
    if drop_pad:  # like hub gpt2: no pad token at all
        tokenizer.pad_token = None
        model.config.pad_token_id = None
    save_pretrained(model, tokenizer, folder)
    return folder


def train_texts() -> list[str]:
    return [json.loads(line)["text"] for line in open("data/prepared/train.jsonl")]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_sft_trains_loss_goes_down_and_saves_a_loadable_policy(workdir, torch_one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics, timings = run_sft(sft_params())
    assert metrics["final_train_loss"] < metrics["first_train_loss"] - 1.0
    assert metrics["train_texts"] == 100 and metrics["steps"] == 26
    assert math.isfinite(metrics["perplexity"]) and 1 < metrics["perplexity"] < 320
    assert json.loads((workdir / "metrics/sft.json").read_text()) == pytest.approx(metrics)
    assert set(metrics) == {
        "model",
        "epochs",
        "train_texts",
        "parameters",
        "train_loss",
        "first_train_loss",
        "final_train_loss",
        "steps",
        "eval_texts",
        "perplexity",
        "vocab_size",
        "perplexity_warning",
    }  # no wall times in the tracked metrics
    assert metrics["vocab_size"] == 320 and metrics["perplexity_warning"] is False
    assert json.loads((workdir / "logs/timings/sft.json").read_text()) == timings
    assert 0 < timings["train_seconds"] <= timings["wall_seconds"]
    assert (workdir / "logs/sft/metrics.json").is_file()  # DVCLive training curves
    model = AutoModelForCausalLM.from_pretrained(workdir / "models/sft")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models/sft")
    assert tokenizer.pad_token == PAD and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert not list(workdir.glob("models/.sft.tmp-*"))  # written atomically


def test_sft_same_seed_gives_identical_weights_and_logs(tmp_path, monkeypatch, torch_one_thread):
    weights, logs, metrics = [], [], []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_micro_corpus(folder, n_train=40, n_test=5)
        run_sft(sft_params(epochs=1))
        model, _ = load_pretrained("models/sft", "causal", "sft.model")
        weights.append(state(model))
        logs.append(tree(folder / "logs/sft"))
        metrics.append((folder / "metrics/sft.json").read_bytes())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert metrics[0] == metrics[1]
    assert "plots/metrics/loss.tsv" in logs[0] and logs[0] == logs[1]  # byte-identical curves
    assert not [name for name in logs[0] if "runtime" in name or "per_second" in name]
    assert b"runtime" not in logs[0]["metrics.json"] and b"output_dir" not in logs[0]["params.yaml"]


def test_max_train_texts_is_a_seeded_subset(workdir, torch_one_thread):
    metrics, _ = run_sft(sft_params(epochs=1, max_train_texts=16, batch_size=16))
    assert metrics["train_texts"] == 16 and metrics["steps"] == 1


def test_pretrained_folder_is_copied_with_epochs_0_and_gets_a_pad_token(workdir, capsys):
    source = save_tiny_lm(workdir / "pretrained", train_texts(), drop_pad=True)
    original, _ = load_pretrained(str(source), "causal", "sft.model")
    capsys.readouterr()
    metrics, _ = run_sft(sft_params(model=str(source), epochs=0))
    assert "no pad token" in capsys.readouterr().out  # the documented pad = eos fix-up
    assert metrics["train_texts"] == 0 and math.isfinite(metrics["perplexity"])
    assert (workdir / "logs/sft").is_dir()  # an empty but current log
    copied, tokenizer = load_pretrained("models/sft", "causal", "sft.model")
    assert tokenizer.pad_token == tokenizer.eos_token == EOS
    before, after = state(original), state(copied)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretrained_folder_is_fine_tuned(workdir, torch_one_thread):
    source = save_tiny_lm(workdir / "pretrained", train_texts())
    metrics, _ = run_sft(sft_params(model="./pretrained", epochs=1))
    assert metrics["final_train_loss"] < metrics["first_train_loss"]
    original, _ = load_pretrained(str(source), "causal", "sft.model")
    tuned, _ = load_pretrained("models/sft", "causal", "sft.model")
    assert not torch.equal(
        original.transformer.h[0].mlp.c_fc.weight, tuned.transformer.h[0].mlp.c_fc.weight
    )


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    texts = ["A great film, truly great.", "A dull film and a dull plot."] * 20
    tokenizer = train_bpe_tokenizer(texts, 280)
    model = tiny_gpt2(tokenizer, TINY)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the input embeddings: every logit is 0
        model.transformer.wte.weight.zero_()
    assert perplexity(model, tokenizer, texts[:3], 64, 2) == pytest.approx(len(tokenizer), rel=1e-5)


def save_confidently_wrong_lm(folder, texts):
    """A tiny LM whose logits are large and random: it is surer than uniform and wrong, so its
    perplexity is far above its vocabulary size (as a kept pretrained model on unlike data)."""
    tokenizer = train_bpe_tokenizer(texts, 320, model_max_length=128)
    torch.manual_seed(3)
    model = tiny_gpt2(tokenizer, TINY)
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0.0, 3.0)  # tied lm_head: sharp random logits
    save_pretrained(model, tokenizer, folder)
    return folder


# Issue 27 item 7: the old stage computed these perplexities silently (no warning line, no
# perplexity_warning / vocab_size in metrics/sft.json), so every test below failed on it.


def test_perplexity_warning_names_the_value_the_limit_and_what_to_do():
    line = perplexity_warning(4190.2, 2048, None)
    assert line == (
        "sft: warning: held-out perplexity 4190.20 is above the vocabulary size 2048 (worse "
        "than a uniform guess): the policy fits these texts poorly, and every aligned policy "
        "starts from it; fine-tune it (more) on them (sft.epochs) or pick a model that fits the "
        "data (sft.model)"
    )
    assert perplexity_warning(7.34, 2048, None) is None  # the demo: no warning
    assert perplexity_warning(2048.0, 2048, None) is None  # uniform itself is not above it
    assert "above sft.max_perplexity 50:" in perplexity_warning(60.0, 2048, 50.0)
    assert perplexity_warning(40.0, 2048, 50.0) is None
    both = perplexity_warning(5000.0, 2048, 100.0)
    assert (
        "above the vocabulary size 2048 (worse than a uniform guess) and sft.max_perplexity" in both
    )
    assert "\n" not in both


def test_a_policy_worse_than_uniform_is_flagged_in_the_metrics_and_the_output(workdir):
    save_confidently_wrong_lm(workdir / "wrong", train_texts())
    Path("params.yaml").write_text(yaml.safe_dump(sft_params(model="wrong", epochs=0)))
    result = CliRunner().invoke(build_app("sft"), ["sft"])
    assert result.exit_code == 0, result.output  # a warning, not an error
    metrics = json.loads(Path("metrics/sft.json").read_text())
    assert metrics["perplexity"] > 320 == metrics["vocab_size"]
    assert metrics["perplexity_warning"] is True and "max_perplexity" not in metrics
    warnings = [line for line in result.output.splitlines() if "warning" in line]
    assert warnings == [perplexity_warning(metrics["perplexity"], 320, None)]
    assert (
        f"held-out perplexity {metrics['perplexity']:.2f} is above the vocabulary size 320"
        in (warnings[0])
    )


def test_max_perplexity_warns_and_changes_no_other_value(workdir, torch_one_thread):
    run_sft(sft_params(epochs=1))  # trained: below its vocabulary size, no warning of its own
    shutil.copytree("models/sft", "trained")
    quiet, _ = run_sft(sft_params(model="trained", epochs=0))
    loud, _ = run_sft(sft_params(model="trained", epochs=0, max_perplexity=1.0))
    assert quiet["perplexity_warning"] is False and "max_perplexity" not in quiet
    assert loud["perplexity_warning"] is True and loud["max_perplexity"] == 1.0
    new = {"perplexity_warning", "max_perplexity"}
    assert {k: v for k, v in loud.items() if k not in new} == {
        k: v for k, v in quiet.items() if k not in new
    }
    assert json.loads(Path("metrics/sft.json").read_text()) == pytest.approx(loud)


def test_perplexity_does_not_depend_on_the_batch(tiny_lm):
    model, tokenizer = tiny_lm
    texts = ["the film was good", "a plot", "I loved it and the cast was brilliant", "dull"]
    one = perplexity(model, tokenizer, texts, 64, 1)
    assert perplexity(model, tokenizer, texts, 64, 4) == pytest.approx(one, rel=1e-5)


def test_unloadable_model_names_the_parameter(workdir):
    with pytest.raises(ValueError, match=r"^sft\.model: .*\(no such folder\)"):
        run_sft(sft_params(model="./missing-model", epochs=1))
    (workdir / "broken").mkdir()
    (workdir / "broken" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^sft\.model: cannot load 'broken' as a causal model"):
        run_sft(sft_params(model="broken", epochs=1))


def test_context_shorter_than_max_length_names_the_parameter(workdir):
    with pytest.raises(
        ValueError,
        match=r"^params: sft\.max_length: must be <= the model's "
        r"context of 64 positions .*, got 128$",
    ):
        run_sft(sft_params(tiny={"n_positions": 64}))
    save_tiny_lm(workdir / "short", train_texts(), n_positions=64)
    with pytest.raises(ValueError, match=r"^params: sft\.max_length: "):
        run_sft(sft_params(model="short", epochs=0))
    assert not (workdir / "models/sft").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, r"params: sft\.epochs is 0 but sft\.model is 'tiny'"),
        ({"epochs": -1}, r"params: sft\.epochs: must be >= 0, got -1"),
        (
            {"tiny": {"n_embd": 33}},
            r"params: sft\.tiny\.n_embd=33 must be divisible by "
            r"sft\.tiny\.n_head=2",
        ),
        ({"tiny": {"n_layer": 0}}, r"params: sft\.tiny\.n_layer: must be >= 1, got 0"),
        ({"learning_rate": "2e-3"}, r"params: sft\.learning_rate: must be float, got '2e-3'"),
        ({"warmup": 1.0}, r"params: sft\.warmup: must be in \[0, 1\), got 1\.0"),
        ({"max_train_texts": 0}, r"params: sft\.max_train_texts: must be null or >= 1, got 0"),
        ({"batch_sz": 8}, r"params: sft\.batch_sz: not a known key \(known: model, epochs, "),
        ({"tiny": None}, r"params: sft\.tiny: is missing"),
        (
            {"max_perplexity": 0.5},
            r"params: sft\.max_perplexity: must be null or a finite number >= 1, got 0\.5",
        ),
    ],
)
def test_bad_params_name_the_key(workdir, change, message):
    params = sft_params()
    tiny = change.pop("tiny", {})
    params["sft"]["tiny"] = None if tiny is None else {**params["sft"]["tiny"], **tiny}
    params["sft"].update(change)
    with pytest.raises(ValueError, match=f"^{message}"):
        run_sft(params)
    assert not (workdir / "models").exists() and not (workdir / "logs").exists()


def test_missing_section_or_seed(workdir):
    with pytest.raises(ValueError, match=r"^params: section 'sft' is missing$"):
        run_sft({"seed": 0})
    params = sft_params()
    del params["seed"]
    with pytest.raises(ValueError, match=r"^params: seed: is missing"):
        run_sft(params)
    with pytest.raises(ValueError, match=r"^params: sft\.model: is missing"):
        run_sft({"seed": 0, "sft": {k: v for k, v in sft_params()["sft"].items() if k != "model"}})


def test_cli_prints_wall_time_and_keeps_it_out_of_the_metrics(workdir):
    save_tiny_lm(workdir / "pretrained", train_texts())
    Path("params.yaml").write_text(yaml.safe_dump(sft_params(model="pretrained", epochs=0)))
    result = CliRunner().invoke(build_app("sft"), ["sft"])
    assert result.exit_code == 0, result.output
    lines = [x.strip() for x in result.output.replace("\r", "\n").splitlines()]  # tqdm's \r
    (line,) = [x for x in lines if x.startswith("sft: pretrained -> ")]
    assert line.startswith("sft: pretrained -> models/sft, held-out perplexity ")
    assert line.endswith("s)")
    # a randomly initialised model is a little worse than uniform: the warning line follows
    assert lines[-1].startswith("sft: warning: held-out perplexity")
    assert "wall_seconds" not in Path("metrics/sft.json").read_text()
    assert set(json.loads(Path("logs/timings/sft.json").read_text())) == {
        "train_seconds",
        "wall_seconds",
    }


def test_cli_error_is_one_line(workdir):
    Path("params.yaml").write_text(yaml.safe_dump(sft_params(epochs=-1)))
    result = CliRunner().invoke(build_app("sft"), ["sft"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: params: sft.epochs: must be >= 0, got -1"
