"""Model helpers shared by the stages: tokenizers, tiny models, loading, context checks, devices.

``sft.model`` and ``reward.model`` accept ``tiny`` (built here from its config dataclass and
trained from scratch with a byte-level BPE tokenizer trained on the corpus), a Hugging Face hub
id or a local folder. Hub ids and folders go through the same ``from_pretrained`` call::

    from stages.lib.modeling import build_model, check_context, load_pretrained
    model, tokenizer = build_model(cfg.model, "causal", "sft.model", texts=texts,
                                   tiny=cfg.tiny, seed=seed)     # cfg: an SftConfig
    check_context(model, cfg.max_length, "sft.max_length", "sft.tiny.n_positions")
    model, tokenizer = load_pretrained("models/sft", "causal", "sft.model")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from unittest import mock

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PreTrainedTokenizerFast,
)
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.utils import logging as hf_logging

from stages.lib.common import atomic_path, first_line, is_hub_id, resolve_path, seed_everything
from stages.lib.config import TINY, TinyClassifierConfig, TinyGPT2Config

EOS = "<|endoftext|>"
PAD = "<|pad|>"
#: ``load_pretrained`` kinds and their auto classes.
AUTO_CLASSES = {"causal": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16() -> bool:
    """bf16 mixed precision only where CUDA supports it (never on CPU: slow and lossy there)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, *, model_max_length: int | None = None
):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Special tokens: ``<|endoftext|>`` (eos) and a distinct ``<|pad|>``; nothing is added to an
    encoded text (no BOS, no CLS). Saves and loads with ``AutoTokenizer``."""
    specials = [EOS, PAD]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    extra = {}
    if model_max_length is not None:
        extra["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, **extra)


def tiny_gpt2(tokenizer, cfg: TinyGPT2Config):
    """A GPT-2 LM initialised from scratch with the ``sft.tiny`` architecture (the vocabulary
    size comes from the tokenizer)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_classifier(tokenizer, cfg: TinyClassifierConfig):
    """A two-label encoder classifier from scratch (label 1 = positive) with the ``reward.tiny``
    architecture: ModernBERT blocks with global attention everywhere and *mean pooling* over the
    text's tokens.

    Mean pooling suits a sentiment that adds up over clauses: on the synthetic corpus a tiny
    first-token (DistilBERT) or last-token (GPT-2) classifier overfits at ~83% test accuracy,
    below a trigram bag of words (85%), while this one reaches ~90% at the same cost."""
    drop = cfg.dropout
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.dim,
        intermediate_size=4 * cfg.dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        global_attn_every_n_layers=1,
        classifier_pooling="mean",
        embedding_dropout=drop,
        attention_dropout=drop,
        mlp_dropout=drop,
        classifier_dropout=drop,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        cls_token_id=None,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    return ModernBertForSequenceClassification(config)


def build_model(
    name: str,
    kind: str,
    parameter: str,
    *,
    texts: list[str],
    tiny: TinyGPT2Config | TinyClassifierConfig | None,
    seed: int,
    strict_head: bool = False,
):
    """``(model, tokenizer)`` for a ``model`` parameter: for ``tiny`` a BPE tokenizer trained on
    ``texts`` and a fresh model of ``kind`` (``causal``: :func:`tiny_gpt2`, ``classifier``:
    :func:`tiny_classifier`) initialised under ``seed``; otherwise :func:`load_pretrained`."""
    if name != TINY:
        return load_pretrained(name, kind, parameter, strict_head=strict_head)
    if kind == "causal":
        build, context = tiny_gpt2, tiny.n_positions
    else:
        build, context = tiny_classifier, tiny.max_position_embeddings
    tokenizer = train_bpe_tokenizer(texts, tiny.vocab_size, model_max_length=context)
    seed_everything(seed)
    return fuse_activations(build(tokenizer, tiny)), tokenizer


def fuse_activations(model):
    """Replace every ``gelu_new`` module (GPT-2's tanh GELU, written as seven elementwise
    operations: ``transformers.activations.NewGELUActivation``) by the same function as one
    fused kernel (``GELUTanh``: ``torch.nn.functional.gelu(x, approximate="tanh")``).

    The formula is the same, so outputs agree to float32 rounding (max 2.4e-7 on N(0, 1)
    inputs); the saved config is untouched. On the demo model it cuts the activation's forward
    and backward from ~14 elementwise kernels to two (``python -m stages bench --only flops``).
    Returns ``model``."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
    return model


def context_length(model) -> int | None:
    """The number of positions a model can attend to (None when its config does not say)."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model, max_length: int, key: str, hint: str) -> None:
    """The model must attend over ``max_length`` positions (the value of parameter ``key``;
    ``hint`` names the parameter that sets a tiny model's context)."""
    ctx = context_length(model)
    if ctx is not None and ctx < max_length:
        raise ValueError(
            f"params: {key}: must be <= the model's context of {ctx} positions "
            f"({hint} for a tiny model), got {max_length}"
        )


def ensure_pad_token(model, tokenizer, parameter: str) -> None:
    """Tokenizers without a pad token (hub ``gpt2``) get pad = eos, with a one-line notice."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{parameter}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
        print(
            f"note: {parameter}: tokenizer has no pad token; using its eos token "
            f"{tokenizer.eos_token!r} as pad"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_pretrained(name: str, kind: str, parameter: str, *, strict_head: bool = False):
    """Load ``(model, tokenizer)`` from a hub id or a local folder through ``from_pretrained``.

    ``kind`` is ``causal`` or ``classifier``; weights load in float32 (training and CPU
    inference want it; GPU stages use bf16 autocast). With ``strict_head`` a classifier whose
    head would be freshly initialised (a base model without a trained head) is an error. Any
    failure is a one-line ``ValueError`` naming ``parameter``."""
    auto = AUTO_CLASSES[kind]
    path = resolve_path(name)
    if not path.is_dir() and not is_hub_id(name):
        raise ValueError(
            f"{parameter}: {name!r} is not 'tiny', an existing folder or a hub id (no such folder)"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(
            f"{parameter}: folder {name!r} has no config.json (expected a save_pretrained folder)"
        )
    source = str(path) if path.is_dir() else name
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = auto.from_pretrained(source, output_loading_info=True, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad model parameter
        raise ValueError(
            f"{parameter}: cannot load {name!r} as a {kind} model ({first_line(err)})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if strict_head and info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{parameter}: {name!r} has no trained weights for {missing[0]} "
            f"(and {len(missing) - 1} more); train it with epochs >= 1"
        )
    # a loaded tokenizer remembers local_files_only (true under HF_HUB_OFFLINE=1) and would save
    # it into tokenizer_config.json: the same run would hash differently with and without it
    tokenizer.init_kwargs.pop("local_files_only", None)
    ensure_pad_token(model, tokenizer, parameter)
    return fuse_activations(model), tokenizer


def load_causal_lm(path: str | Path, device: torch.device | None = None):
    """Load a ``save_pretrained`` causal LM folder (a policy) and its tokenizer through
    :func:`load_pretrained`, in eval mode on ``device`` (default: CUDA if available, else CPU).
    A missing folder is a ``FileNotFoundError``; a model without an LM head a ``ValueError``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no model found (expected a save_pretrained folder; "
            f"run the stage that writes it)"
        )
    model, tokenizer = load_pretrained(str(path), "causal", str(path))
    if model.get_output_embeddings() is None:
        raise ValueError(f"{path}: model has no LM head (not a causal LM)")
    return model.to(device or pick_device()).eval(), tokenizer


def open_live(log_dir: str | Path):
    """A DVCLive logger for training curves: ``Live(log_dir, dvcyaml=False)``, never saving a
    DVC experiment itself (``dvc exp run`` does that).

    DVCLive 3.x raises in a Git repo without commits (treeverse/dvclive#522: it reads HEAD
    before checking for commits); there it logs the same files without the DVC integration.
    DVCLive (and pandas under it) is imported here, not at module level: the stages that only
    load a model start ~0.8 s sooner."""
    from dvclive import Live

    try:
        return Live(str(log_dir), dvcyaml=False, save_dvc_exp=False)
    except Exception as err:  # noqa: BLE001 - scmrepo's SCMError, whatever its import path
        if "empty git repo" not in str(err).lower():
            raise
    with mock.patch("dvclive.live.get_dvc_repo", return_value=None):
        return Live(str(log_dir), dvcyaml=False, save_dvc_exp=False)


def save_pretrained(model, tokenizer, folder: str | Path) -> None:
    """Write model and tokenizer into ``folder`` atomically (temp sibling + rename)."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_path(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str, parameter: str):
    """The tokenizer of a hub id or a local ``save_pretrained`` folder (no model weights read);
    any failure is a one-line ``ValueError`` naming ``parameter``."""
    path = resolve_path(name)
    if not path.is_dir() and not is_hub_id(name):
        raise ValueError(f"{parameter}: {name!r} is not an existing folder or a hub id")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name)
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad model parameter
        raise ValueError(
            f"{parameter}: cannot load the tokenizer of {name!r} ({first_line(err)})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def tokenizer_difference(ours, theirs) -> str | None:
    """What differs between two tokenizers as a policy sees them (the vocabulary, token by
    token, then the EOS token), or None when they encode every text to the same ids."""
    a, b = ours.get_vocab(), theirs.get_vocab()
    if a != b:
        only = sorted(set(a) ^ set(b)) or sorted(t for t in a if a[t] != b[t])
        token = only[0]

        def has(vocab: dict) -> str:
            return f"id {vocab[token]}" if token in vocab else "not in the vocabulary"

        return (
            f"vocabulary: {len(a)} vs {len(b)} tokens; first difference {token!r}: "
            f"{has(a)} vs {has(b)}"
        )
    if ours.eos_token_id != theirs.eos_token_id:
        return f"eos_token: {ours.eos_token!r} vs {theirs.eos_token!r}"
    return None


def check_same_tokenizer(folder: str | Path, reference: str | Path) -> None:
    """A policy folder must share the tokenizer of ``reference`` (the SFT policy's folder):
    the same tokens, ids and EOS, so both score the same token ids. One-line ``ValueError``
    naming the folder and what differs; a folder without a tokenizer or model is an error too."""
    folder, reference = Path(folder), Path(reference)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no model found (expected a save_pretrained folder)")
    theirs = load_tokenizer(str(folder), str(folder))
    ours = load_tokenizer(str(reference), str(reference))
    diff = tokenizer_difference(theirs, ours)
    if diff is not None:
        raise ValueError(f"{folder}: tokenizer differs from {reference}'s ({diff})")
