"""SLiC-HF and RRHF as their papers define them (issue 29), beside the RSO hinge they were
confused with: closed forms on hand-computed examples, the SFT term's two reductions, float32
stability at extreme log-probs, the toy optimum of the reference-free hinge, and the config's
one-line errors naming the key.

* SLiC-HF (Zhao et al. 2023, arXiv 2305.10425): max(0, δ - log π(y+|x) + log π(y-|x)) -
  λ·log π(y_ref|x) on summed log-probs, no reference (``loss: slic_hf``, ``margin`` δ).
* RRHF (Yuan et al. 2023, arXiv 2304.05302): L_rank + λ·L_ft with L_ft the summed token NLL of
  the best response (``loss: rrhf``, ``sft_reduction: sum``, its default).
* RSO's normalised hinge (Liu et al. 2023, arXiv 2309.06657): ``loss: hinge``, on reference
  log-ratios; the per-token mean NLL (``sft_reduction: mean``) is trl's and RPO's.

    .venv/bin/python -m pytest tests/test_losses_papers.py -q -p no:xdist
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from test_losses import BETAS, EXTREME_R, t64
from test_losses_theory import BEST, LOG_REF, LOSE, R_STAR, WIN, N
from test_losses_variants import groups_of

from stages.lib import losses as L
from stages.lib import variants as V

# --------------------------------------------------------------------------- SLiC-HF

# Two prompts of 3 and 2 completions (rows 0-2, 3-4): summed policy log-probs, SFT log-probs that
# differ from them (so a loss that subtracted the reference would give other numbers), token
# counts and rewards. Binary fractions throughout: every value below is exact in float64.
POLICY = t64(-20.0, -19.5, -26.0, -30.0, -33.0)
REF = t64(-18.0, -22.0, -25.0, -31.5, -29.0)
N_TOKENS = t64(8, 6, 9, 10, 12)
REWARDS = t64(2.0, 1.0, -1.0, 0.5, 0.0)  # best: row 0 (prompt 0), row 3 (prompt 1)
GROUPS = groups_of(3, 2)
CHOSEN, REJECTED = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4])  # two pairs, then one


def _slic_hf_by_hand(delta: float, lam: float) -> list[float]:
    """Per pair: max(0, δ - (log π_w - log π_l)) + λ·(mean over prompts of -log π(best))."""
    nll_sum = (20.0 + 30.0) / 2  # rows 0 and 3, summed over their tokens, averaged over prompts
    pairs = [(-20.0, -19.5), (-19.5, -26.0), (-30.0, -33.0)]
    return [max(0.0, delta - (w - l)) + lam * nll_sum for w, l in pairs]


@pytest.mark.parametrize("delta, lam", [(1.0, 0.0), (1.0, 0.5), (4.0, 1.0), (0.25, 2.0)])
def test_slic_hf_is_the_papers_loss_on_a_hand_computed_batch(delta, lam):
    """Pair 0: Δ = -0.5, so max(0, δ + 0.5); pair 1: Δ = 6.5; pair 2: Δ = 3. The SFT term is
    λ·25 (the summed NLLs 20 and 30 of the two best rows, averaged over the prompts). Subtracting
    the reference (RSO) or averaging the NLL over tokens (25 -> 50/18) would fail."""
    config = V.LossConfig("slic_hf", margin=delta, sft_weight=lam)
    assert config.sft_reduction == "sum"  # the paper's, by default
    out = L.batch_loss(POLICY, REF, N_TOKENS, CHOSEN, REJECTED, config, GROUPS, REWARDS)
    assert out.losses.tolist() == _slic_hf_by_hand(delta, lam)  # exact
    assert out.loss.item() == pytest.approx(sum(_slic_hf_by_hand(delta, lam)) / 3, rel=1e-15)
    if lam:
        assert out.sft.item() == 25.0
    else:
        assert out.sft is None
    # the logged rewards are the policy's own summed log-probs (no β, no reference)
    assert out.chosen_rewards.tolist() == [-20.0, -19.5, -30.0]
    assert out.rejected_rewards.tolist() == [-19.5, -26.0, -33.0]
    assert not out.listwise


def test_slic_hf_ignores_the_reference_and_differs_from_the_rso_hinge():
    config = V.LossConfig("slic_hf", margin=2.0)
    pw, pl, rw, rl = POLICY[CHOSEN], POLICY[REJECTED], REF[CHOSEN], REF[REJECTED]
    n = N_TOKENS[CHOSEN]
    out = L.preference_loss(pw, pl, rw, rl, n, n, config)
    assert out.losses.tolist() == [2.5, 0.0, 0.0]
    other = L.preference_loss(pw, pl, rw + 7.0, rl - 3.0, n, n, config)
    assert torch.equal(out.losses, other.losses)  # no reference anywhere
    # RSO's hinge max(0, 1 - βΔ_r) on reference log-ratios is β times SLiC-HF's calibration loss
    # on the log-ratios with δ = 1/β: the same hinge, another input
    beta = 0.5
    rso = L.preference_loss(pw, pl, rw, rl, n, n, V.LossConfig("hinge", "reverse_kl", beta))
    on_ratios = L.slic_hf_loss(pw - rw, pl - rl, 1 / beta)
    assert torch.equal(rso.losses, beta * on_ratios)
    assert not torch.equal(rso.losses, beta * out.losses)  # the example tells them apart
    # the function itself: max(0, δ - (w - l))
    torch.testing.assert_close(
        L.slic_hf_loss(t64(-1.0, 0.0, 5.0), t64(0.0, -0.5, -5.0), 1.0), t64(2.0, 0.5, 0.0)
    )


def test_slic_hf_with_the_mean_reduction_is_only_under_its_name():
    config = V.LossConfig("slic_hf", margin=1.0, sft_weight=1.0, sft_reduction="mean")
    out = L.batch_loss(POLICY, REF, N_TOKENS, CHOSEN, REJECTED, config, GROUPS, REWARDS)
    assert out.sft.item() == pytest.approx(50.0 / 18.0, rel=1e-15)  # (20 + 30) / (8 + 10)


# --------------------------------------------------------------------------- RRHF


def test_rrhf_adds_the_summed_nll_of_the_best_response_by_default():
    """Prompt 0: p = log π/|y| = (-2.5, -3.25, -26/9) with rewards 2 > 1 > -1: the ranking loss
    Σ_{r_i < r_j} max(0, p_i - p_j) is 0 for (1, 0), (2, 0) and max(0, -26/9 + 3.25) for (2, 1);
    prompt 1: p = (-3, -2.75), rewards 0.5 > 0: max(0, -2.75 + 3) = 0.25. L_ft (Eq. 3) is the
    summed NLL of the best row, 20 and 30: L = L_rank + λ·L_ft per prompt, averaged (Eq. 4)."""
    config = V.LossConfig("rrhf", sft_weight=1.0)
    assert config.sft_reduction == "sum"
    out = L.batch_loss(POLICY, REF, N_TOKENS, CHOSEN, REJECTED, config, GROUPS, REWARDS)
    rank = [max(0.0, -26.0 / 9.0 + 3.25), 0.25]
    assert out.listwise and out.sft.item() == 25.0
    assert out.losses.tolist() == pytest.approx([r + 25.0 for r in rank], rel=1e-15)
    assert out.loss.item() == pytest.approx((rank[0] + 20.0 + rank[1] + 30.0) / 2, rel=1e-15)
    # the per-token mean form, only under its own name: λ acts on 50/18 instead of 25
    mean = V.LossConfig("rrhf", sft_weight=1.0, sft_reduction="mean")
    out = L.batch_loss(POLICY, REF, N_TOKENS, CHOSEN, REJECTED, mean, GROUPS, REWARDS)
    assert out.sft.item() == pytest.approx(50.0 / 18.0, rel=1e-15)
    assert out.losses.tolist() == pytest.approx([r + 50.0 / 18.0 for r in rank], rel=1e-15)


def test_the_two_reductions_differ_by_the_target_length():
    """On one target of |y| tokens the summed NLL is |y| times the per-token one; over a batch,
    the mean target length times (41.2 tokens on the demo's training prompts: 79.8 against 1.94
    nats for the SFT policy's NLL of the targets, from data/reference.jsonl)."""
    logps, n = t64(-42.6), t64(30)
    assert L.sft_nll_sum(logps).item() == 42.6
    assert L.sft_nll(logps, n).item() == pytest.approx(42.6 / 30, rel=1e-15)
    torch.testing.assert_close(L.sft_nll_sum(t64(-6.0, -2.0)), t64(4.0).squeeze())


def test_the_mean_reduction_is_bitwise_todays_sft_term():
    """Every existing SFT variant (rpo, the RSO hinge + SFT) keeps its numbers: the default of
    a non-paper-summed loss is ``mean``, the pooled per-token NLL of before."""
    for config in (
        V.LossConfig("sigmoid", "reverse_kl", 0.3, sft_weight=1.0),
        V.LossConfig("hinge", "reverse_kl", 0.3, sft_weight=1.0),
        V.LossConfig("plackett_luce", "jsd", 0.3, sft_weight=0.5),
    ):
        assert config.sft_reduction == "mean"
        out = L.batch_loss(POLICY, REF, N_TOKENS, CHOSEN, REJECTED, config, GROUPS, REWARDS)
        best = L.best_rows(GROUPS, REWARDS)
        expected = -POLICY[best].sum() / N_TOKENS[best].sum()
        assert torch.equal(out.sft, expected)


# --------------------------------------------------------------------------- float32, gradients

CONFIGS = [
    V.LossConfig("slic_hf", margin=1.0),
    V.LossConfig("slic_hf", margin=1.0, sft_weight=1.0),
    V.LossConfig("slic_hf", margin=1e3, sft_weight=1.0, sft_reduction="mean"),
    V.LossConfig("rrhf", sft_weight=1.0, sft_reduction="mean"),
    V.LossConfig("rrhf", sft_weight=10.0),
    V.LossConfig("hinge", "jsd", 0.3, sft_weight=1.0, sft_reduction="sum"),
]


def _id(c: V.LossConfig) -> str:
    return f"{c.loss}-m{c.margin}-sft{c.sft_weight}-{c.sft_reduction}"


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_finite_float32_at_extreme_log_probs(config):
    """Groups of 4 completions built from the extreme grid (|r| up to 1e4 around SFT log-probs
    down to -300), with distinct, tied and reversed rewards: values and gradients finite."""
    r = torch.tensor(EXTREME_R, dtype=torch.float32)
    combos = torch.tensor(list(itertools.product(range(len(r)), repeat=2)))
    g = len(combos)
    r_rows = torch.stack([r[combos[:, 0]], r[combos[:, 1]], -r[combos[:, 0]], -r[combos[:, 1]]], 1)
    gen = torch.Generator().manual_seed(0)
    ref = -torch.rand(g, 4, generator=gen) * 300
    n = torch.randint(1, 512, (g, 4), generator=gen).float()
    kinds = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    rewards = kinds[torch.arange(g) % 3].reshape(-1)
    groups = torch.arange(4 * g).reshape(g, 4)
    w, l = groups[:, [3, 1]].reshape(-1), groups[:, [0, 2]].reshape(-1)
    for beta in BETAS if config.beta is not None else (None,):
        c = dataclasses.replace(config, beta=beta)
        policy = (ref + r_rows).reshape(-1).requires_grad_()
        out = L.batch_loss(policy, ref.reshape(-1), n.reshape(-1), w, l, c, groups, rewards)
        (grad,) = torch.autograd.grad(out.loss, policy)
        assert torch.isfinite(out.losses).all() and torch.isfinite(grad).all(), (c, beta)
        assert torch.isfinite(out.chosen_rewards).all()
        assert torch.isfinite(out.rejected_rewards).all()


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_gradients_match_finite_differences(config):
    gen = torch.Generator().manual_seed(5)
    ref = -5 - 30 * torch.rand(5, generator=gen, dtype=torch.float64)
    policy = (ref + (torch.rand(5, generator=gen, dtype=torch.float64) * 2 - 1) * 3).clone()
    policy[0] = policy[1] + 0.37  # keep away from the hinges' kinks

    def f(x):
        return L.batch_loss(x, ref, N_TOKENS, CHOSEN, REJECTED, config, GROUPS, REWARDS).losses

    assert torch.autograd.gradcheck(f, (policy.requires_grad_(),))


# --------------------------------------------------------------------------- toy optimum


def _adam_slic_hf(sft_weight: float, lr: float, margin: float = 1.0, steps: int = 4000):
    """log π after Adam on SLiC-HF over every ordered pair of the toy prompt labelled by r*
    (deterministic labels: the higher r* wins), one-token responses, from π = π_ref."""
    keep = R_STAR[WIN] > R_STAR[LOSE]
    win, lose = WIN[keep], LOSE[keep]
    config = V.LossConfig("slic_hf", margin=margin, sft_weight=sft_weight)
    theta = LOG_REF.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=lr)
    groups, ones = torch.arange(N)[None], torch.ones(N, dtype=torch.float64)
    hinge = math.inf
    for _ in range(steps):
        opt.zero_grad()
        log_pi = torch.log_softmax(theta, 0)
        out = L.batch_loss(log_pi, LOG_REF, ones, win, lose, config, groups, R_STAR)
        hinge = float(L.slic_hf_loss(log_pi[win], log_pi[lose], margin).sum().detach())
        if sft_weight == 0 and hinge == 0.0:
            break
        out.loss.backward()
        opt.step()
    return torch.log_softmax(theta.detach(), 0), hinge, (win, lose)


def test_slic_hf_stops_wherever_every_margin_reaches_delta():
    """The calibration loss is exactly 0 once every preferred pair has log π_w - log π_l ≥ δ,
    wherever that happens: two step sizes stop at two policies (no unique minimiser, nothing
    ties π to π_ref)."""
    runs = [_adam_slic_hf(0.0, lr) for lr in (0.01, 0.05)]
    for log_pi, hinge, (win, lose) in runs:
        assert hinge == 0.0
        assert bool(((log_pi[win] - log_pi[lose]) >= 1.0).all())
        assert torch.equal(torch.argsort(log_pi), torch.argsort(R_STAR))
    assert (runs[0][0] - runs[1][0]).abs().max() > 1e-3


def test_slic_hf_with_sft_term_concentrates_on_the_best_response():
    log_pi, hinge, _ = _adam_slic_hf(1.0, 0.05)
    assert float(log_pi[BEST].exp()) > 0.99


# --------------------------------------------------------------------------- config


def test_defaults_and_logged_settings():
    assert V.LossConfig("rrhf", sft_weight=1.0).sft_reduction == "sum"
    assert V.LossConfig("slic_hf", margin=1.0).sft_reduction == "sum"
    assert V.LossConfig("sigmoid", "jsd", 0.1).sft_reduction == "mean"
    assert V.default_sft_reduction("hinge") == "mean"
    assert V.LossConfig("slic_hf", margin=2.0, sft_weight=0.5).logged() == {
        "loss": "slic_hf",
        "divergence": None,
        "beta": None,
        "alpha": None,
        "sft_weight": 0.5,
        "margin": 2.0,
        "sft_reduction": "sum",
    }
    assert "sft_reduction" not in V.LossConfig("slic_hf", margin=2.0).logged()
    assert not V.LossConfig("slic_hf", margin=2.0).listwise


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "slic_hf"}, "margin: is missing (δ: "),
        ({"loss": "slic_hf", "margin": 0.0}, "margin: must be a finite number > 0, got 0.0"),
        ({"loss": "slic_hf", "margin": -1.0}, "margin: must be a finite number > 0, got -1.0"),
        ({"loss": "slic_hf", "margin": math.inf}, "margin: must be a finite number > 0, got inf"),
        ({"loss": "slic_hf", "margin": math.nan}, "margin: must be a finite number > 0, got nan"),
        ({"loss": "slic_hf", "margin": True}, "margin: must be a finite number > 0, got True"),
        (
            {"loss": "hinge", "divergence": "reverse_kl", "beta": 0.3, "margin": 1.0},
            "margin: only used by loss slic_hf, not 'hinge' (the hinge's margin is 1/beta): "
            "remove it, got 1.0",
        ),
        (
            {"loss": "slic_hf", "margin": 1.0, "divergence": "reverse_kl"},
            "divergence: not used by loss 'slic_hf' (it compares summed policy log-probs, "
            "without reference or score; its margin is `margin`): remove it, got 'reverse_kl'",
        ),
        (
            {"loss": "slic_hf", "margin": 1.0, "beta": 0.3},
            "beta: not used by loss 'slic_hf' (",
        ),
        (
            {"loss": "slic_hf", "margin": 1.0, "label_smoothing": 0.1},
            "label_smoothing: only used by losses sigmoid, robust, not 'slic_hf'",
        ),
        (
            {"loss": "rrhf", "sft_weight": 1.0, "sft_reduction": "token_mean"},
            "sft_reduction: must be one of mean, sum, got 'token_mean'",
        ),
    ],
)
def test_bad_configs_are_one_line_naming_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        V.LossConfig(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def _where(key: str) -> str:
    return f"align.variants.x.{key}"


@pytest.mark.parametrize(
    "mapping, message",
    [
        (
            {"loss": "slic_hf"},
            "params: align.variants.x.margin: is missing (δ: margin of slic_hf's hinge",
        ),
        (
            {"loss": "slic_hf", "margin": 0},
            "params: align.variants.x.margin: must be a finite number > 0, got 0.0",
        ),
        (
            {"loss": "slic_hf", "margin": "wide"},
            "params: align.variants.x.margin: must be float or null, got 'wide'",
        ),
        (
            {"loss": "sigmoid", "divergence": "jsd", "beta": 0.1, "margin": 1.0},
            "params: align.variants.x.margin: only used by loss slic_hf, not 'sigmoid': remove "
            "it, got 1.0",
        ),
        (
            {"loss": "rrhf", "sft_weight": 1.0, "sft_reduction": "avg"},
            "params: align.variants.x.sft_reduction: must be one of mean, sum, got 'avg'",
        ),
        (
            {"loss": "rrhf", "sft_reduction": "sum"},
            "params: align.variants.x.sft_reduction: only used with an SFT term (sft_weight > 0): "
            "remove it, got 'sum'",
        ),
    ],
)
def test_read_loss_config_names_the_new_keys(mapping, message):
    with pytest.raises(ValueError) as err:
        V.read_loss_config(mapping, _where)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_read_loss_config_reads_slic_hf_and_the_reduction():
    config = V.read_loss_config({"loss": "slic_hf", "margin": 1, "sft_weight": 1}, _where)
    assert config == V.LossConfig("slic_hf", margin=1.0, sft_weight=1.0, sft_reduction="sum")
    assert isinstance(config.margin, float)
    config = V.read_loss_config({"loss": "rrhf", "sft_weight": 1, "sft_reduction": "mean"}, _where)
    assert config.sft_reduction == "mean"
