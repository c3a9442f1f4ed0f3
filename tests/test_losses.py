"""Tests for stages.lib.losses: closed forms, float32 stability, limits, and a cross-check against trl.

The trl cross-check builds a real ``trl.DPOTrainer`` (tiny GPT-2 from a config, word-level tokenizer
built offline, two-row in-memory dataset, ``precompute_ref_log_probs=True``) and calls its public
``compute_loss(model, inputs)`` with a stub policy whose per-token log-probs are our summed policy
log-probs (one non-zero position per row) and with ``ref_chosen_logps``/``ref_rejected_logps`` in
``inputs``. So trl's own f-divergence and loss code runs on exactly our batch, and autograd gives
its gradient with respect to the same policy log-prob leaves.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.lib import losses as L
from stages.lib import variants as V

BETAS = (1e-5, 0.01, 0.1, 1.0)
FINITE_ALPHAS = (1e-6, 1e-3, 0.3, 0.5, 0.999)
C = L.SAFE_EXP_CAP


def all_combos(alphas=FINITE_ALPHAS):
    """Every valid (loss, divergence, alpha) configuration."""
    out = []
    for loss in ("sigmoid", "hinge"):
        out += [(loss, d, None) for d in ("reverse_kl", "forward_kl", "jsd")]
        out += [(loss, "alpha", a) for a in alphas]
    return out + [("ipo", "reverse_kl", None)]


def t64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def run_ours(pw, pl, rw, rl, lw, ll, **cfg):
    """Our loss (mean over pairs) and its gradients w.r.t. the policy log-probs."""
    pw, pl = pw.detach().clone().requires_grad_(), pl.detach().clone().requires_grad_()
    out = L.preference_loss(pw, pl, rw, rl, lw, ll, V.LossConfig(**cfg))
    out.loss.backward()
    return out, pw.grad, pl.grad


# --------------------------------------------------------------------------- closed forms

R_VALUES = (-3.0, -0.5, 0.0, 0.25, 2.0, 7.0)


@pytest.mark.parametrize(
    "divergence, alpha, f_prime_minus_const",
    [
        ("reverse_kl", None, lambda u: math.log(u) + 1 - 1),
        ("forward_kl", None, lambda u: -1 / u),
        ("jsd", None, lambda u: math.log(2 * u / (1 + u)) - math.log(2)),
        ("alpha", 0.1, lambda u: (1 - u**-0.1) / 0.1),
        ("alpha", 0.5, lambda u: (1 - u**-0.5) / 0.5),
        ("alpha", 0.9, lambda u: (1 - u**-0.9) / 0.9),
    ],
)
def test_scores_match_f_prime_table(divergence, alpha, f_prime_minus_const):
    r = t64(*R_VALUES)
    expected = t64(*(f_prime_minus_const(math.exp(x)) for x in R_VALUES))
    torch.testing.assert_close(
        L.divergence_score(r, divergence, alpha), expected, rtol=1e-12, atol=1e-12
    )


def test_named_scores_closed_forms():
    r = t64(*R_VALUES)
    torch.testing.assert_close(L.reverse_kl_score(r), r)
    torch.testing.assert_close(L.forward_kl_score(r), t64(*(-math.exp(-x) for x in R_VALUES)))
    torch.testing.assert_close(L.jsd_score(r), t64(*(-math.log1p(math.exp(-x)) for x in R_VALUES)))
    # The brief's -exp(-αr)/α, shifted by the dropped constant 1/α.
    a = 0.3
    torch.testing.assert_close(
        L.alpha_score(r, a), t64(*(-math.exp(-a * x) / a + 1 / a for x in R_VALUES))
    )


DELTAS = (-4.0, -0.3, 0.0, 0.7, 5.0, 30.0)


@pytest.mark.parametrize("beta", (0.1, 1.0, 2.0))
def test_pair_losses_closed_forms(beta):
    d = t64(*DELTAS)
    sig = t64(*(-math.log(1 / (1 + math.exp(-beta * x))) for x in DELTAS))
    hinge = t64(*(max(0.0, 1 - beta * x) for x in DELTAS))
    ipo = t64(*((x - 1 / (2 * beta)) ** 2 for x in DELTAS))
    torch.testing.assert_close(L.sigmoid_loss(d, beta), sig)
    torch.testing.assert_close(L.hinge_loss(d, beta), hinge)
    torch.testing.assert_close(L.ipo_loss(d, beta), ipo)


def _paper_score(r, divergence, alpha):
    """The table's score with plain math: r, -exp(-r), log σ(r), -exp(-αr)/α."""
    return {
        "reverse_kl": lambda: r,
        "forward_kl": lambda: -math.exp(-r),
        "jsd": lambda: -math.log1p(math.exp(-r)),
        "alpha": lambda: -math.exp(-alpha * r) / alpha,
    }[divergence]()


@pytest.mark.parametrize("loss, divergence, alpha", all_combos(alphas=(0.2, 0.7)))
def test_preference_loss_by_hand(loss, divergence, alpha):
    pw, pl = t64(-10.0, -20.0, -5.0), t64(-12.0, -18.0, -7.0)
    rw, rl = t64(-11.0, -19.0, -5.5), t64(-11.0, -18.5, -6.0)
    lw, ll = t64(4, 10, 2), t64(5, 8, 3)
    beta = 0.5
    out, gw, gl = run_ours(
        pw, pl, rw, rl, lw, ll, loss=loss, divergence=divergence, beta=beta, alpha=alpha
    )
    expected = []
    for i in range(3):
        r_w, r_l = float(pw[i] - rw[i]), float(pl[i] - rl[i])
        if loss == "ipo":
            d = r_w / float(lw[i]) - r_l / float(ll[i])
            expected.append((d - 1 / (2 * beta)) ** 2)
            continue
        d = _paper_score(r_w, divergence, alpha) - _paper_score(r_l, divergence, alpha)
        expected.append(
            math.log1p(math.exp(-beta * d)) if loss == "sigmoid" else max(0.0, 1 - beta * d)
        )
    torch.testing.assert_close(out.losses, t64(*expected))
    n_w, n_l = (lw, ll) if loss == "ipo" else (1, 1)  # IPO: per-token means, as its loss
    torch.testing.assert_close(out.chosen_rewards, beta * (pw - rw) / n_w)
    torch.testing.assert_close(out.rejected_rewards, beta * (pl - rl) / n_l)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert gw is not None and gl is not None and out.loss.shape == ()


@pytest.mark.parametrize("loss, divergence, alpha", all_combos(alphas=(0.2, 0.7)))
def test_gradient_matches_finite_differences(loss, divergence, alpha):
    gen = torch.Generator().manual_seed(2)
    pw, pl = (torch.rand(5, generator=gen, dtype=torch.float64) * 6 - 13 for _ in range(2))
    rw, rl = t64(-10, -9, -11, -12, -10), t64(-10, -11, -9, -10, -12)
    lw, ll = t64(1, 3, 5, 7, 9), t64(2, 4, 6, 8, 10)

    def f(pw, pl):
        return L.preference_loss(
            pw, pl, rw, rl, lw, ll, V.LossConfig(loss, divergence, 0.7, alpha)
        ).losses

    assert torch.autograd.gradcheck(f, (pw.requires_grad_(), pl.requires_grad_()))


def test_ipo_clamps_zero_lengths_to_one():
    pw, pl, ref = t64(-1.0), t64(-3.0), t64(-2.0)
    ipo = V.LossConfig("ipo", "reverse_kl", 0.1)
    zero = L.preference_loss(pw, pl, ref, ref, t64(0), t64(0), ipo).losses
    one = L.preference_loss(pw, pl, ref, ref, t64(1), t64(1), ipo).losses
    torch.testing.assert_close(zero, one)


def test_ipo_rewards_are_the_per_token_means_its_loss_sees():
    """The logged margin and accuracy of IPO follow its loss: a long chosen completion with the
    larger summed log-ratio but the smaller per-token one is a wrong pair (margin < 0) and pays
    the larger loss. Summed log-ratios (the old rewards) called it right."""
    beta = 0.5
    pw, rw, lw = t64(-8.0), t64(-10.0), t64(10)  # r_w = 2 over 10 tokens: 0.2 per token
    pl, rl, ll = t64(-3.0), t64(-4.0), t64(2)  # r_l = 1 over 2 tokens: 0.5 per token
    out = L.preference_loss(pw, pl, rw, rl, lw, ll, V.LossConfig("ipo", "reverse_kl", beta))
    margin = out.chosen_rewards - out.rejected_rewards
    torch.testing.assert_close(margin, t64(beta * (0.2 - 0.5)))
    assert margin.item() < 0  # accuracy counts it wrong, as the loss does
    torch.testing.assert_close(out.losses, (margin / beta - 1 / (2 * beta)) ** 2)
    # the other losses keep DPO's β·r on summed log-ratios
    dpo = L.preference_loss(pw, pl, rw, rl, lw, ll, V.LossConfig("sigmoid", "reverse_kl", beta))
    torch.testing.assert_close(dpo.chosen_rewards - dpo.rejected_rewards, t64(beta * (2 - 1)))


def test_half_precision_inputs_are_computed_in_float32():
    x = torch.tensor([-1.0, 2.0], dtype=torch.bfloat16, requires_grad=True)
    out = L.preference_loss(
        x,
        x.detach() - 1,
        x.detach(),
        x.detach(),
        torch.ones(2),
        torch.ones(2),
        V.LossConfig("sigmoid", "reverse_kl", 0.1),
    )
    assert out.losses.dtype == torch.float32
    out.loss.backward()
    assert x.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------- safe exp


def test_safe_exp_is_exp_up_to_the_cap_then_tangent_line():
    x = t64(-50.0, -1.0, 0.0, 1e-9, 10.0, C - 0.1, C)
    torch.testing.assert_close(L.safe_exp(x), torch.exp(x), rtol=1e-13, atol=0)
    torch.testing.assert_close(L.safe_expm1(x), torch.expm1(x), rtol=1e-13, atol=0)
    d = t64(1e-6, 1.0, 70.0, 1e4)
    torch.testing.assert_close(L.safe_exp(C + d), math.exp(C) * (1 + d), rtol=1e-13, atol=0)


def test_safe_exp_is_c1_and_strictly_increasing():
    x = torch.tensor([C - 1e-7, C + 1e-7], dtype=torch.float64, requires_grad=True)
    y = L.safe_exp(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.full_like(g, math.exp(C)), rtol=1e-6, atol=0)
    assert abs(float((y[1] - y[0]).detach())) < 1e-5 * math.exp(C)
    grid = torch.linspace(-100, 1e4, 100_001, dtype=torch.float64)
    assert bool((L.safe_exp(grid).diff() > 0).all())


def test_forward_kl_departs_from_paper_only_below_minus_cap():
    r = t64(-C + 1, -C, -C - 5, -1e4)
    s = L.forward_kl_score(r)
    torch.testing.assert_close(s[:2], -torch.exp(-r[:2]))
    # below -cap: the tangent line -exp(c)(1 + (-r - c)) instead of -exp(-r)
    torch.testing.assert_close(s[2:], -math.exp(C) * (1 + (-r[2:] - C)))


# --------------------------------------------------------------------------- float32 stability

EXTREME_R = (-1e4, -1e3, -200.0, -88.8, -31.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e3, 1e4)


def _assert_finite_everywhere(r_w, r_l, len_w, len_l, ref_w, ref_l):
    for loss, divergence, alpha in all_combos():
        for beta in BETAS:
            pw, pl = (ref_w + r_w).requires_grad_(), (ref_l + r_l).requires_grad_()
            out = L.preference_loss(
                pw, pl, ref_w, ref_l, len_w, len_l, V.LossConfig(loss, divergence, beta, alpha)
            )
            gw, gl = torch.autograd.grad(out.losses.sum(), (pw, pl))
            cfg = f"{loss}/{divergence}/alpha={alpha}/beta={beta}"
            assert torch.isfinite(out.losses).all(), cfg
            assert torch.isfinite(gw).all() and torch.isfinite(gl).all(), cfg
            assert torch.isfinite(out.chosen_rewards).all(), cfg
            assert torch.isfinite(out.rejected_rewards).all(), cfg


def test_finite_float32_on_extreme_grid():
    pairs = [(a, b) for a in EXTREME_R for b in EXTREME_R]
    r_w = torch.tensor([a for a, _ in pairs], dtype=torch.float32)
    r_l = torch.tensor([b for _, b in pairs], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    len_w = torch.randint(1, 512, (len(pairs),), generator=gen).float()
    len_l = torch.ones(len(pairs))
    ref_w = -torch.rand(len(pairs), generator=gen) * 300
    ref_l = -torch.rand(len(pairs), generator=gen) * 300
    _assert_finite_everywhere(r_w, r_l, len_w, len_l, ref_w, ref_l)


_f32 = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    data=st.lists(
        st.tuples(
            _f32,
            _f32,
            st.integers(1, 2048),
            st.integers(1, 2048),
            st.floats(-1e3, 0, width=32),
            st.floats(-1e3, 0, width=32),
        ),
        min_size=1,
        max_size=64,
    )
)
def test_finite_float32_random(data):
    cols = list(zip(*data))
    r_w, r_l, len_w, len_l, ref_w, ref_l = (torch.tensor(c, dtype=torch.float32) for c in cols)
    _assert_finite_everywhere(r_w, r_l, len_w, len_l, ref_w, ref_l)


# --------------------------------------------------------------------------- limits in alpha


def _margin_and_grad(divergence, alpha, r_w, r_l, beta=0.1):
    rw, rl = r_w.clone().requires_grad_(), r_l.clone().requires_grad_()
    delta = L.divergence_score(rw, divergence, alpha) - L.divergence_score(rl, divergence, alpha)
    gw, gl = torch.autograd.grad(L.sigmoid_loss(delta, beta).sum(), (rw, rl))
    return delta.detach(), gw, gl


def _random_ratios(n=64, scale=5.0):
    gen = torch.Generator().manual_seed(1)
    return (
        (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * scale,
        (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * scale,
    )


def test_alpha_to_zero_approaches_reverse_kl():
    r_w, r_l = _random_ratios()
    d_rev, gw_rev, gl_rev = _margin_and_grad("reverse_kl", None, r_w, r_l)
    bound = ((r_w**2 + r_l**2) / 2).max()  # -expm1(-αr)/α = r - αr²/2 + O(α²)
    for a in (1e-2, 1e-3, 1e-4, 1e-6):
        d_a, gw, gl = _margin_and_grad("alpha", a, r_w, r_l)
        assert (d_a - d_rev).abs().max() <= 1.1 * a * bound
        torch.testing.assert_close(gw, gw_rev, rtol=0, atol=50 * a)
        torch.testing.assert_close(gl, gl_rev, rtol=0, atol=50 * a)
    # our score itself (not only Δ) tends to r: the 1/α constant is dropped inside expm1
    torch.testing.assert_close(L.alpha_score(r_w, 1e-9), r_w, rtol=1e-7, atol=1e-7)


def test_alpha_to_one_approaches_forward_kl():
    r_w, r_l = _random_ratios()
    d_fwd, gw_fwd, gl_fwd = _margin_and_grad("forward_kl", None, r_w, r_l)
    for eps in (1e-3, 1e-5, 1e-7):
        d_a, gw, gl = _margin_and_grad("alpha", 1 - eps, r_w, r_l)
        torch.testing.assert_close(d_a, d_fwd, rtol=20 * eps, atol=20 * eps)
        torch.testing.assert_close(gw, gw_fwd, rtol=20 * eps, atol=20 * eps)
        torch.testing.assert_close(gl, gl_fwd, rtol=20 * eps, atol=20 * eps)
    # the scores differ by the constant 1 = (1 - u^-1) - (-1/u)
    torch.testing.assert_close(
        L.alpha_score(r_w, 1 - 1e-12) - L.forward_kl_score(r_w),
        torch.ones_like(r_w),
        rtol=0,
        atol=1e-9,
    )


def test_small_alpha_float32_has_no_cancellation():
    """-exp(-αr)/α loses ~eps/α absolute precision in float32; our -expm1(-αr)/α does not."""
    r = torch.linspace(-3, 3, 101, dtype=torch.float32)
    alpha = 1e-5
    exact = -torch.expm1(-alpha * r.double()) / alpha
    naive = -torch.exp(-alpha * r) / alpha + 1 / alpha
    ours = L.alpha_score(r, alpha)
    assert (naive.double() - exact).abs().max() > 1e-2
    assert (ours.double() - exact).abs().max() < 1e-5


# --------------------------------------------------------------------------- LossConfig


@pytest.mark.parametrize("loss, divergence, alpha", all_combos())
def test_loss_config_accepts_valid(loss, divergence, alpha):
    config = V.LossConfig(loss, divergence, 0.1, alpha)
    assert (config.loss, config.divergence, config.beta, config.alpha) == (
        loss,
        divergence,
        0.1,
        alpha,
    )


@pytest.mark.parametrize(
    "loss, divergence, beta, alpha, param",
    [
        ("dpo", "reverse_kl", 0.1, None, "loss"),
        ("sigmoid", "kl", 0.1, None, "divergence"),
        ("sigmoid", "js_divergence", 0.1, None, "divergence"),
        ("sigmoid", "reverse_kl", 0.0, None, "beta"),
        ("sigmoid", "reverse_kl", -0.1, None, "beta"),
        ("sigmoid", "reverse_kl", float("nan"), None, "beta"),
        ("sigmoid", "reverse_kl", float("inf"), None, "beta"),
        ("sigmoid", "reverse_kl", "0.1", None, "beta"),
        ("sigmoid", "reverse_kl", True, None, "beta"),
        ("sigmoid", "alpha", 0.1, None, "alpha"),
        ("hinge", "alpha", 0.1, 0.0, "alpha"),
        ("hinge", "alpha", 0.1, 1.0, "alpha"),
        ("hinge", "alpha", 0.1, 1.5, "alpha"),
        ("hinge", "alpha", 0.1, -0.2, "alpha"),
        ("hinge", "alpha", 0.1, float("nan"), "alpha"),
        ("sigmoid", "reverse_kl", 0.1, 0.5, "alpha"),  # alpha belongs to divergence alpha only
        ("ipo", "jsd", 0.1, None, "divergence"),
        ("ipo", "alpha", 0.1, 0.5, "divergence"),
        ("ipo", "forward_kl", 0.1, None, "divergence"),
    ],
)
def test_bad_loss_config_is_one_line_naming_the_field(loss, divergence, beta, alpha, param):
    with pytest.raises(ValueError, match=rf"^{param}: ") as err:
        V.LossConfig(loss, divergence, beta, alpha)
    assert "\n" not in str(err.value)


def test_loss_config_is_frozen_and_checked_again_on_replace():
    import dataclasses

    config = V.LossConfig("sigmoid", "alpha", 0.1, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 1.0
    with pytest.raises(ValueError, match="^beta: must be a finite number > 0, got -1.0$"):
        dataclasses.replace(config, beta=-1.0)


def test_preference_loss_does_not_validate_again(monkeypatch):
    """The config is checked once, when built; the per-step loss only reads it."""
    calls = []
    check = V.LossConfig.__post_init__
    monkeypatch.setattr(
        V.LossConfig, "__post_init__", lambda self: calls.append(self) or check(self)
    )
    config = V.LossConfig("sigmoid", "alpha", 0.3, 0.5)
    x = torch.zeros(2)
    for _ in range(3):
        L.preference_loss(x, x, x, x, x + 1, x + 1, config)
    assert calls == [config]


def test_divergence_score_names_a_bad_divergence():
    with pytest.raises(ValueError, match="^divergence: must be one of "):
        L.divergence_score(torch.zeros(1), "chi2")


WHERE = {"loss": "align.common.loss"}


def _where(key: str) -> str:
    return WHERE.get(key, f"align.variants.dpo.{key}")


@pytest.mark.parametrize(
    "mapping, message",
    [
        (
            {"loss": "sigmoid", "divergence": "reverse_kl", "beta": -1.0},
            "params: align.variants.dpo.beta: must be a finite number > 0, got -1.0",
        ),
        (
            {"loss": "dpo", "divergence": "reverse_kl", "beta": 0.1},
            "params: align.common.loss: must be one of sigmoid, hinge, ipo, robust, sigmoid_norm, "
            "apo_zero, slic_hf, plackett_luce, rrhf, got 'dpo'",
        ),
        (
            {"loss": "sigmoid", "beta": 0.1},
            "params: align.variants.dpo.divergence: is missing (score s(r): ",
        ),
        (
            {"loss": "sigmoid", "divergence": "reverse_kl", "beta": "big"},
            "params: align.variants.dpo.beta: must be float, got 'big'",
        ),
        (
            {"loss": "sigmoid", "divergence": "alpha", "beta": 0.1},
            "params: align.variants.dpo.alpha: required for divergence 'alpha'",
        ),
        (
            {"loss": "sigmoid", "divergence": "forward_kl", "beta": 0.1, "alpha": 0.5},
            "params: align.variants.dpo.alpha: only used by divergence 'alpha', not 'forward_kl'",
        ),
        (
            {"loss": "sigmoid", "divergence": "alpha", "beta": 0.1, "alpha": 1.0},
            "params: align.variants.dpo.alpha: must be in the open interval (0, 1)",
        ),
        (
            {"loss": "ipo", "divergence": "jsd", "beta": 0.1},
            "params: align.variants.dpo.divergence: loss 'ipo' requires divergence 'reverse_kl'",
        ),
        (
            {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1, "tau": 1},
            "params: align.variants.dpo.tau: not a known key (known: loss, divergence, beta, alpha, "
            "sft_weight, label_smoothing, margin, sft_reduction)",
        ),
    ],
)
def test_read_loss_config_names_the_key(mapping, message):
    with pytest.raises(ValueError) as err:
        V.read_loss_config(mapping, _where)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_read_loss_config_coerces_like_params():
    config = V.read_loss_config(
        {"loss": "sigmoid", "divergence": "alpha", "beta": 1, "alpha": 0.5}, _where
    )
    assert config == V.LossConfig("sigmoid", "alpha", 1.0, 0.5) and isinstance(config.beta, float)


# --------------------------------------------------------------------------- cross-check with trl

TRL_DIVERGENCE = {
    "reverse_kl": "reverse_kl",
    "forward_kl": "forward_kl",
    "jsd": "js_divergence",
    "alpha": "alpha_divergence",
}


class _StubPolicy:
    """Stands in for the fused-LM-head model trl calls: returns fixed per-token log-probs."""

    def __init__(self, logps: torch.Tensor):
        self.logps = logps

    def __call__(self, **kwargs):
        n, seq = kwargs["input_ids"].shape
        log_probs = torch.cat([self.logps.unsqueeze(1), self.logps.new_zeros(n, seq - 2)], dim=1)
        zeros = torch.zeros(n, seq - 1)
        return SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """make(loss_type, f_divergence_type, f_alpha_divergence_coef, beta, **DPOConfig extras)
    -> a real DPOTrainer (``loss_type`` a name or a list of names, e.g. ["sigmoid", "sft"])."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    vocab = {f"w{i}": i for i in range(96)} | {"<pad>": 96, "<eos>": 97}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="w0"
    )
    dataset = Dataset.from_dict(
        {"prompt": ["w1 w2", "w3"], "chosen": [" w4 w5", " w6"], "rejected": [" w7", " w8 w9"]}
    )
    cache = {}

    def make(loss_type, f_divergence_type, coef=0.5, beta=0.1, **extra):
        loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        key = (
            tuple(loss_types),
            f_divergence_type,
            coef,
            beta,
            tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(extra.items())),
        )
        if key not in cache:
            torch.manual_seed(0)
            model = GPT2LMHeadModel(
                GPT2Config(
                    n_layer=1,
                    n_embd=32,
                    n_head=2,
                    vocab_size=100,
                    n_positions=32,
                    bos_token_id=97,
                    eos_token_id=97,
                    pad_token_id=96,
                )
            )
            with warnings.catch_warnings():  # transformers 5 deprecation notices raised inside trl
                warnings.simplefilter("ignore", FutureWarning)
                args = DPOConfig(
                    output_dir=str(tmp_path_factory.mktemp("dpo")),
                    report_to="none",
                    use_cpu=True,
                    loss_type=loss_types,
                    f_divergence_type=f_divergence_type,
                    f_alpha_divergence_coef=coef,
                    beta=beta,
                    precompute_ref_log_probs=True,
                    per_device_train_batch_size=2,
                    save_strategy="no",
                    disable_tqdm=True,
                    **extra,
                )
                cache[key] = DPOTrainer(
                    model=model, args=args, train_dataset=dataset, processing_class=tokenizer
                )
        return cache[key]

    return make


def run_trl(trainer, pw, pl, rw, rl, lw, ll):
    """trl's DPOTrainer.compute_loss on our summed log-probs; returns (mean loss, grad_w, grad_l)."""
    pw, pl = pw.detach().clone().requires_grad_(), pl.detach().clone().requires_grad_()
    lengths = torch.cat([lw, ll]).long()
    seq = 2 + int(lengths.max())
    completion_mask = (torch.arange(seq) >= 1) & (torch.arange(seq) <= lengths.unsqueeze(1))
    inputs = {
        "input_ids": torch.ones(2 * len(pw), seq, dtype=torch.long),
        "attention_mask": torch.ones(2 * len(pw), seq, dtype=torch.long),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": rw,
        "ref_rejected_logps": rl,
    }
    loss = trainer.compute_loss(_StubPolicy(torch.cat([pw, pl])), inputs)
    gw, gl = torch.autograd.grad(loss, (pw, pl), allow_unused=False)
    return loss.detach(), gw, gl


def _batch(n=8, scale=4.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref_w, ref_l = -5 - 50 * torch.rand(n, generator=gen), -5 - 50 * torch.rand(n, generator=gen)
    r_w = (torch.rand(n, generator=gen) * 2 - 1) * scale
    r_l = (torch.rand(n, generator=gen) * 2 - 1) * scale
    len_w = torch.randint(1, 20, (n,), generator=gen).float()
    len_l = torch.randint(1, 20, (n,), generator=gen).float()
    return ref_w + r_w, ref_l + r_l, ref_w, ref_l, len_w, len_l


def _trl_combos():
    out = [("ipo", "reverse_kl", None)]
    for loss in ("sigmoid", "hinge"):
        out += [(loss, d, None) for d in ("reverse_kl", "forward_kl", "jsd")]
        out += [(loss, "alpha", a) for a in (0.2, 0.5, 0.9)]
    return out


@pytest.mark.parametrize("beta", (0.1, 1.0))
@pytest.mark.parametrize("loss, divergence, alpha", _trl_combos())
def test_matches_trl(trl_trainer, loss, divergence, alpha, beta):
    # trl's f_alpha_divergence_coef is 1 - α (its f'(t) = (t^(coef-1) - 1)/(coef-1))
    coef = 1 - alpha if alpha is not None else 0.5
    trainer = trl_trainer(loss, TRL_DIVERGENCE[divergence], coef, beta)
    batch = _batch()
    trl_loss, trl_gw, trl_gl = run_trl(trainer, *batch)
    out, gw, gl = run_ours(*batch, loss=loss, divergence=divergence, beta=beta, alpha=alpha)
    torch.testing.assert_close(out.loss.detach(), trl_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, trl_gw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gl, trl_gl, rtol=1e-5, atol=1e-7)
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    # trl logs β·r on summed log-ratios for every loss; ours are per-token for IPO (as its loss)
    n_w, n_l = (batch[4], batch[5]) if loss == "ipo" else (1, 1)
    chosen, rejected = out.chosen_rewards * n_w, out.rejected_rewards * n_l
    assert metrics["rewards/chosen"][-1] == pytest.approx(chosen.mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/margins"][-1] == pytest.approx(
        (chosen - rejected).mean().item(), rel=1e-5, abs=1e-6
    )


def test_trl_alpha_coefficient_is_one_minus_alpha(trl_trainer):
    """trl's docstring says 'u^-α', but its code uses u^(coef-1): coef = 1 - α (f-DPO convention)."""
    batch = _batch(seed=3)
    trl_loss = run_trl(trl_trainer("sigmoid", "alpha_divergence", 0.2, 0.1), *batch)[0]
    assert run_ours(*batch, loss="sigmoid", divergence="alpha", beta=0.1, alpha=0.8)[
        0
    ].loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert run_ours(*batch, loss="sigmoid", divergence="alpha", beta=0.1, alpha=0.2)[
        0
    ].loss.item() != pytest.approx(trl_loss.item(), rel=1e-3)
    # endpoints: coef 0 is forward KL, coef 1 falls back to reverse KL
    for coef, divergence in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        trl_loss = run_trl(trl_trainer("hinge", "alpha_divergence", coef, 1.0), *batch)[0]
        ours = run_ours(*batch, loss="hinge", divergence=divergence, beta=1.0)[0].loss
        torch.testing.assert_close(ours.detach(), trl_loss, rtol=1e-5, atol=1e-6)


def _pairs(r_w, r_l):
    r_w, r_l = torch.tensor(r_w), torch.tensor(r_l)
    ref = torch.full_like(r_w, -20.0)
    ones = torch.ones_like(r_w)
    return ref + r_w, ref + r_l, ref, ref, ones, ones


@pytest.mark.parametrize("divergence", ("reverse_kl", "jsd"))
@pytest.mark.parametrize("loss", ("sigmoid", "hinge"))
def test_trl_agrees_at_extreme_ratios_for_log_space_scores(trl_trainer, loss, divergence):
    batch = _pairs([1e4, -1e4, 500.0, -500.0, 0.0], [-1e4, 1e4, -500.0, 500.0, 1e4])
    trl_loss, trl_gw, trl_gl = run_trl(
        trl_trainer(loss, TRL_DIVERGENCE[divergence], 0.5, 0.1), *batch
    )
    out, gw, gl = run_ours(*batch, loss=loss, divergence=divergence, beta=0.1)
    for ours, theirs in ((out.loss.detach(), trl_loss), (gw, trl_gw), (gl, trl_gl)):
        assert torch.isfinite(theirs).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_trl_forward_kl_overflows_where_ours_stays_finite(trl_trainer):
    """trl's 1 - exp(-r) overflows for r < -88.7 in float32: loss inf (chosen far below ref) or
    gradient 0·inf = nan (rejected far below ref). Ours is linear there and keeps the sign."""
    trainer = trl_trainer("sigmoid", "forward_kl", 0.5, 0.1)
    chosen_low = _pairs([-100.0], [0.0])
    rejected_low = _pairs([0.0], [-100.0])
    assert torch.isinf(run_trl(trainer, *chosen_low)[0])
    assert torch.isnan(run_trl(trainer, *rejected_low)[2]).all()
    out, gw, gl = run_ours(*chosen_low, loss="sigmoid", divergence="forward_kl", beta=0.1)
    # finite, and the gradient raises the chosen and lowers the rejected log-prob
    assert torch.isfinite(out.loss) and out.loss > 1e10 and gw < 0 and gl > 0
    out, gw, gl = run_ours(*rejected_low, loss="sigmoid", divergence="forward_kl", beta=0.1)
    assert out.loss == 0 and torch.isfinite(gw) and torch.isfinite(gl)


def test_trl_alpha_clamp_loses_the_gradient_where_ours_keeps_it(trl_trainer):
    """trl clamps the α exponent at 80 (float32): when both ratios are beyond it the margin ties at 0,
    the loss sits at log 2 and the gradient vanishes, although the chosen completion is far less likely
    than the rejected one. Ours keeps a finite, correctly signed margin and gradient."""
    batch = _pairs([-300.0], [-200.0])  # α r ≤ -100 for both: exponent 150 and 100 > 80
    trl_loss, trl_gw, trl_gl = run_trl(trl_trainer("sigmoid", "alpha_divergence", 0.5, 0.1), *batch)
    assert (
        trl_loss.item() == pytest.approx(math.log(2)) and trl_gw.item() == 0 and trl_gl.item() == 0
    )
    out, gw, gl = run_ours(*batch, loss="sigmoid", divergence="alpha", beta=0.1, alpha=0.5)
    assert torch.isfinite(out.loss) and out.loss > 1e10 and gw < 0 and gl > 0


def test_trl_small_alpha_loses_float32_precision(trl_trainer):
    """For small α (coef near 1) trl's exp(t) - 1 cancels in float32 (error ~ 1e-7/α per score);
    our expm1 form stays accurate. Hinge with β = 1 shows the margin error one pair at a time."""
    alpha = 1e-5
    trainer = trl_trainer("hinge", "alpha_divergence", 1 - alpha, 1.0)
    pw, pl, rw, rl, lw, ll = _batch(n=16, scale=2.0, seed=5)
    trl_err, our_err = [], []
    for i in range(len(pw)):
        pair = tuple(x[i : i + 1] for x in (pw, pl, rw, rl, lw, ll))
        r_w, r_l = (pair[0] - pair[2]).double(), (pair[1] - pair[3]).double()
        delta = -torch.expm1(-alpha * r_w) / alpha + torch.expm1(-alpha * r_l) / alpha
        exact = (1 - delta).clamp(min=0).item()
        trl_err.append(abs(run_trl(trainer, *pair)[0].item() - exact))
        ours = run_ours(*pair, loss="hinge", divergence="alpha", beta=1.0, alpha=alpha)[0].loss
        our_err.append(abs(ours.item() - exact))
    assert max(our_err) < 1e-5
    assert max(trl_err) > 1e-3, max(trl_err)


def test_trl_accepts_ipo_with_f_divergences_we_reject(trl_trainer):
    """Design decision: IPO (Eq. 17) is a squared loss on the log-ratio margin; trl also squares
    length-normalized f′ scores, a combination neither paper derives. We raise instead."""
    trl_trainer("ipo", "js_divergence", 0.5, 0.1)  # trl constructs it without complaint
    with pytest.raises(ValueError, match="^divergence: "):
        V.LossConfig("ipo", "jsd", 0.1, None)
