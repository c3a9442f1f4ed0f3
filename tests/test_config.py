"""Typed parameters: the generic reader, every section of params.yaml, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stages.lib.config import (
    DataConfig,
    EvaluateConfig,
    PairsConfig,
    ReferenceConfig,
    ReportConfig,
    RewardConfig,
    SampleConfig,
    SftConfig,
    field_docs,
    load_params,
    read_mapping,
    read_section,
    read_seed,
    read_seeds,
    run_seed,
)
from stages.lib.frontier import FrontierConfig

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "data": DataConfig,
    "sft": SftConfig,
    "reward": RewardConfig,
    "sample": SampleConfig,
    "pairs": PairsConfig,
    "reference": ReferenceConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
    "frontier": FrontierConfig,  # ReportConfig's keys and the curve fit
}


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_params_yaml_sections_read_into_frozen_dataclasses(params, section):
    cfg = read_section(params, section, SECTIONS[section])
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.__setattr__(dataclasses.fields(cfg)[0].name, None)
    # every key of the section is a field and comes back with its value (nested ones as dicts)
    values = dataclasses.asdict(cfg)
    assert {key: values[key] for key in params[section]} == params[section]


@pytest.mark.parametrize("cls", sorted(SECTIONS.values(), key=lambda c: c.__name__))
def test_every_field_has_a_doc(cls):
    assert all(doc.strip() for doc in field_docs(cls).values()), cls.__name__


def test_seed(params):
    assert read_seed(params) == params["seed"]
    with pytest.raises(ValueError, match=r"^params: seed: is missing"):
        read_seed({})
    with pytest.raises(ValueError, match=r"^params: seed: must be >= 0, got -1$"):
        read_seed({"seed": -1})
    with pytest.raises(ValueError, match=r"^params: seed: must be int, got 1.5$"):
        read_seed({"seed": 1.5})


def test_run_seeds(params):
    """`seeds` lists the run seeds; a run takes --seed or, by default, the first of them."""
    assert read_seeds(params) == params["seeds"] == [0, 1, 2]
    assert run_seed(params, None) == 0 and run_seed(params, 7) == 7  # any seed >= 0 runs
    assert run_seed({"seeds": [4, 1]}, None) == 4
    with pytest.raises(ValueError, match=r"^params: seeds: is missing \(the run seeds"):
        read_seeds({"seed": 0})
    for bad in ([], [0, 0], [-1], [1.5], 3, [True], None):
        with pytest.raises(ValueError, match=r"^params: seeds: must be a non-empty list of dis"):
            read_seeds({"seeds": bad})
    with pytest.raises(ValueError, match=r"^--seed: must be an integer >= 0, got -1$"):
        run_seed(params, -1)


def _sft(params, **changes) -> dict:
    return {**params["sft"], **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": -1}, r"^params: sft\.epochs: must be >= 0, got -1$"),
        ({"learning_rate": "fast"}, r"^params: sft\.learning_rate: must be float, got 'fast'$"),
        ({"learning_rate": 0}, r"^params: sft\.learning_rate: must be > 0, got 0\.0$"),
        ({"batch_size": True}, r"^params: sft\.batch_size: must be int, got True$"),
        ({"batch_size": 2.0}, r"^params: sft\.batch_size: must be int, got 2\.0$"),
        ({"max_train_texts": 0}, r"^params: sft\.max_train_texts: must be null or >= 1, got 0$"),
        ({"warmup": 1.0}, r"^params: sft\.warmup: must be in \[0, 1\), got 1\.0$"),
        ({"lr": 1e-3}, r"^params: sft\.lr: not a known key \(known: model, epochs, "),
        ({"epochs": 0}, r"^params: sft\.epochs is 0 but sft\.model is 'tiny'"),
    ],
)
def test_bad_values_name_the_dotted_key(params, changes, message):
    with pytest.raises(ValueError, match=message):
        read_mapping(_sft(params, **changes), "sft", SftConfig)


def test_nested_sections_name_the_full_key(params):
    tiny = {**params["sft"]["tiny"], "n_layer": 0}
    with pytest.raises(ValueError, match=r"^params: sft\.tiny\.n_layer: must be >= 1, got 0$"):
        read_mapping(_sft(params, tiny=tiny), "sft", SftConfig)
    tiny = {**params["sft"]["tiny"], "n_embd": 33}
    with pytest.raises(
        ValueError, match=r"sft\.tiny\.n_embd=33 must be divisible by sft\.tiny\.n_head=4"
    ):
        read_mapping(_sft(params, tiny=tiny), "sft", SftConfig)
    with pytest.raises(ValueError, match=r"^params: pairs\.rso\.beta: must be > 0, got 0\.0$"):
        read_mapping({"strategy": "rso", "rso": {"beta": 0}}, "pairs", PairsConfig)


def test_missing_keys_and_sections():
    with pytest.raises(ValueError, match=r"^params: section 'sft' is missing$"):
        read_section({}, "sft", SftConfig)
    with pytest.raises(ValueError, match=r"^params: sft: must be a mapping, got 3$"):
        read_section({"sft": 3}, "sft", SftConfig)
    with pytest.raises(ValueError, match=r"^params: reference\.max_length: is missing"):
        read_section({"reference": {}}, "reference", ReferenceConfig)


def test_defaults_fill_optional_keys():
    cfg = read_mapping({"max_length": 64}, "reference", ReferenceConfig)
    assert cfg.batch_size == 64 and cfg.max_length == 64
    assert read_mapping({"strategy": "all"}, "pairs", PairsConfig).rso.n_select == 4


def test_where_names_keys_of_merged_sections():
    where = {"max_length": "align.variants.dpo.max_length"}.get
    with pytest.raises(
        ValueError, match=r"^params: align\.variants\.dpo\.max_length: must be >= 2"
    ):
        read_mapping({"max_length": 1}, "reference", ReferenceConfig, where=where)


def test_choices(params):
    with pytest.raises(
        ValueError, match=r"^params: reward\.score: must be one of logit, margin, prob, got 'raw'$"
    ):
        read_mapping({**params["reward"], "score": "raw"}, "reward", RewardConfig)
    with pytest.raises(ValueError, match=r"^params: pairs\.strategy: must be one of first_round, "):
        read_mapping({"strategy": "random"}, "pairs", PairsConfig)


def test_params_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_params(bad)


def test_external_policies(params):
    from stages.lib.config import read_external

    assert (
        read_external(params) == []
        and read_external({}) == []
        and read_external({"external": None}) == []
    )
    assert read_external({"external": ["trl-dpo", "orpo_2"]}) == ["trl-dpo", "orpo_2"]
    for bad in ("x", ["a.b"], ["../x"], ["x", "x"], [1], {"a": "b"}):
        with pytest.raises(ValueError, match=r"^params: external: must be a list of distinct"):
            read_external({"external": bad})
