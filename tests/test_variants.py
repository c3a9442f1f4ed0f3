"""``stages.lib.variants``: one reader of the alignment variants (common merged with the
variant, where each key was set, the name checks) and ``LossConfig``, without torch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from stages.lib.config import load_params
from stages.lib.variants import (
    LOSS_KEYS,
    LossConfig,
    Variant,
    align_section,
    check_name,
    read_variant,
    read_variants,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")


def _params(common: dict | None = None, **variants) -> dict:
    return {"align": {"common": common, "variants": variants}}


def test_the_variant_overrides_common_and_says_where_each_key_was_set():
    params = _params(
        {"loss": "hinge", "divergence": "jsd", "beta": 0.1, "learning_rate": 1e-4},
        dpo={"loss": "sigmoid", "beta": 0.3},
    )
    dpo = read_variant(params, "dpo")
    assert dpo.settings == {
        "loss": "sigmoid",
        "divergence": "jsd",
        "beta": 0.3,
        "learning_rate": 1e-4,
    }
    assert dpo.where("beta") == "align.variants.dpo.beta"
    assert dpo.where("divergence") == "align.common.divergence"
    assert dpo.where("alpha") == "align.variants.dpo.alpha"  # set nowhere: a variant's key
    assert dpo.where("epochs", ("epochs",)) == "align.common.epochs"  # ... unless a common one
    assert dpo.loss() == LossConfig("sigmoid", "jsd", 0.3)


def test_loss_errors_name_the_key_where_it_was_set():
    params = _params({"divergence": "tv"}, dpo={"loss": "sigmoid", "beta": 0.3})
    with pytest.raises(ValueError, match=r"^params: align\.common\.divergence: must be one of "):
        read_variant(params, "dpo").loss()
    params = _params({}, dpo={"loss": "sigmoid", "divergence": "alpha", "beta": 0.3})
    with pytest.raises(ValueError, match=r"^params: align\.variants\.dpo\.alpha: required for"):
        read_variant(params, "dpo").loss()


def test_check_keys_refuses_a_seed_and_unknown_keys():
    v = read_variant(_params({"epochs": 1}, dpo={"loss": "sigmoid"}), "dpo")
    v.check_keys(("epochs",))
    with pytest.raises(ValueError, match=r"^params: align\.common\.epochs: not a known key"):
        v.check_keys(())
    v = Variant("dpo", {}, {"seed": 3})
    with pytest.raises(ValueError, match=r"^params: align\.variants\.dpo\.seed: not allowed"):
        v.check_keys(("seed",))


@pytest.mark.parametrize(
    "params, name, message",
    [
        (_params({}, dpo={}), "alpha-0.1", r"variant name 'alpha-0\.1' must match .*'alpha-0_1'"),
        (_params({}, dpo={}), "-dpo", r"variant name '-dpo' must match"),
        (_params({}, dpo={}), "ipo", r"params: align\.variants\.ipo: is missing \(variants: dpo\)"),
        (_params({}, sft={}), "sft", r"params: align\.variants\.sft: clashes with the SFT"),
        (_params({}, dpo=["x"]), "dpo", r"params: align\.variants\.dpo: must be a mapping"),
        (_params([], dpo={}), "dpo", r"params: align\.common: must be a mapping, got \[\]"),
        (_params({}), "dpo", r"params: align\.variants: must be a non-empty mapping, got \{\}"),
        ({"seed": 0}, "dpo", r"params: section 'align' is missing"),
        ({"align": 3}, "dpo", r"params: align: must be a mapping, got 3"),
    ],
)
def test_bad_names_and_shapes_are_one_line_errors(params, name, message):
    with pytest.raises(ValueError, match=f"^{message}") as err:
        read_variant(params, name)
    assert "\n" not in str(err.value)


def test_null_common_and_null_variants_read_as_empty():
    assert align_section(_params(None, dpo=None)) == ({}, {"dpo": None})
    assert read_variant(_params(None, dpo=None), "dpo").settings == {}


def test_read_variants_checks_every_name_in_params_order():
    variants = read_variants(PARAMS)
    assert list(variants) == list(PARAMS["align"]["variants"])
    assert all(isinstance(v.loss(), LossConfig) for v in variants.values())
    bad = copy.deepcopy(PARAMS)
    bad["align"]["variants"]["a.b"] = {}
    with pytest.raises(ValueError, match=r"^variant name 'a\.b' must match"):
        read_variants(bad)
    check_name("alpha-0_5")


def test_loss_keys_are_the_loss_config_fields():
    assert LOSS_KEYS == (
        "loss",
        "divergence",
        "beta",
        "alpha",
        "sft_weight",
        "label_smoothing",
        "margin",
        "sft_reduction",
    )


@pytest.mark.parametrize("module", ["stages.report", "stages.frontier", "stages.lib.variants"])
def test_reading_variants_does_not_import_torch(module):
    """report and frontier read the variants' losses without the loss functions (nor torch):
    editing a loss formula does not make them stale."""
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
