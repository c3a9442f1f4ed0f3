"""Typed parameters: one frozen dataclass per ``params.yaml`` section, built by one reader.

Each field has a type, a default where the section may omit it, a one-line doc and a range
check; :func:`read_section` builds the dataclass from ``params.yaml`` and fails with one line
that names the dotted key (``params: sft.epochs: must be >= 0, got -1``)::

    from stages.lib.config import SftConfig, load_params, read_section, read_seed
    params = load_params("params.yaml")
    cfg = read_section(params, "sft", SftConfig)          # cfg.learning_rate, cfg.tiny.n_layer
    seed = read_seed(params)                                # fixes the data
    seed = run_seed(params, None)                           # a run's seed: the first of `seeds`

The alignment settings live next to the code they configure: ``LossConfig`` in
:mod:`stages.lib.variants` (with the reader of a variant's merged settings), ``TrainConfig`` in
:mod:`stages.lib.align`; they use the same reader.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

_NONE = type(None)


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read the whole params file (a mapping of sections)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections")
    return params


def param(
    doc: str,
    default: Any = dataclasses.MISSING,
    *,
    check: Callable[[Any], bool] | None = None,
    must: str = "",
) -> Any:
    """A dataclass field with a doc, an optional default and a check (``must`` says what a valid
    value is, for the error message)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check, "must": must})


# Checks shared by many fields: (predicate, what it must be).
def positive_int(v) -> bool:
    return v >= 1


def non_negative(v) -> bool:
    return v >= 0


def positive_finite(v) -> bool:
    return 0 < v < math.inf


def unit_interval(v) -> bool:
    return 0 <= v < 1


def _type_name(kind: Any) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(args[0])}"
    if args:
        return " or ".join("null" if a is _NONE else _type_name(a) for a in args)
    return getattr(kind, "__name__", str(kind))


def _coerce(value: Any, kind: Any, dotted: str) -> Any:
    """``value`` as ``kind`` (int -> float allowed, bool never an int), or a one-line error."""
    args = (
        typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType)
        else (kind,)
    )
    for option in args:
        if option is _NONE and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is bool and isinstance(value, bool):
            return value
        if option in (int, str) and isinstance(value, option) and not isinstance(value, bool):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)  # list[str]: every element coerced
            return [_coerce(v, item, f"{dotted}[{i}]") for i, v in enumerate(value)]
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return read_mapping(value, dotted, option)
    raise ValueError(f"params: {dotted}: must be {_type_name(kind)}, got {value!r}")


def read_mapping(
    mapping: Any, prefix: str, cls: type, *, where: Callable[[str], str] | None = None
) -> Any:
    """Build dataclass ``cls`` from ``mapping`` (the keys under ``prefix``): unknown keys,
    missing keys without a default, wrong types and failed checks are one-line ``ValueError``s
    naming ``<prefix>.<key>`` (or ``where(key)``, for settings merged from two sections)."""
    if not isinstance(mapping, dict):
        raise ValueError(f"params: {prefix}: must be a mapping, got {mapping!r}")
    name = where or (lambda key: f"{prefix}.{key}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in mapping:
        if key not in fields:
            raise ValueError(f"params: {name(key)}: not a known key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, f in fields.items():
        if key not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"params: {name(key)}: is missing ({f.metadata.get('doc', '')})")
            continue
        value = _coerce(mapping[key], hints[key], name(key))
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ValueError(
                f"params: {name(key)}: must be {f.metadata.get('must') or 'valid'}, got {value!r}"
            )
        values[key] = value
    return cls(**values)


def read_section(params: dict, section: str, cls: type) -> Any:
    """The dataclass ``cls`` of ``params[section]`` (dotted sections like ``reward`` only)."""
    if section not in params:
        raise ValueError(f"params: section '{section}' is missing")
    return read_mapping(params[section], section, cls)


def read_seed(params: dict) -> int:
    """The global ``seed``: every random draw derives from it."""
    if "seed" not in params:
        raise ValueError("params: seed: is missing (the global seed, an integer >= 0)")
    seed = _coerce(params["seed"], int, "seed")
    if seed < 0:
        raise ValueError(f"params: seed: must be >= 0, got {seed!r}")
    return seed


def read_seeds(params: dict) -> list[int]:
    """The run seeds ``seeds``: each (variant, seed) is one align + evaluate run."""
    if "seeds" not in params:
        raise ValueError(
            "params: seeds: is missing (the run seeds, a non-empty list of distinct integers >= 0)"
        )
    seeds = params["seeds"]
    ok = (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        and len(set(seeds)) == len(seeds)
    )
    if not ok:
        raise ValueError(
            f"params: seeds: must be a non-empty list of distinct integers >= 0, got {seeds!r}"
        )
    return list(seeds)


def run_seed(params: dict, seed: int | None) -> int:
    """The seed of one run: ``seed`` when given (``--seed``; any integer >= 0, also one not in
    ``seeds``), else the first of ``seeds``."""
    if seed is None:
        return read_seeds(params)[0]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed: must be an integer >= 0, got {seed!r}")
    return seed


#: The name of an external policy (``models/external/<name>``; a DVC matrix key, no dots).
EXTERNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def read_external(params: dict) -> list[str]:
    """The external policies ``external`` (optional; absent or null = none): distinct names of
    folders under ``models/external``, each evaluated as ``evaluate-external@<name>-<seed>``."""
    names = params.get("external")
    if names is None:
        return []
    ok = (
        isinstance(names, list)
        and all(isinstance(n, str) and EXTERNAL_NAME.match(n) for n in names)
        and len(set(names)) == len(names)
    )
    if not ok:
        raise ValueError(
            f"params: external: must be a list of distinct folder names under models/external "
            f"(letters, digits, _ and -), got {names!r}"
        )
    return list(names)


def field_docs(cls: type) -> dict[str, str]:
    """``{field: doc}`` of a config dataclass (for ``--help`` texts and tests)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SyntheticConfig:
    """``data.synthetic``: the built-in corpus with a gold scorer."""

    n_train: int = param(
        "synthetic training reviews to generate", 5000, check=positive_int, must=">= 1"
    )
    n_test: int = param("synthetic test reviews to generate", 1000, check=positive_int, must=">= 1")


@dataclass(frozen=True)
class DataConfig:
    """``data``: where reviews come from and how prompts are drawn (stage ``prepare``)."""

    source: str = param(
        "`synthetic`, a local folder of train/test files or a HF dataset id",
        check=lambda v: v.strip() != "",
        must="a non-empty string",
    )
    synthetic: SyntheticConfig = param("the synthetic corpus", SyntheticConfig())
    max_train_rows: int | None = param(
        "seeded subset of train reviews (null = all)", None, check=positive_int, must="null or >= 1"
    )
    max_test_rows: int | None = param(
        "seeded subset of test reviews (null = all)", None, check=positive_int, must="null or >= 1"
    )
    prompt_words: int = param(
        "a prompt is the first N whitespace words", 4, check=positive_int, must=">= 1"
    )
    n_train_prompts: int = param(
        "prompts from the train split", 1000, check=positive_int, must=">= 1"
    )
    n_eval_prompts: int = param("prompts from the test split", 100, check=positive_int, must=">= 1")


# --------------------------------------------------------------------------- sft and reward

TINY = "tiny"


@dataclass(frozen=True)
class TinyGPT2Config:
    """``sft.tiny``: a GPT-2 trained from scratch."""

    vocab_size: int = param(
        "BPE vocabulary, special tokens included", check=positive_int, must=">= 1"
    )
    n_layer: int = param("transformer blocks", check=positive_int, must=">= 1")
    n_embd: int = param("width (divisible by n_head)", check=positive_int, must=">= 1")
    n_head: int = param("attention heads", check=positive_int, must=">= 1")
    n_positions: int = param("context length in tokens", check=positive_int, must=">= 1")
    dropout: float = param(
        "residual, embedding and attention dropout", 0.0, check=unit_interval, must="in [0, 1)"
    )

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"params: sft.tiny.n_embd={self.n_embd} must be divisible by "
                f"sft.tiny.n_head={self.n_head}"
            )


@dataclass(frozen=True)
class TinyClassifierConfig:
    """``reward.tiny``: a mean-pooled ModernBERT-style encoder trained from scratch."""

    vocab_size: int = param(
        "BPE vocabulary, special tokens included", check=positive_int, must=">= 1"
    )
    n_layers: int = param("transformer blocks", check=positive_int, must=">= 1")
    dim: int = param("width (divisible by n_heads)", check=positive_int, must=">= 1")
    n_heads: int = param("attention heads", check=positive_int, must=">= 1")
    max_position_embeddings: int = param(
        "context length in tokens", check=positive_int, must=">= 1"
    )
    dropout: float = param(
        "dropout in blocks and before the head", 0.0, check=unit_interval, must="in [0, 1)"
    )

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(
                f"params: reward.tiny.dim={self.dim} must be divisible by "
                f"reward.tiny.n_heads={self.n_heads}"
            )


def _check_trained(section: str, model: str, epochs: int, tiny: Any) -> None:
    if model == TINY and epochs == 0:
        raise ValueError(
            f"params: {section}.epochs is 0 but {section}.model is 'tiny' (an "
            f"untrained model); train it (epochs >= 1) or name a trained model"
        )
    if model == TINY and tiny is None:
        raise ValueError(f"params: {section}.tiny: is missing (the architecture of model 'tiny')")


@dataclass(frozen=True, kw_only=True)
class SupervisedConfig:
    """The keys ``sft`` and ``reward`` share: which model, and how it is trained (transformers
    ``Trainer``: AdamW, cosine decay after a linear warm-up)."""

    SECTION: ClassVar[str] = ""

    model: str = param(
        "`tiny`, a hub id or a local save_pretrained folder",
        check=lambda v: v.strip() != "",
        must="a non-empty string",
    )
    epochs: int = param(
        "passes over the train texts (0 = keep a pretrained model as loaded)",
        check=non_negative,
        must=">= 0",
    )
    max_train_texts: int | None = param(
        "seeded subset of train texts (null = all)", None, check=positive_int, must="null or >= 1"
    )
    batch_size: int = param("texts per optimizer step", check=positive_int, must=">= 1")
    learning_rate: float = param("AdamW peak rate, cosine decay", check=positive_finite, must="> 0")
    warmup: float = param(
        "share of the steps with a linear warm-up", 0.0, check=unit_interval, must="in [0, 1)"
    )
    weight_decay: float = param("AdamW weight decay", 0.0, check=non_negative, must=">= 0")
    logging_steps: int = param(
        "optimizer steps between logged losses", 20, check=positive_int, must=">= 1"
    )

    def __post_init__(self) -> None:
        _check_trained(self.SECTION, self.model, self.epochs, getattr(self, "tiny", None))


@dataclass(frozen=True, kw_only=True)
class SftConfig(SupervisedConfig):
    """``sft``: the SFT policy, a causal LM trained on the train reviews (stage ``sft``)."""

    SECTION: ClassVar[str] = "sft"

    max_length: int = param(
        "tokens per training text (text + EOS)", check=positive_int, must=">= 1"
    )
    eval_texts: int = param(
        "test texts for the held-out perplexity", 200, check=positive_int, must=">= 1"
    )
    tiny: TinyGPT2Config | None = param("architecture of `model: tiny`", None)
    max_perplexity: float | None = param(
        "warn when the held-out perplexity is above this (null: only when it is above the "
        "vocabulary size, worse than a uniform guess)",
        None,
        check=lambda v: 1 <= v < math.inf,
        must="null or a finite number >= 1",
    )


@dataclass(frozen=True, kw_only=True)
class RewardConfig(SupervisedConfig):
    """``reward``: the two-label sentiment classifier (stage ``reward``; ``score`` is read by
    the scoring stages)."""

    SECTION: ClassVar[str] = "reward"

    score: str = param(
        "reward of a text: logit | margin | prob",
        "logit",
        check=lambda v: v in ("logit", "margin", "prob"),
        must="one of logit, margin, prob",
    )
    max_length: int = param(
        "tokens per text, for training and scoring", check=lambda v: v >= 2, must=">= 2"
    )
    eval_texts: int = param(
        "test texts for the test accuracy", 1000, check=positive_int, must=">= 1"
    )
    tiny: TinyClassifierConfig | None = param("architecture of `model: tiny`", None)


# --------------------------------------------------------------------------- sample .. reference


@dataclass(frozen=True)
class SampleConfig:
    """``sample``: K completions per train prompt from the SFT policy."""

    n_per_prompt: int = param(
        "K completions per prompt",
        check=lambda v: v >= 2,
        must=">= 2 (a preference pair needs two completions)",
    )
    temperature: float = param(
        "sampling temperature (no top-k, no top-p)", check=positive_finite, must="> 0"
    )
    max_new_tokens: int = param("completion length cap in tokens", check=positive_int, must=">= 1")
    batch_size: int = param("sequences per generate call", 128, check=positive_int, must=">= 1")


PAIR_STRATEGIES = ("first_round", "tournament", "best_worst", "all", "rso")


@dataclass(frozen=True)
class RsoConfig:
    """``pairs.rso``: statistical rejection sampling (strategy ``rso`` only)."""

    n_select: int = param(
        "candidates accepted per prompt",
        4,
        check=lambda v: v >= 2,
        must=">= 2 (a pair needs two picks)",
    )
    beta: float = param(
        "tilt beta_rso of the acceptance exp((r - r_max) / beta)",
        0.5,
        check=positive_finite,
        must="> 0",
    )


@dataclass(frozen=True)
class PairsConfig:
    """``pairs``: preference pairs from the scored completions."""

    strategy: str = param(
        "how completions are paired",
        check=lambda v: v in PAIR_STRATEGIES,
        must=f"one of {', '.join(PAIR_STRATEGIES)}",
    )
    val_fraction: float = param(
        "share of prompts held out as validation", 0.1, check=unit_interval, must="in [0, 1)"
    )
    rso: RsoConfig = param("rejection sampling settings", RsoConfig())


@dataclass(frozen=True, kw_only=True)
class ReferenceConfig:
    """``reference``: SFT log-probs of every preference completion, once."""

    batch_size: int = param("sequences per SFT forward pass", 64, check=positive_int, must=">= 1")
    max_length: int = param("prompt + completion tokens", check=lambda v: v >= 2, must=">= 2")


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: sample each policy on held-out prompts and measure it."""

    n_prompts: int = param(
        "held-out prompts (<= data.n_eval_prompts)", check=positive_int, must=">= 1"
    )
    n_samples: int = param("completions per prompt", check=positive_int, must=">= 1")
    max_new_tokens: int = param("completion length cap in tokens", check=positive_int, must=">= 1")
    batch_size: int = param(
        "sequences per generation/scoring batch", 64, check=positive_int, must=">= 1"
    )
    bootstrap: int = param(
        "bootstrap resamples of the prompts", 1000, check=positive_int, must=">= 1"
    )
    logit_chunk: int = param(
        "LM-head rows per slice in the scoring pass", 512, check=positive_int, must=">= 1"
    )
    entropy_first_k: int = param(
        "generated positions per sample of entropy_first_k", 8, check=positive_int, must=">= 1"
    )
    fixed_contexts: int = param(
        "eval prompts whose test reviews are the fixed contexts of context_entropy (0 = none)",
        100,
        check=non_negative,
        must=">= 0",
    )


# --------------------------------------------------------------------------- best-of-n


@dataclass(frozen=True)
class BestOfNConfig:
    """``best_of_n``: the best-of-n baseline sampled from the SFT policy (stage ``best-of-n``;
    prompts, length cap and batch size are ``evaluate``'s)."""

    n_max: int = param(
        "completions drawn per eval prompt; the baseline's n are 1, 2, 4, ... <= n_max",
        16,
        check=positive_int,
        must=">= 1",
    )


# --------------------------------------------------------------------------- report, frontier


@dataclass(frozen=True)
class ReportConfig:
    """``report`` and ``frontier`` (one dataclass, read for each section): aggregate every
    policy over seeds and prompts (``report``); families along β at matched KL, Pareto
    envelopes, best-of-n (``frontier``)."""

    baseline: str = param(
        "the variant paired differences are taken against (frontier: against its family)",
        "dpo",
        check=lambda v: v.strip() != "",
        must="a non-empty string",
    )
    bootstrap: int = param(
        "resamples of the two-level (seeds, prompts) bootstrap",
        2000,
        check=positive_int,
        must=">= 1",
    )
