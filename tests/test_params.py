"""params.yaml, the Hydra profiles in conf/, and dvc.yaml agree with each other and the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose(tmp_path: Path, profile: str) -> dict:
    """Compose conf/ exactly as `dvc exp run -S profile=<name>` does (the study estimate's
    reader, so both read profiles the same way)."""
    from stages.bench.study import compose as compose_profile

    return compose_profile(profile)


def test_demo_profile_is_params_yaml(tmp_path):
    assert compose(tmp_path, "demo") == yaml.safe_load((ROOT / "params.yaml").read_text())


def test_imdb_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("IMDB_DIR", "/data/imdb")
    params = compose(tmp_path, "imdb")
    assert params["data"]["source"] == "/data/imdb"
    assert params["data"]["max_train_rows"] == 12000 and params["sft"]["model"] == "tiny"
    assert params["align"]["variants"] == compose(tmp_path, "demo")["align"]["variants"]


def test_paper_profile(tmp_path):
    params, demo = compose(tmp_path, "paper"), compose(tmp_path, "demo")
    assert params["data"]["source"] == "stanfordnlp/imdb"
    assert params["data"]["n_train_prompts"] == 5000 and params["sample"]["n_per_prompt"] == 4
    assert (params["sft"]["model"], params["sft"]["epochs"]) == ("lvwerra/gpt2-imdb", 0)
    assert (params["reward"]["model"], params["reward"]["epochs"]) == ("lvwerra/distilbert-imdb", 0)
    assert params["reward"]["score"] == "logit" and params["pairs"]["strategy"] == "first_round"
    assert set(params["align"]["variants"]) == set(demo["align"]["variants"])
    assert params["sft"]["tiny"] == demo["sft"]["tiny"]  # untouched keys come from the base
    for name, variant in params["align"]["variants"].items():  # no tiny-model learning rate left
        assert variant.get("learning_rate", params["align"]["common"]["learning_rate"]) <= 1e-5, (
            name
        )
    from stages.align import variant_config

    assert variant_config(params, "dpo")[0].optimizer == "adamw_torch_fused"  # a valid optim name


def test_losses_profile_adds_every_newer_loss_and_the_curriculum_to_the_demo(tmp_path):
    from stages.lib.losses import LOSSES

    params, demo = compose(tmp_path, "losses"), compose(tmp_path, "demo")
    variants = params["align"]["variants"]
    assert {k: v for k, v in variants.items() if k in demo["align"]["variants"]} == demo["align"][
        "variants"
    ]  # the demo's variants, unchanged: they are the baselines of the paired differences
    new = {k: v for k, v in variants.items() if k not in demo["align"]["variants"]}
    assert {v["loss"] for v in new.values()} == set(LOSSES) - {"ipo"}  # ipo: in the demo
    assert {v.get("curriculum") for v in new.values()} == {None, "easy_to_hard", "hard_to_easy"}
    assert {k: v for k, v in params.items() if k != "align"} == {
        k: v for k, v in demo.items() if k != "align"
    }


def _family(variant: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in variant.items() if k not in ("beta", "learning_rate")))


def test_study_profiles_give_every_family_at_least_five_betas(tmp_path):
    study, core = compose(tmp_path, "study"), compose(tmp_path, "study-fdpo")
    demo = compose(tmp_path, "demo")
    assert set(core["align"]["variants"]) < set(study["align"]["variants"])
    for params, n_families in ((study, 11), (core, 4)):
        new = {
            k: v
            for k, v in params["align"]["variants"].items()
            if k not in demo["align"]["variants"]
        }
        families: dict[tuple, set[float]] = {}
        for v in params["align"]["variants"].values():
            families.setdefault(_family(v), set()).add(v["beta"])
        studied = {_family(v) for v in new.values()}
        assert len(studied) == n_families
        assert all(len(families[f]) >= 5 for f in studied)  # the demo's beta is one of them
        assert {k: v for k, v in params.items() if k != "align"} == {
            k: v for k, v in demo.items() if k != "align"
        }


@pytest.mark.parametrize("profile", ["demo", "imdb", "paper", "losses", "study"])
def test_every_variant_of_every_profile_reads_as_typed_settings(tmp_path, monkeypatch, profile):
    """What the align and report stages read: TrainConfig + LossConfig per variant, the same
    labels in both."""
    from stages.align import variant_config
    from stages.report import variant_info

    monkeypatch.setenv("IMDB_DIR", "/data/imdb")
    params = compose(tmp_path, profile)
    labels = variant_info(params)
    for name in params["align"]["variants"]:
        train, loss = variant_config(params, name)
        assert labels[name] == {
            "loss": loss.loss,
            "divergence": loss.divergence,
            "alpha": loss.alpha,
        }
        assert train.max_length == params["reference"]["max_length"], name


def test_every_key_is_commented():
    """Each leaf key of params.yaml carries a comment on its line or a block comment above."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        assert "#" in line or lines[i - 1].strip().startswith("#"), f"params.yaml:{i + 1} {line}"


@pytest.mark.parametrize(
    "name", list(yaml.safe_load((ROOT / "params.yaml").read_text())["align"]["variants"])
)
def test_variant_names_are_dvc_and_hydra_keys(name):
    """A dot in a variant name would break `align.variants.<name>` in dvc.yaml params and -S."""
    from stages.align import VARIANT_NAME

    assert VARIANT_NAME.match(name) and "." not in name
