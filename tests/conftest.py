"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: The real IMDB copy beside the repository (never copied into it); override with IMDB_DIR.
IMDB_DIR = Path(
    os.environ.get(
        "IMDB_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imdb"
    )
)


@pytest.fixture
def imdb_dir() -> Path:
    """The real IMDB folder, or a clean skip where it is absent."""
    if not (IMDB_DIR / "train.jsonl").is_file() or not (IMDB_DIR / "test.jsonl").is_file():
        pytest.skip(f"real IMDB copy not found at {IMDB_DIR} (set IMDB_DIR)")
    return IMDB_DIR.resolve()


# --- Tiny causal LM fixtures (offline; shared by generation, pairs and reference tests) -------

TINY_LM_WORDS = (
    "the film movie was is a an and but not very quite good bad great awful "
    "acting plot ending score pacing dialogue I it this that loved hated boring "
    "fun dull brilliant terrible story cast scene never really"
).split()


def build_tiny_lm(folder: Path, *, pad_is_eos: bool = False, seed: int = 0) -> Path:
    """Save a randomly initialised 1-layer GPT-2 (n_embd 32) and a byte-level BPE tokenizer
    trained offline on a seeded word soup into ``folder``; eos ``<|endoftext|>``, pad a
    distinct ``<|pad|>`` (or eos itself with ``pad_is_eos``), no BOS added."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [
        " ".join(rng.choice(TINY_LM_WORDS) for _ in range(rng.randint(5, 15))) + "."
        for _ in range(400)
    ]
    specials = ["<|endoftext|>"] + ([] if pad_is_eos else ["<|pad|>"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            min_frequency=2,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token=specials[-1]
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=128,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny GPT-2 + tokenizer (``save_pretrained`` layout, like models/sft)."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """``(model, tokenizer)`` loaded from :func:`tiny_lm_dir`, eval mode, CPU. Shared across
    the session: do not modify it in place (copy it first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread (restored after): tiny models gain nothing from more,
    and on a busy 2-core machine two spinning OpenMP threads slow every op down many-fold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- Tiny sentiment corpus and classifiers (reward model and scoring tests) -------------------

GOOD = "great wonderful brilliant superb moving delightful charming".split()
BAD = "awful boring terrible dull clumsy dreadful tedious".split()
ASPECTS = ["The acting", "The plot", "The score", "The ending", "The dialogue", "The pacing"]
FILLER = ["It runs two hours.", "It was shot in Rome.", "The cast is large.", "I saw it twice."]
POSITIVE = "The plot was wonderful and the acting was superb. I loved it."
NEGATIVE = "The plot was dreadful and the acting was boring. I hated it."


def polar_rows(n: int, seed: int) -> list[dict]:
    """Short reviews (``text``, ``label``) whose sentiment words all share the label's
    polarity, with a neutral filler sentence; labels alternate 0, 1, 0, ..."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = GOOD if label else BAD
        aspects = rng.sample(ASPECTS, rng.randint(1, 3))
        sentences = [f"{a} was {rng.choice(words)}." for a in aspects]
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(FILLER))
        rows.append({"text": " ".join(sentences), "label": label})
    return rows


def tiny_classifier_config():
    """The architecture of the tests' tiny reward models."""
    from stages.lib.config import TinyClassifierConfig

    return TinyClassifierConfig(
        vocab_size=300, n_layers=1, dim=32, n_heads=2, max_position_embeddings=128
    )


def save_classifier(folder, arch: str = "tiny", num_labels: int = 2, **config):
    """A randomly initialised classifier + BPE tokenizer saved like a hub checkpoint: ``tiny``
    (the project's mean-pooled encoder), ``distilbert``, or ``gpt2`` (pad = eos, as hub GPT-2
    reward models have)."""
    import torch
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    from stages.lib.modeling import save_pretrained, tiny_classifier, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(
        [r["text"] for r in polar_rows(80, 5)], 300, model_max_length=128
    )
    torch.manual_seed(1)
    common = {
        "vocab_size": len(tokenizer),
        "num_labels": num_labels,
        "pad_token_id": tokenizer.pad_token_id,
        **config,
    }
    if arch == "tiny":
        model = tiny_classifier(tokenizer, tiny_classifier_config())
        if num_labels != 2 or config:
            model.config.update(config)
            model.config.num_labels = num_labels
            model = type(model)(model.config)
    elif arch == "distilbert":
        model = DistilBertForSequenceClassification(
            DistilBertConfig(
                n_layers=1, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=128, **common
            )
        )
    else:
        tokenizer.pad_token = tokenizer.eos_token
        common["pad_token_id"] = tokenizer.eos_token_id
        model = GPT2ForSequenceClassification(
            GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, **common)
        )
    save_pretrained(model, tokenizer, folder)
    return folder


# --- Learning-rate schedules (warm-up given as a ratio; transformers >= 5 reads warmup_steps < 1
# as a share of the steps, 4.x as a step count, hence transformers>=5.2 in pyproject.toml) -------

WARMUP_STEPS = 100


def lr_schedule(args, steps: int = WARMUP_STEPS) -> list[float]:
    """Learning rate at each of ``steps`` optimizer steps of a Trainer built from ``args``."""
    import torch
    from transformers import Trainer

    torch.manual_seed(0)
    trainer = Trainer(model=torch.nn.Linear(2, 1), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def assert_warms_up_over(rates: list[float], peak: float, n: int) -> None:
    """Linear from 0 to ``peak`` over the first ``n`` steps, then never above it."""
    import pytest

    assert rates[: n + 1] == pytest.approx([peak * k / n for k in range(n + 1)], rel=1e-9)
    assert max(rates) == pytest.approx(peak, rel=1e-12) and rates[n + 1] < peak
