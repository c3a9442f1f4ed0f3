"""Tests of the align stage on a micro preference project built in tmp (the trainer itself is
tested in tests/test_trainer.py).

    .venv/bin/python -m pytest tests/test_align.py -q

The micro project is a 1-layer, 32-wide GPT-2 with a byte-level BPE tokenizer trained on a few
sentences, 16 prompts × 4 completions scored by counting sentiment words, first-round pairs, and
reference log-probs computed with ``stages.lib.sequences`` (what the reference stage writes). The
variants are those of the repository's params.yaml, with test-sized ``align.common`` settings.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from stages.align import align, variant_config
from stages.lib.align import PromptCollator, TrainConfig, build_items, grouped_preference_loss
from stages.lib.config import load_params
from stages.lib.sequences import completion_logprobs, encode_batch
from stages.lib.variants import LossConfig

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
VARIANTS = list(PARAMS["align"]["variants"])

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "clumsy"]
NEUTRAL = ["the", "plot", "acting", "was", "and", "film", "story", "score", "ending", "cast"]
PROMPTS = ["The film was", "I thought the", "This movie is", "The acting in", "Overall the story"]


# ------------------------------------------------------------------------------ micro project


def _tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def _rows(n_prompts: int, k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        completions, rewards = [], []
        for _ in range(k):
            words = [
                rng.choice(rng.choice([POSITIVE, NEGATIVE, NEUTRAL, NEUTRAL]))
                for _ in range(rng.randint(3, 7))
            ]
            completions.append(" " + " ".join(words) + ".")
            rewards.append(
                float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))
            )
        order = list(range(k))
        rng.shuffle(order)
        pairs = []
        for a, b in zip(order[0::2], order[1::2]):  # first-round pairs, ties dropped
            if rewards[a] != rewards[b]:
                pairs.append([a, b] if rewards[a] > rewards[b] else [b, a])
        rows.append(
            {
                "prompt_id": f"p{i}",
                "prompt": PROMPTS[i % len(PROMPTS)],
                "completions": completions,
                "rewards": rewards,
                "pairs": pairs,
                "split": "val" if i % 4 == 3 else "train",
            }
        )
    return rows


def make_micro_project(root: Path, n_prompts: int = 16, k: int = 4, seed: int = 0) -> list[dict]:
    """Write models/sft, data/preferences.jsonl and data/reference.jsonl under ``root``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    rows = _rows(n_prompts, k, seed)
    tokenizer = _tokenizer([r["prompt"] + c for r in rows for c in r["completions"]] * 3)
    for i, r in enumerate(rows):  # the sampled ids: EOS last when finished (1 in 4 was cut)
        ids = tokenizer(r["completions"], add_special_tokens=False)["input_ids"]
        r["finished"] = [(i + j) % 4 != 0 for j in range(k)]
        eos = [tokenizer.eos_token_id]
        r["completion_ids"] = [c + eos if done else c for c, done in zip(ids, r["finished"])]
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=64,
            vocab_size=len(tokenizer),
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    model.eval()
    (root / "models").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root / "models/sft")
    tokenizer.save_pretrained(root / "models/sft")
    refs = []
    with torch.no_grad():
        for r in rows:
            batch = encode_batch(tokenizer, [r["prompt"]] * k, r["completion_ids"], 64)
            logps, n = completion_logprobs(model, batch)
            refs.append(
                {"prompt_id": r["prompt_id"], "logps": logps.tolist(), "n_tokens": n.tolist()}
            )
    (root / "data").mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "data/preferences.jsonl", rows)
    _write_jsonl(root / "data/reference.jsonl", refs)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _params(**common) -> dict:
    """params.yaml with test-sized ``align.common`` settings (variant settings untouched)."""
    params = copy.deepcopy(PARAMS)
    params["align"]["common"].update(
        {
            "epochs": 4,
            "batch_prompts": 4,
            "eval_batch_prompts": 8,
            "logging_steps": 2,
            "eval_steps": 6,
            "warmup_ratio": 0.0,
            "learning_rate": 3e-3,
            **common,
        }
    )
    return params


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models gain nothing from intra-op threads; one thread keeps timings stable on a
    shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("micro")
    make_micro_project(root)
    return root


@pytest.fixture
def project(micro, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the micro project as the working directory."""
    import shutil

    for sub in ("models", "data"):
        shutil.copytree(micro / sub, tmp_path / sub)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _dataset_loss(model_dir: Path, items: list[dict], cfg: LossConfig) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    collator = PromptCollator(AutoTokenizer.from_pretrained(model_dir), 64)
    with torch.no_grad():
        return grouped_preference_loss(model, collator(items), cfg).loss.item()


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_loss_for_every_default_variant(project, variant):
    params = _params()
    metrics = align(variant, params)
    _, loss_cfg = variant_config(params, variant)
    items = build_items(
        _read_jsonl(Path("data/preferences.jsonl")), _read_jsonl(Path("data/reference.jsonl"))
    )
    train = [i for i in items if i["split"] == "train"]
    before = _dataset_loss(Path("models/sft"), train, loss_cfg)
    after = _dataset_loss(Path(f"models/aligned/{variant}/seed-0"), train, loss_cfg)
    assert math.isfinite(after) and after < before, (variant, before, after)
    assert metrics["steps"] == 4 * math.ceil(len(train) / 4)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    saved = json.loads(Path(f"metrics/align/{variant}/seed-0.json").read_text())  # first seed
    assert saved == metrics and saved["variant"] == variant
    assert (saved["loss"], saved["divergence"], saved["beta"], saved["alpha"]) == (
        loss_cfg.loss,
        loss_cfg.divergence,
        loss_cfg.beta,
        loss_cfg.alpha,
    )
    assert not {"train_runtime_s", "wall_time_s"} & set(saved)  # timings stay out of git
    timings = json.loads(Path(f"logs/timings/align-{variant}-0.json").read_text())
    assert set(timings) == {"train_runtime_s", "wall_time_s"}
    assert 0 < timings["train_runtime_s"] <= timings["wall_time_s"]
    curves = Path(f"logs/align/{variant}/seed-0/plots/metrics")
    assert (curves / "train/loss.tsv").is_file() and (curves / "eval/accuracy.tsv").is_file()
    assert Path(f"models/aligned/{variant}/seed-0/tokenizer.json").is_file()
    assert not list(Path("models/aligned").rglob(".*"))  # no staging folder left


# ------------------------------------------------------------------------------ non-finite values


def test_nonfinite_loss_leaves_no_model(project, monkeypatch):
    import stages.lib.align

    real = stages.lib.align.preference_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the 3rd training step
            return type(out)(out.losses * float("inf"), out.chosen_rewards, out.rejected_rewards)
        return out

    monkeypatch.setattr(stages.lib.align, "preference_loss", poisoned)
    with pytest.raises(FloatingPointError) as err:
        align("alpha-0_5", _params(eval_steps=100))
    msg = str(err.value)
    assert msg.startswith("align@alpha-0_5-0: non-finite loss at step 3 ") and "\n" not in msg
    assert not Path("models/aligned/alpha-0_5/seed-0").exists()
    assert not list(Path("models/aligned").rglob(".*"))
    assert not Path("metrics/align/alpha-0_5/seed-0.json").exists()


# ------------------------------------------------------------------------------ bad inputs


def _set(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


@pytest.mark.parametrize(
    "variant, dotted, value, expected",
    [
        (
            "hinge",
            "align.variants.hinge.beta",
            -1.0,  # the exact message
            "params: align.variants.hinge.beta: must be a finite number > 0, got -1.0",
        ),
        ("dpo", "align.variants.dpo.beta", 0, "params: align.variants.dpo.beta: must be a finite"),
        (
            "dpo",
            "align.variants.dpo.loss",
            "logistic",
            "params: align.variants.dpo.loss: must be one of sigmoid, hinge, ipo, robust, "
            "sigmoid_norm, apo_zero, slic_hf, plackett_luce, rrhf, got 'logistic'",
        ),
        ("jsd", "align.variants.jsd.divergence", "tv", "params: align.variants.jsd.divergence: "),
        (
            "alpha-0_5",
            "align.variants.alpha-0_5.alpha",
            1.0,
            "params: align.variants.alpha-0_5.alpha: must be in the open interval (0, 1)",
        ),
        (
            "alpha-0_1",
            "align.variants.alpha-0_1.alpha",
            0.0,
            "params: align.variants.alpha-0_1.alpha: ",
        ),
        (
            "alpha-0_3",
            "align.variants.alpha-0_3.alpha",
            None,
            "params: align.variants.alpha-0_3.alpha: required for divergence 'alpha'",
        ),
        (
            "fkl",
            "align.variants.fkl.alpha",
            0.5,
            "params: align.variants.fkl.alpha: only used by divergence 'alpha', not 'forward_kl'",
        ),
        (
            "ipo",
            "align.variants.ipo.divergence",
            "jsd",
            "params: align.variants.ipo.divergence: loss 'ipo' requires divergence 'reverse_kl'",
        ),
        ("dpo", "align.variants.dpo", None, "params: align.variants.dpo.loss: is missing ("),
        (
            "dpo",
            "align.common.learning_rate",
            -1e-3,
            "params: align.common.learning_rate: must be > 0, got -0.001",
        ),
        (
            "ipo",
            "align.variants.ipo.learning_rate",
            0.0,  # ipo overrides the common rate
            "params: align.variants.ipo.learning_rate: must be > 0, got 0.0",
        ),
        (
            "dpo",
            "align.variants.dpo.learning_rate",
            "fast",
            "params: align.variants.dpo.learning_rate: must be float, got 'fast'",
        ),
        (
            "dpo",
            "align.common.batch_prompts",
            0,
            "params: align.common.batch_prompts: must be >= 1",
        ),
        (
            "dpo",
            "align.variants.dpo.batch_prompts",
            0,
            "params: align.variants.dpo.batch_prompts: must be >= 1, got 0",
        ),
        (
            "dpo",
            "align.common.lr_scheduler",
            "zigzag",
            "params: align.common.lr_scheduler: must be one of ",
        ),
        (
            "dpo",
            "align.common.optimizer",
            "adam",
            "params: align.common.optimizer: must be one of ",
        ),
        (
            "dpo",
            "align.common.seed",
            0,  # the run's seed comes from `seeds` / --seed
            "params: align.common.seed: not allowed: the training seed is the run's seed, "
            "from `seeds` (python -m stages align dpo --seed <s>)",
        ),
        (
            "ipo",
            "align.variants.ipo.seed",
            3,
            "params: align.variants.ipo.seed: not allowed: the training seed is the run's seed",
        ),
        ("dpo", "seeds", [], "params: seeds: must be a non-empty list of distinct integers"),
        (
            "dpo",
            "align.variants.dpo.lr",
            1e-3,
            "params: align.variants.dpo.lr: not a known key (known: optimizer, learning_rate, ",
        ),
        ("dpo", "align.common.lr", 1e-3, "params: align.common.lr: not a known key (known: "),
        (
            "dpo",
            "align.common",
            {"optimizer": "adamw_torch"},
            "params: align.common.learning_rate: is missing (",
        ),
        ("dpo", "align.common", [], "params: align.common: must be a mapping, got []"),
        (
            "dpo",
            "align.variants.dpo",
            "sigmoid",
            "params: align.variants.dpo: must be a mapping, got 'sigmoid'",
        ),
    ],
)
def test_bad_params_fail_before_training(project, variant, dotted, value, expected):
    with pytest.raises(ValueError) as err:
        align(variant, _set(_params(), dotted, value))
    run = variant if dotted == "seeds" else f"{variant}-0"  # the stage name align@<variant>-<seed>
    assert str(err.value).startswith(f"align@{run}: {expected}"), str(err.value)
    if variant == "hinge":
        assert str(err.value) == f"align@hinge-0: {expected}"
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


def test_the_error_names_the_key_where_it_was_set():
    """A key set in both sections is the variant's; one set nowhere belongs to its section."""
    params = _params(beta=0.5, loss="hinge")
    train, loss = variant_config(params, "dpo")  # the variant's own loss and beta win
    assert (loss.loss, loss.beta) == ("sigmoid", 0.3)
    del params["align"]["variants"]["dpo"]["loss"]
    assert variant_config(params, "dpo")[1].loss == "hinge"  # taken from align.common
    params["align"]["common"]["loss"] = "nope"
    with pytest.raises(ValueError, match=r"^params: align\.common\.loss: must be one of "):
        variant_config(params, "dpo")
    del params["align"]["common"]["loss"]
    with pytest.raises(ValueError, match=r"^params: align\.variants\.dpo\.loss: is missing"):
        variant_config(params, "dpo")
    del params["align"]["common"]["eval_steps"]
    with pytest.raises(ValueError, match=r"^params: align\.common\.eval_steps: is missing"):
        variant_config(params, "ipo")


def test_variant_config_builds_the_typed_settings():
    train, loss = variant_config(PARAMS, "ipo")
    assert isinstance(train, TrainConfig) and isinstance(loss, LossConfig)
    common = PARAMS["align"]["common"]
    assert train.learning_rate == PARAMS["align"]["variants"]["ipo"]["learning_rate"]  # override
    assert train.learning_rate != common["learning_rate"]
    assert (train.epochs, train.seed, train.max_length) == (
        float(common["epochs"]),
        PARAMS["seeds"][0],  # the training seed is the run's: by default the first of `seeds`
        common["max_length"],
    )
    assert variant_config(PARAMS, "ipo", 2)[0].seed == 2
    assert loss == LossConfig("ipo", "reverse_kl", 5.0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("alpha-0.1", r"align@alpha-0\.1-0: variant name 'alpha-0\.1' must match .*'alpha-0_1'"),
        ("-dpo", r"align@-dpo-0: variant name"),
        ("dpo@2", r"align@dpo@2-0: variant name"),
        ("sft", r"align@sft-0: params: align\.variants\.sft: is missing \(variants: dpo, "),
    ],
)
def test_bad_variant_names(project, name, expected):
    params = _params()
    params["align"]["variants"][name] = {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1}
    if name == "sft":
        del params["align"]["variants"][name]
    with pytest.raises(ValueError, match=expected):
        align(name, params)


def _edit_jsonl(path: str, edit) -> None:
    rows = _read_jsonl(Path(path))
    rows = edit(rows)
    _write_jsonl(Path(path), rows)


@pytest.mark.parametrize(
    "path, edit, expected",
    [
        (
            "data/preferences.jsonl",
            lambda rows: [{**r, "pairs": []} for r in rows],
            r"align@dpo-0: data/preferences\.jsonl: no preference pairs in split 'train'",
        ),
        (
            "data/preferences.jsonl",
            lambda rows: [{**r, "split": "test"} for r in rows],
            r"align@dpo-0: data/preferences\.jsonl: row 1: split must be",
        ),
        (
            "data/reference.jsonl",
            lambda rows: rows[:-1],
            r"align@dpo-0: data/reference\.jsonl: 15 rows for 16 preferences rows",
        ),
        (
            "data/reference.jsonl",
            lambda rows: [rows[1], rows[0], *rows[2:]],
            r"align@dpo-0: data/reference\.jsonl:1: row 'p1' .* does not match preferences row 'p0'",
        ),
        (
            "data/reference.jsonl",
            lambda rows: [
                {**rows[0], "logps": rows[0]["logps"][:3], "n_tokens": rows[0]["n_tokens"][:3]},
                *rows[1:],
            ],
            r"align@dpo-0: data/reference\.jsonl:1: row 'p0' with 3 log-probs does not match .* 4 completions",
        ),
        (
            "data/reference.jsonl",
            lambda rows: [{**rows[0], "logps": [float("nan")] * 4}, *rows[1:]],
            r"align@dpo-0: data/reference\.jsonl:1: logps must hold finite numbers",
        ),
        (
            "data/reference.jsonl",
            lambda rows: [{**rows[0], "n_tokens": [n + 1 for n in rows[0]["n_tokens"]]}, *rows[1:]],
            r"align@dpo-0: params: align\.common\.max_length=64 gives token counts",
        ),
    ],
)
def test_bad_data_fails_before_training(project, path, edit, expected):
    _edit_jsonl(path, edit)
    with pytest.raises(ValueError, match=expected) as err:
        align("dpo", _params())
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


def test_reference_truncated_by_max_length_is_detected(project):
    with pytest.raises(ValueError, match=r"align@dpo-0: params: align\.common\.max_length=10 "):
        align("dpo", _params(max_length=10))
    params = _params()
    params["align"]["variants"]["dpo"]["max_length"] = 12
    with pytest.raises(
        ValueError, match=r"align@dpo-0: params: align\.variants\.dpo\.max_length=12 "
    ):
        align("dpo", params)


def test_missing_sft_model_is_named(project):
    import shutil

    shutil.rmtree("models/sft")
    with pytest.raises(FileNotFoundError, match=r"^align@dpo-0: models/sft: no model found"):
        align("dpo", _params())


def test_cpu_training_is_deterministic(project):
    first = align("jsd", _params(epochs=1))
    second = align("jsd", _params(epochs=1))
    for key in ("train_loss", "val_loss", "val_accuracy", "val_margin"):
        assert first[key] == second[key], key


# ------------------------------------------------------------------------------ run seeds


def test_seed_picks_the_run_and_its_files(project):
    """`--seed` is the training seed and names the run's files; the default is seeds[0]."""
    import typer
    import yaml
    from typer.testing import CliRunner

    from stages.align import main
    from stages.cli import stage_command

    params = _params(epochs=1)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    app = typer.Typer()
    app.command()(stage_command(main))
    app.command("noop")(lambda: None)  # keep `main` a named sub-command
    result = CliRunner().invoke(app, ["main", "jsd", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "align@jsd-1: " in result.output
    seeded = json.loads(Path("metrics/align/jsd/seed-1.json").read_text())
    assert Path("models/aligned/jsd/seed-1/config.json").is_file()
    assert (Path("logs/align/jsd/seed-1/plots/metrics/train/loss.tsv")).is_file()
    logged = Path("logs/align/jsd/seed-1/params.yaml").read_text()
    assert yaml.safe_load(logged)["seed"] == 1  # TrainingArguments' seed is the run's
    assert not Path("models/aligned/jsd/seed-0").exists()
    first = align("jsd", params)  # default: the first of `seeds`
    assert Path("metrics/align/jsd/seed-0.json").is_file()
    assert first["train_loss"] != seeded["train_loss"]  # another data order, another run


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(project):
    """`accelerate launch` with two CPU processes (DDP over gloo, as two GPUs would run it): each
    rank takes batch_prompts prompts a step, so the run takes half the steps of one process; rank
    0 alone writes the outputs, and every rank exits cleanly (``stages.cli.end_distributed``)."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    params = _params(epochs=1)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    result = subprocess.run(
        [*cmd, "-m", "stages", "align", "jsd", "--seed", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads(Path("metrics/align/jsd/seed-0.json").read_text())
    assert "align@jsd-0: train " in result.stdout  # rank 0's timing line
    assert Path("models/aligned/jsd/seed-0/model.safetensors").is_file()
    assert not list(Path("models/aligned/jsd").glob(".*"))  # no staging folder left behind
    one = align("jsd", params)  # the same run in one process
    assert two["steps"] == math.ceil(one["steps"] / 2)
    assert two["train_prompts"] == one["train_prompts"]


@pytest.mark.slow
def test_a_warm_run_writes_what_a_cold_one_does(project, tmp_path_factory):
    """``STAGES_WARM=1`` (a child forked from a server that has torch imported) trains the same
    run as a fresh process: the model's and the metrics' bytes are equal, the logged curves too."""
    import filecmp
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    Path("params.yaml").write_text(yaml.safe_dump(_params(epochs=1)))
    runtime = tmp_path_factory.mktemp("warm")
    runtime.chmod(0o700)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    env.update({"STAGES_WARM_DIR": str(runtime), "STAGES_WARM_IDLE": "30"})
    outputs = ("models/aligned/jsd/seed-0", "metrics/align/jsd/seed-0.json", "logs/align/jsd")
    runs = {}
    try:
        for mode in ("cold", "warm", "warm again"):
            env["STAGES_WARM"] = "0" if mode == "cold" else "1"
            result = subprocess.run(
                [sys.executable, "-m", "stages", "align", "jsd", "--seed", "0"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr[-2000:]
            assert "running cold" not in result.stderr
            runs[mode] = Path(f"run-{mode.replace(' ', '-')}")
            for out in outputs:
                (runs[mode] / out).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(out, runs[mode] / out)
    finally:
        subprocess.run([sys.executable, "-m", "stages.warm_server", "stop"], env=env, check=False)
    assert len(list(runtime.glob("*.log"))) == 1  # one server served both warm runs
    for mode in ("warm", "warm again"):
        compared = filecmp.dircmp(runs["cold"], runs[mode])
        assert _same_tree(compared), f"{mode}: {compared.report_full_closure()}"


def _same_tree(cmp) -> bool:
    """Every file in both trees, with equal bytes (``filecmp.dircmp`` compares shallowly)."""
    import filecmp

    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(s) for s in cmp.subdirs.values())


# ------------------------------------------------------------------------------ the newer losses

NEW_VARIANTS = {
    "pl": {"loss": "plackett_luce", "divergence": "reverse_kl", "beta": 0.3},
    "rrhf": {"loss": "rrhf", "sft_weight": 1.0},
    "rso-hinge-sft": {"loss": "hinge", "divergence": "reverse_kl", "beta": 0.3, "sft_weight": 0.5},
    "slic-hf": {"loss": "slic_hf", "margin": 1.0, "sft_weight": 0.5},
    "robust": {"loss": "robust", "divergence": "jsd", "beta": 0.3, "label_smoothing": 0.1},
}


def _new_params(**common) -> dict:
    params = _params(**common)
    params["align"]["variants"].update(copy.deepcopy(NEW_VARIANTS))
    return params


@pytest.mark.parametrize("variant", list(NEW_VARIANTS))
def test_new_loss_variants_train_and_lower_their_loss(project, variant):
    params = _new_params()
    metrics = align(variant, params)
    _, loss_cfg = variant_config(params, variant)
    assert loss_cfg.listwise == (variant in ("pl", "rrhf"))
    items = build_items(
        _read_jsonl(Path("data/preferences.jsonl")), _read_jsonl(Path("data/reference.jsonl"))
    )
    train = [i for i in items if i["split"] == "train"]
    before = _dataset_loss(Path("models/sft"), train, loss_cfg)
    after = _dataset_loss(Path(f"models/aligned/{variant}/seed-0"), train, loss_cfg)
    assert math.isfinite(after) and after < before, (variant, before, after)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_margin"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    # margin and sft_reduction are recorded only where they act
    assert metrics.get("margin") == NEW_VARIANTS[variant].get("margin")
    reduction = {"rrhf": "sum", "slic-hf": "sum", "rso-hinge-sft": "mean"}.get(variant)
    assert metrics.get("sft_reduction") == reduction


def _one_completion(rows: list[dict], index: int) -> list[dict]:
    row = rows[index]
    for key in ("completions", "rewards", "completion_ids", "finished"):
        row[key] = row[key][:1]
    row["pairs"] = []
    return rows


@pytest.mark.parametrize(
    "variant, dotted, value, expected",
    [
        (
            "rrhf",
            "align.variants.rrhf.divergence",
            "reverse_kl",
            "params: align.variants.rrhf.divergence: not used by loss 'rrhf' (it ranks "
            "length-normalised policy log-probs, without reference or score): remove it",
        ),
        (
            "rrhf",
            "align.variants.rrhf.sft_weight",
            -1,
            "params: align.variants.rrhf.sft_weight: must be a finite number >= 0, got -1.0",
        ),
        (
            "robust",
            "align.variants.robust.label_smoothing",
            0.5,
            "params: align.variants.robust.label_smoothing: must be in [0, 0.5), got 0.5",
        ),
        (
            "rso-hinge-sft",
            "align.variants.rso-hinge-sft.label_smoothing",
            0.1,
            "params: align.variants.rso-hinge-sft.label_smoothing: only used by losses sigmoid, "
            "robust, not 'hinge': remove it, got 0.1",
        ),
        (
            "slic-hf",
            "align.variants.slic-hf.margin",
            0,
            "params: align.variants.slic-hf.margin: must be a finite number > 0, got 0.0",
        ),
        (
            "slic-hf",
            "align.variants.slic-hf.beta",
            0.3,
            "params: align.variants.slic-hf.beta: not used by loss 'slic_hf' (it compares summed "
            "policy log-probs, without reference or score; its margin is `margin`): remove it",
        ),
        (
            "rrhf",
            "align.variants.rrhf.sft_reduction",
            "tokens",
            "params: align.variants.rrhf.sft_reduction: must be one of mean, sum, got 'tokens'",
        ),
        (
            "pl",
            "align.variants.pl.loss",
            "listmle",
            "params: align.variants.pl.loss: must be one of sigmoid, hinge, ipo, robust, ",
        ),
        (
            "pl",
            "align.common.sft_weight",
            "a lot",
            "params: align.common.sft_weight: must be float, got 'a lot'",
        ),
    ],
)
def test_bad_new_loss_params_fail_before_training(project, variant, dotted, value, expected):
    with pytest.raises(ValueError) as err:
        align(variant, _set(_new_params(), dotted, value))
    assert str(err.value).startswith(f"align@{variant}-0: {expected}"), str(err.value)
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


@pytest.mark.parametrize("variant", ("pl", "rrhf"))
def test_listwise_loss_needs_two_completions_per_prompt(project, variant):
    rows = _one_completion(_read_jsonl(Path("data/preferences.jsonl")), 2)
    _write_jsonl(Path("data/preferences.jsonl"), rows)
    with pytest.raises(ValueError) as err:
        align(variant, _new_params())
    assert str(err.value) == (
        f"align@{variant}-0: params: align.variants.{variant}.loss: listwise loss "
        f"'{NEW_VARIANTS[variant]['loss']}' needs >= 2 completions per prompt, "
        "data/preferences.jsonl row 3 has 1 (see sample.n_per_prompt)"
    )
    assert not Path("logs").exists() and not Path("models/aligned").exists()


# ------------------------------------------------------------------------------ curriculum


@pytest.mark.parametrize("order", ["easy_to_hard", "hard_to_easy"])
def test_a_curriculum_trains_on_the_prompts_in_margin_order(project, monkeypatch, order):
    """Every epoch reads the training prompts by their reward margin (the collator sees them in
    that order), and the run records its curriculum."""
    from stages.lib import align as align_trainer
    from stages.lib.align import curriculum_order, prompt_margin
    from stages.lib.contracts import PREFERENCES, read_rows

    seen: list[str] = []
    call = align_trainer.PromptCollator.__call__

    def spy(self, items):
        if all(i["split"] == "train" for i in items):
            seen.extend(i["prompt_id"] for i in items)
        return call(self, items)

    monkeypatch.setattr(align_trainer.PromptCollator, "__call__", spy)
    metrics = align("dpo", _params(epochs=2, curriculum=order, eval_steps=1000))
    rows = read_rows("data/preferences.jsonl", PREFERENCES)
    train = [r for r in rows if r["split"] == "train" and r["pairs"]]
    expected = [i["prompt_id"] for i in curriculum_order(train, order, seed=0)]  # seeds[0]
    margins = {r["prompt_id"]: prompt_margin(r) for r in train}
    sign = -1.0 if order == "easy_to_hard" else 1.0
    top = sorted(margins, key=lambda p: (sign * margins[p], p))[: len(train) // 10]
    assert set(seen[: len(top)]) == set(top)  # the first level is the easiest (hardest) tenth
    assert seen == expected * 2  # two epochs, the same order each
    assert metrics["curriculum"] == order
    shuffled = align("dpo", _params(epochs=2, eval_steps=1000))
    assert shuffled["curriculum"] == "shuffle" and shuffled["train_loss"] != metrics["train_loss"]


# ------------------------------------------------------------------------------ re-pairing (pairs)


def _untied(row: dict) -> int:
    r = row["rewards"]
    return sum(r[i] != r[j] for i in range(len(r)) for j in range(i + 1, len(r)))


def test_pairs_all_trains_on_every_untied_pair_and_records_it(project):
    params = _params(epochs=1)
    params["align"]["variants"]["dpo"]["pairs"] = "all"
    metrics = align("dpo", params)
    rows = _read_jsonl(Path("data/preferences.jsonl"))
    train = [r for r in rows if r["split"] == "train" and _untied(r)]
    val = [r for r in rows if r["split"] == "val" and _untied(r)]
    assert metrics["pairs"] == "all"
    assert metrics["train_prompts"] == len(train) and metrics["val_prompts"] == len(val)
    assert metrics["train_pairs"] == sum(_untied(r) for r in train)
    assert metrics["val_pairs"] == sum(_untied(r) for r in val)
    first_round = sum(len(r["pairs"]) for r in rows if r["split"] == "train")
    assert metrics["train_pairs"] > first_round  # more than the file's pairs
    assert metrics["steps"] == math.ceil(len(train) / 4)
    for key in ("train_loss", "val_loss", "val_accuracy", "val_margin"):
        assert math.isfinite(metrics[key]), key
    assert json.loads(Path("metrics/align/dpo/seed-0.json").read_text()) == metrics


def test_pairs_null_is_a_no_op(project):
    """The default (null, in params.yaml) records no `pairs` metric, keeps the committed demo
    metrics' keys, and reads no global seed: a run without the key or the seed is the same."""
    params = _params(epochs=1, eval_steps=1000)
    assert params["align"]["common"]["pairs"] is None
    metrics = align("dpo", params)
    assert "pairs" not in metrics
    committed = json.loads((ROOT / "metrics/align/dpo/seed-0.json").read_text())
    assert set(metrics) == set(committed)
    del params["align"]["common"]["pairs"], params["seed"]
    assert align("dpo", params) == metrics


def test_pairs_of_the_files_strategy_train_the_same_run(project):
    """Preferences built by the pairs stage's own code (first_round, global seed 5): a run
    re-pairing them with first_round under the same global seed is the run on the file's pairs."""
    from stages.lib.config import PairsConfig
    from stages.lib.preferences import build_preferences

    rows = _read_jsonl(Path("data/preferences.jsonl"))
    for r in rows:
        del r["pairs"], r["split"]
    prefs, _ = build_preferences(rows, PairsConfig(strategy="first_round", val_fraction=0.2), 5)
    kept = {p["prompt_id"] for p in prefs}
    refs = [r for r in _read_jsonl(Path("data/reference.jsonl")) if r["prompt_id"] in kept]
    _write_jsonl(Path("data/preferences.jsonl"), prefs)
    _write_jsonl(Path("data/reference.jsonl"), refs)
    params = _params(epochs=1, eval_steps=1000)
    params["seed"] = 5
    on_file = align("dpo", params)
    params["align"]["variants"]["dpo"]["pairs"] = "first_round"
    repaired = align("dpo", params)
    assert repaired == {**on_file, "pairs": "first_round"}


@pytest.mark.parametrize(
    "variant, dotted, value, expected",
    [
        (
            "pl",
            "align.variants.pl.pairs",
            "all",
            "params: align.variants.pl.pairs: not used by listwise loss 'plackett_luce': it "
            "learns from the full ranking of each prompt's completions, not from pairs: remove "
            "it, got 'all'",
        ),
        (
            "rrhf",
            "align.common.pairs",
            "tournament",
            "params: align.common.pairs: not used by listwise loss 'rrhf': it learns from the "
            "full ranking",
        ),
        (
            "dpo",
            "align.variants.dpo.pairs",
            "rso",
            "params: align.variants.dpo.pairs: must be null or one of first_round, tournament, "
            "best_worst, all, got 'rso'",
        ),
    ],
)
def test_bad_pairs_fail_before_training(project, variant, dotted, value, expected):
    with pytest.raises(ValueError) as err:
        align(variant, _set(_new_params(), dotted, value))
    assert str(err.value).startswith(f"align@{variant}-0: {expected}"), str(err.value)
    assert "\n" not in str(err.value)
    assert not Path("logs").exists() and not Path("models/aligned").exists()


@pytest.mark.parametrize("dotted", ["align.variants.dpo.pairs", "align.common.pairs"])
def test_pairs_refuse_preferences_built_by_rso(project, dotted):
    params = _set(_params(), dotted, "all")
    params["pairs"]["strategy"] = "rso"
    with pytest.raises(ValueError) as err:
        align("dpo", params)
    assert str(err.value) == (
        f"align@dpo-0: params: {dotted}: cannot re-pair preferences built with pairs.strategy "
        "'rso': its pairs are drawn among the completions rso selected, which the rows do not "
        "record: remove it or build the preferences with another strategy, got 'all'"
    )
    assert not Path("logs").exists() and not Path("models/aligned").exists()
    params["pairs"]["strategy"] = "first_round"
    del params["seed"]
    with pytest.raises(ValueError, match=r"^align@dpo-0: params: seed: is missing"):
        align("dpo", params)


def test_a_variant_may_switch_common_pairs_off():
    """align.common.pairs for the pairwise families, `pairs: null` in a listwise variant."""
    from stages.align import check_pairs

    params = _set(_new_params(), "align.common.pairs", "all")
    params["align"]["variants"]["pl"]["pairs"] = None
    assert check_pairs(params, *variant_config(params, "pl"), "align.variants.pl.pairs") is None
    assert check_pairs(params, *variant_config(params, "dpo"), "align.common.pairs") == 0
