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
IMDB_DIR = Path(os.environ.get("IMDB_DIR", Path(__file__).resolve().parents[1] / ".." / "shared"
                               / "data" / "imdb"))


@pytest.fixture
def imdb_dir() -> Path:
    """The real IMDB folder, or a clean skip where it is absent."""
    if not (IMDB_DIR / "train.jsonl").is_file() or not (IMDB_DIR / "test.jsonl").is_file():
        pytest.skip(f"real IMDB copy not found at {IMDB_DIR} (set IMDB_DIR)")
    return IMDB_DIR.resolve()


# --- Tiny causal LM fixtures (offline; shared by generation, pairs and reference tests) -------

TINY_LM_WORDS = ("the film movie was is a an and but not very quite good bad great awful "
                 "acting plot ending score pacing dialogue I it this that loved hated boring "
                 "fun dull brilliant terrible story cast scene never really").split()


def build_tiny_lm(folder: Path, *, pad_is_eos: bool = False, seed: int = 0) -> Path:
    """Save a randomly initialised 1-layer GPT-2 (n_embd 32) and a byte-level BPE tokenizer
    trained offline on a seeded word soup into ``folder``; eos ``<|endoftext|>``, pad a
    distinct ``<|pad|>`` (or eos itself with ``pad_is_eos``), no BOS added."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(TINY_LM_WORDS) for _ in range(rng.randint(5, 15))) + "."
              for _ in range(400)]
    specials = ["<|endoftext|>"] + ([] if pad_is_eos else ["<|pad|>"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        pad_token=specials[-1])
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
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
