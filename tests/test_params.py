"""params.yaml, the Hydra profiles in conf/, and dvc.yaml agree with each other and the code.

conf/ is the one source: ``python -m stages params`` (:mod:`stages.tools.params`) writes
params.yaml from conf/config.yaml and its default profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import build_app
from stages.tools import params as params_tool
from stages.tools.params import STALE, compose, params_text, refresh, render

ROOT = Path(__file__).resolve().parents[1]


def test_demo_profile_is_params_yaml():
    assert compose("demo") == yaml.safe_load((ROOT / "params.yaml").read_text()), STALE


def test_params_yaml_is_what_the_command_writes():
    """Byte for byte, comments included: a hand edit of params.yaml fails here."""
    assert (ROOT / "params.yaml").read_text() == params_text(ROOT / "conf"), STALE


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of conf/ and params.yaml."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_params_finds_a_stale_params_yaml_and_rewrites_it(project):
    path = project / "params.yaml"
    current = path.read_text()
    assert refresh(project, check=True) is False
    path.write_text(current.replace("seed: 0\n", "seed: 1\n", 1))  # a hand edit
    assert refresh(project, check=True) is True
    assert path.read_text() != current  # --check writes nothing
    assert refresh(project, check=False) is True
    assert path.read_text() == current
    assert sorted(p.name for p in project.iterdir()) == ["conf", "params.yaml"]  # no temp file left


def test_params_check_exits_1_and_names_the_command(project, monkeypatch):
    monkeypatch.setattr(params_tool, "ROOT", project)
    (project / "conf" / "config.yaml").write_text(
        (project / "conf" / "config.yaml").read_text().replace("seeds: [0, 1, 2]", "seeds: [0, 1]")
    )
    result = CliRunner().invoke(build_app("params"), ["params", "--check"])
    assert result.exit_code == 1 and "python -m stages params" in result.output
    assert CliRunner().invoke(build_app("params"), ["params"]).exit_code == 0
    assert yaml.safe_load((project / "params.yaml").read_text())["seeds"] == [0, 1]


def test_the_default_profile_is_merged_keeping_the_comments(project):
    """Values from the profile, comments from config.yaml; a new key keeps its own comment."""
    (project / "conf" / "profile" / "demo.yaml").write_text(
        "# @package _global_\n"
        "data:\n"
        "  source: /data/reviews     # a local folder\n"
        "  synthetic:\n"
        "    n_test: 10\n"
        "seeds: [4]\n"
        "extra: 1                    # a key of the profile alone\n"
    )
    _, text = render(project / "conf")
    assert "  source: /data/reviews\n" in text  # config.yaml's comment block above it stays
    assert "    n_test: 10              # synthetic test reviews to generate\n" in text
    assert "seeds: [4]\n" in text and text.endswith(
        "extra: 1                    # a key of the profile alone\n"
    )
    assert yaml.safe_load(params_text(project / "conf")) == compose("demo", project / "conf")
    assert text.startswith(
        "# Written by `python -m stages params` from conf/config.yaml (+ conf/profile/demo.yaml)"
    )


def test_values_hydra_would_compose_otherwise_are_refused(project):
    (project / "conf" / "profile" / "demo.yaml").write_text(
        "# @package _global_\ndata:\n  source: ${oc.env:HOME}\n"
    )
    with pytest.raises(ValueError, match="Hydra's composition"):
        params_text(project / "conf")


def test_imdb_profile(monkeypatch):
    monkeypatch.setenv("IMDB_DIR", "/data/imdb")
    params = compose("imdb")
    assert params["data"]["source"] == "/data/imdb"
    assert params["data"]["max_train_rows"] == 12000 and params["sft"]["model"] == "tiny"
    assert params["align"]["variants"] == compose("demo")["align"]["variants"]


def test_paper_profile():
    params, demo = compose("paper"), compose("demo")
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


def test_losses_profile_adds_every_newer_loss_and_the_curriculum_to_the_demo():
    from stages.lib.variants import LOSSES

    params, demo = compose("losses"), compose("demo")
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


def _betas(params: dict, names) -> dict[tuple, set]:
    families: dict[tuple, set] = {}
    for name in names:
        v = params["align"]["variants"][name]
        families.setdefault(_family(v), set()).add(v.get("beta"))
    return families


def test_the_study_gives_every_family_three_betas_and_one_optimiser():
    """Issue 29: β is the only per-family knob (no variant overrides a training key), three β
    per family, the trajectory set for every run, five seeds; nothing but seeds, the
    checkpoints and the frontier's resamples differs from the demo outside the variants."""
    study, demo = compose("study"), compose("demo")
    variants = study["align"]["variants"]
    training = {"learning_rate", "epochs", "optimizer", "lr_scheduler", "warmup_ratio"}
    common_lr = study["align"]["common"]["learning_rate"]
    assert all(v.get("learning_rate", common_lr) == common_lr for v in variants.values())
    assert not any(training - {"learning_rate"} & set(v) for v in variants.values())
    families = _betas(study, variants)
    with_beta = [b for b in families.values() if b != {None}]
    # ten families with three β; four α points and seven families on all pairs (added after
    # the confirmatory run, exploratory) with one
    assert len(with_beta) == 21 and sorted(len(b) for b in with_beta) == [1] * 11 + [3] * 10
    on_all = [f for f in families if dict(f).get("pairs") == "all"]
    assert len(on_all) == 8  # DPO (three β) and every other pairwise family with a β curve
    assert sum(b == {None} for b in families.values()) == 2  # SLiC-HF, RRHF: no β
    assert any(dict(f).get("pairs") == "all" for f in families)  # equal information
    assert study["seeds"] == [0, 1, 2, 3, 4]
    assert study["align"]["common"]["checkpoints"] == [6, 10, 16, 32]
    assert {k for k in study if study[k] != demo.get(k)} == {"seeds", "align", "frontier"}


def test_the_fdpo_core_profile_gives_its_four_families_five_betas():
    core, demo = compose("study-fdpo"), compose("demo")
    new = [k for k in core["align"]["variants"] if k not in demo["align"]["variants"]]
    studied = _betas(core, new)
    assert len(studied) == 4
    assert all(len(_betas(core, core["align"]["variants"])[f]) >= 5 for f in studied)
    assert {k: v for k, v in core.items() if k != "align"} == {
        k: v for k, v in demo.items() if k != "align"
    }


@pytest.mark.parametrize("profile", ["demo", "imdb", "paper", "losses", "study"])
def test_every_variant_of_every_profile_reads_as_typed_settings(monkeypatch, profile):
    """What the align and report stages read: TrainConfig + LossConfig per variant, the same
    labels in both."""
    from stages.align import variant_config
    from stages.report import variant_info

    monkeypatch.setenv("IMDB_DIR", "/data/imdb")
    params = compose(profile)
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
    from stages.lib.variants import VARIANT_NAME

    assert VARIANT_NAME.match(name) and "." not in name
