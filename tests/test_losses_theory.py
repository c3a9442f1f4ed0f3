"""stages.lib.losses against theory: minimising each loss's expected value reaches its paper's optimum.

A toy problem with an exact answer: one prompt, N = 5 responses, a tabular policy π = softmax(θ)
and reference π_ref, known rewards r*, Bradley-Terry labels P(i ≻ j) = σ(r*_i - r*_j), and a
pair-sampling weight w_ij > 0 (uniform, or skewed). The expected loss over all ordered pairs,
Σ_{i≠j} w_ij·P(i ≻ j)·loss(winner i, loser j), is computed with the project's own
``preference_loss`` in float64 and minimised over θ (L-BFGS, then Newton steps to a gradient
below 1e-12); the minimiser is compared with the optimum stated and derived in the losses
module docstring, built here independently:

* sigmoid, every divergence: β·s(log π/π_ref) = r* + const (f-DPO; π ∝ π_ref·exp(r*/β) for
  reverse KL), π found by bisection on the constant, not by the loss.
* ipo: the weighted least-squares solution of log-ratio margins onto (p_ij - 1/2)/β (a linear
  system), and for pairs drawn from μ⊗μ the paper's π ∝ π_ref·exp(p*(y ≻ μ)/β).
* hinge: no calibrated optimum; the properties that hold are tested.
* plackett_luce, every divergence: full rankings of the N responses drawn from the
  Plackett-Luce model of r* (all N! orders, weighted by their probability) give the sigmoid
  loss's optimum β·s(ρ) = r* + const (PL is Bradley-Terry's listwise form; DPO appendix A.3).
* robust (rDPO): Bradley-Terry labels flipped with probability ε; the minimiser is the clean
  f-DPO optimum of r* (its unbiasedness), where sigmoid on the same noisy labels is not.
* sigmoid with label smoothing (cDPO): two responses, P(0 ≻ 1) = p; the minimiser has
  β·Δ = logit(p′) with the smoothed label p′ = (1-ε)p + ε(1-p), also for p = 1 (finite).
* sigmoid_norm: equal lengths n give DPO's optimum with β/n: π ∝ π_ref·exp(n·r*/β).
* SFT term (λ·NLL of the best response, SLiC-HF / RPO / RRHF): no closed form; λ = 0 is the
  f-DPO optimum, π(best) rises with λ towards 1 (tested), the KL anchor giving way.
* rrhf: deterministic rankings; the ranking loss is exactly 0 on every π ordered like r*
  (no unique minimiser, no reference: nothing ties π to π_ref); with the SFT term π(best) → 1.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stages.lib.losses import (
    batch_loss,
    divergence_score,
    plackett_luce_loss,
    preference_loss,
    rrhf_rank_loss,
)
from stages.lib.variants import LossConfig

N = 5
R_STAR = torch.tensor([0.9, -0.4, 0.3, -1.0, 0.1], dtype=torch.float64)
LOG_REF = torch.log_softmax(torch.tensor([0.2, -0.5, 0.4, 0.0, -0.3], dtype=torch.float64), 0)
WIN, LOSE = (torch.tensor(v) for v in zip(*((i, j) for i in range(N) for j in range(N) if i != j)))
BETAS = (0.1, 0.5, 2.0)
DIVERGENCES = [
    ("reverse_kl", None),
    ("forward_kl", None),
    ("jsd", None),
    ("alpha", 0.1),
    ("alpha", 0.3),
    ("alpha", 0.5),
    ("alpha", 0.9),
]
TOL = 1e-9  # on centred log-ratios / scores; the minimiser is within ~2e-11 of the optimum


def bt_probs(r_star: torch.Tensor) -> torch.Tensor:
    """P(WIN ≻ LOSE) per ordered pair under Bradley-Terry."""
    return torch.sigmoid(r_star[WIN] - r_star[LOSE])


def pair_weights(kind: str) -> torch.Tensor:
    """Symmetric pair-sampling weights per ordered pair: uniform, or seeded and skewed."""
    if kind == "uniform":
        return torch.ones(len(WIN), dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    w = torch.rand(N, N, generator=g, dtype=torch.float64) * 3 + 0.1
    return (w + w.T)[WIN, LOSE]


def expected_loss(theta, config, weights, probs, length=1.0):
    """Σ over ordered pairs of w·P(winner ≻ loser)·loss, from ``preference_loss``."""
    log_pi = torch.log_softmax(theta, 0)
    lengths = torch.full((len(WIN),), length, dtype=torch.float64)
    out = preference_loss(
        log_pi[WIN], log_pi[LOSE], LOG_REF[WIN], LOG_REF[LOSE], lengths, lengths, config
    )
    return (weights * probs * out.losses).sum()


def minimise(config, weights, probs, length=1.0) -> torch.Tensor:
    """log π at the minimiser of the expected loss: L-BFGS from π = π_ref, then Newton steps
    (pseudo-inverse: θ + const is the same policy) until the gradient is below 1e-12."""
    return minimise_value(lambda t: expected_loss(t, config, weights, probs, length))


def minimise_value(value, start: torch.Tensor = LOG_REF) -> torch.Tensor:
    """log π at the minimiser of ``value(θ)`` (π = softmax(θ)), as :func:`minimise`."""
    theta = start.clone().requires_grad_()
    opt = torch.optim.LBFGS(
        [theta], max_iter=500, tolerance_grad=1e-10, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        out = value(theta)
        out.backward()
        return out

    opt.step(closure)
    theta = theta.detach()
    for _ in range(20):
        grad = torch.autograd.functional.jacobian(value, theta)
        if grad.abs().max() < 1e-12:
            break
        theta = theta - torch.linalg.pinv(torch.autograd.functional.hessian(value, theta)) @ grad
    assert grad.abs().max() < 1e-12, grad
    return torch.log_softmax(theta, 0)


def centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean()


# --------------------------------------------------------------------------- sigmoid: f-DPO

#: inverse of each score s(r) (constants as in stages.lib.losses), and the supremum of s
INVERSE_SCORE = {
    "forward_kl": (lambda s, a: -torch.log(-s), lambda a: 0.0),
    "jsd": (lambda s, a: s - torch.log(-torch.expm1(s)), lambda a: 0.0),
    "alpha": (lambda s, a: -torch.log1p(-a * s) / a, lambda a: 1.0 / a),
}


def fdpo_optimum(beta: float, divergence: str, alpha: float | None) -> torch.Tensor:
    """log π* with β·s(log π*/π_ref) = r* + c and Σπ* = 1: closed form for reverse KL
    (π* ∝ π_ref·exp(r*/β)), else bisection on c (Σπ rises from 0 to ∞ on c < β·sup s - max r*)."""
    if divergence == "reverse_kl":
        return torch.log_softmax(LOG_REF + R_STAR / beta, 0)
    inverse, sup = INVERSE_SCORE[divergence]

    def log_pi(c):
        return LOG_REF + inverse((R_STAR + c) / beta, alpha)

    hi = beta * sup(alpha) - float(R_STAR.max())
    lo = hi - 1.0
    while torch.logsumexp(log_pi(lo), 0) > 0:
        lo = hi - 2 * (hi - lo)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.logsumexp(log_pi(mid), 0) < 0 else (lo, mid)
    return log_pi(lo)


@pytest.mark.parametrize("weights", ("uniform", "skewed"))
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("divergence, alpha", DIVERGENCES)
def test_sigmoid_reaches_the_f_dpo_optimum(divergence, alpha, beta, weights):
    """β·s(log π/π_ref) - r* is constant at the minimiser, whatever the pair weights, and π is
    the f-DPO optimum (DPO's π ∝ π_ref·exp(r*/β) for reverse KL)."""
    config = LossConfig("sigmoid", divergence, beta, alpha)
    log_pi = minimise(config, pair_weights(weights), bt_probs(R_STAR))
    implied = beta * divergence_score(log_pi - LOG_REF, divergence, alpha)
    torch.testing.assert_close(centred(implied), centred(R_STAR), rtol=0, atol=TOL)
    expected = fdpo_optimum(beta, divergence, alpha)
    assert abs(float(torch.logsumexp(expected, 0))) < 1e-12
    torch.testing.assert_close(log_pi, expected, rtol=0, atol=TOL)


def test_f_dpo_optimum_depends_on_the_divergence():
    """The optima differ between divergences (so the test above can tell them apart)."""
    optima = [fdpo_optimum(0.5, d, a) for d, a in DIVERGENCES]
    for k, a in enumerate(optima):
        for b in optima[k + 1 :]:
            assert (a - b).abs().max() > 1e-2


# --------------------------------------------------------------------------- IPO


def ipo_least_squares(beta: float, weights: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Centred ρ = log π/π_ref solving Σ_j w_ij (ρ_i - ρ_j) = Σ_j w_ij (p_ij - 1/2)/β."""
    w = torch.zeros(N, N, dtype=torch.float64)
    t = torch.zeros(N, N, dtype=torch.float64)
    w[WIN, LOSE], t[WIN, LOSE] = weights, (probs - 0.5) / beta
    laplacian = torch.diag(w.sum(1)) - w
    rhs = (w * t).sum(1)
    # the Laplacian's null space is the constants: pin Σρ = 0 with one more equation
    system = torch.cat([laplacian, torch.ones(1, N, dtype=torch.float64)])
    rho = torch.linalg.lstsq(system, torch.cat([rhs, rhs.new_zeros(1)]).unsqueeze(1)).solution
    return rho.squeeze(1)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_reaches_the_paper_optimum_for_pairs_from_mu(beta):
    """Pairs drawn independently from μ: π ∝ π_ref·exp(p*(y ≻ μ)/β), p*(y ≻ μ) = E_{y'~μ} P(y ≻ y')
    (Azar et al. 2023, IPO optimum; one-token responses, so per-token means are sums)."""
    mu = torch.softmax(torch.tensor([0.5, -0.2, 0.0, 0.3, -0.6], dtype=torch.float64), 0)
    probs = bt_probs(R_STAR)
    log_pi = minimise(LossConfig("ipo", "reverse_kl", beta), mu[WIN] * mu[LOSE], probs)
    p_matrix = torch.sigmoid(R_STAR[:, None] - R_STAR[None, :])  # diagonal 1/2
    p_vs_mu = p_matrix @ mu
    torch.testing.assert_close(centred(log_pi - LOG_REF), centred(p_vs_mu / beta), rtol=0, atol=TOL)


@pytest.mark.parametrize("length", (1.0, 3.0))
@pytest.mark.parametrize("beta", BETAS)
def test_ipo_reaches_the_least_squares_optimum(beta, length):
    """Any pair weights: the log-ratio margins are the weighted least-squares fit of
    (p_ij - 1/2)/β; with equal lengths n the summed log-ratios are n times that (τ_eff = β/n)."""
    weights, probs = pair_weights("skewed"), bt_probs(R_STAR)
    log_pi = minimise(LossConfig("ipo", "reverse_kl", beta), weights, probs, length)
    expected = length * ipo_least_squares(beta, weights, probs)
    torch.testing.assert_close(centred(log_pi - LOG_REF), expected, rtol=0, atol=TOL)
    # not Bradley-Terry-calibrated: the DPO optimum r*/β is elsewhere
    assert (expected - centred(R_STAR) / beta).abs().max() > 1e-2


# --------------------------------------------------------------------------- hinge


def minimise_hinge(config, probs, lr) -> torch.Tensor:
    """log π after Adam on the expected hinge loss from π_ref, stopped when it is exactly 0."""
    theta = LOG_REF.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=lr)
    weights = pair_weights("uniform")
    for _ in range(20_000):
        opt.zero_grad()
        value = expected_loss(theta, config, weights, probs)
        if value.item() == 0.0:
            break
        value.backward()
        opt.step()
    assert value.item() == 0.0
    return torch.log_softmax(theta.detach(), 0)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("divergence, alpha", DIVERGENCES)
def test_hinge_with_deterministic_labels_stops_at_margin_one_over_beta(divergence, alpha, beta):
    """Labels always prefer the higher r*: the loss reaches exactly 0 once every preferred pair
    has β·Δ ≥ 1, so the minimiser orders π/π_ref by r*, and it is not unique (two step sizes
    stop at two different zero-loss policies)."""
    config = LossConfig("hinge", divergence, beta, alpha)
    probs = (R_STAR[WIN] > R_STAR[LOSE]).double()
    runs = [minimise_hinge(config, probs, lr) for lr in (0.1, 0.3)]
    for log_pi in runs:
        score = divergence_score(log_pi - LOG_REF, divergence, alpha)
        margins = beta * (score[WIN] - score[LOSE])[probs == 1]
        assert margins.min() >= 1.0
        assert torch.equal(torch.argsort(log_pi - LOG_REF), torch.argsort(R_STAR))
    assert (runs[0] - runs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("p", (0.55, 0.75, 0.95))
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("divergence, alpha", DIVERGENCES)
def test_hinge_one_pair_optimum_is_margin_one_over_beta_whatever_p(divergence, alpha, beta, p):
    """Two responses, P(0 ≻ 1) = p > 1/2: the expected loss p·max(0, 1 - d) + (1 - p)·max(0, 1 + d)
    is minimal at d = β·Δ = 1 for every p (not at the calibrated logit p): on a fine grid of
    policies the argmin has β·Δ within one grid step of 1, with the minimum value 2(1 - p)."""
    config = LossConfig("hinge", divergence, beta, alpha)
    log_ref = torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64))
    x = torch.linspace(-2.0, 12.0, 50_001, dtype=torch.float64) / beta**0.5  # θ_0 - θ_1
    log_pi = torch.log_softmax(torch.stack([x, torch.zeros_like(x)], 1), 1)
    ones = torch.ones_like(x)

    def loss(w, l):
        ref_w, ref_l = log_ref[w].expand_as(x), log_ref[l].expand_as(x)
        return preference_loss(log_pi[:, w], log_pi[:, l], ref_w, ref_l, ones, ones, config).losses

    expected = p * loss(0, 1) + (1 - p) * loss(1, 0)
    score = divergence_score(log_pi - log_ref, divergence, alpha)
    d = beta * (score[:, 0] - score[:, 1])
    k = int(torch.argmin(expected))
    assert 0 < k < len(x) - 1  # an interior minimum
    step = float((d[k + 1] - d[k - 1]).abs())
    assert abs(float(d[k]) - 1.0) <= step
    assert float(expected[k]) == pytest.approx(2 * (1 - p), abs=step)
    calibrated = math.log(p / (1 - p))
    assert abs(calibrated - 1.0) > 2 * step  # so the optimum is not where a BT loss puts it


# --------------------------------------------------------------------------- Plackett-Luce

PERMS = torch.tensor(list(itertools.permutations(range(N))))  # [N!, N]: best first


def pl_probs(r_star: torch.Tensor) -> torch.Tensor:
    """Probability of each full ranking under the Plackett-Luce model with utilities r*."""
    u = r_star[PERMS]
    tail = torch.logcumsumexp(u.flip(-1), -1).flip(-1)
    return torch.exp((u - tail).sum(-1))


def expected_pl_loss(theta, config, probs):
    """Σ over rankings τ of P(τ)·loss(τ), every ranking one prompt of ``batch_loss``."""
    log_pi = torch.log_softmax(theta, 0)
    g = len(PERMS)
    rewards = torch.empty(g, N, dtype=torch.float64)
    rewards.scatter_(1, PERMS, torch.arange(N, 0, -1, dtype=torch.float64).expand(g, N))
    groups = torch.arange(g * N).reshape(g, N)
    none = torch.zeros(0, dtype=torch.long)
    out = batch_loss(
        log_pi.repeat(g),
        LOG_REF.repeat(g),
        torch.ones(g * N, dtype=torch.float64),
        none,
        none,
        config,
        groups,
        rewards.reshape(-1),
    )
    return (probs * out.losses).sum()


def test_pl_probabilities_sum_to_one_and_match_bradley_terry_on_pairs():
    probs = pl_probs(R_STAR)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    pos = PERMS.argsort(1)  # position of each response in each ranking
    p01 = float(probs[pos[:, 0] < pos[:, 1]].sum())  # marginal P(0 ranked above 1)
    assert p01 == pytest.approx(float(torch.sigmoid(R_STAR[0] - R_STAR[1])), abs=1e-12)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("divergence, alpha", DIVERGENCES)
def test_plackett_luce_reaches_the_f_dpo_optimum(divergence, alpha, beta):
    """Rankings drawn from PL(r*): the expected PL loss is minimised where β·s(ρ) = r* + const,
    the sigmoid loss's optimum (the true utilities maximise the expected log-likelihood)."""
    config = LossConfig("plackett_luce", divergence, beta, alpha)
    probs = pl_probs(R_STAR)
    log_pi = minimise_value(lambda t: expected_pl_loss(t, config, probs))
    implied = beta * divergence_score(log_pi - LOG_REF, divergence, alpha)
    torch.testing.assert_close(centred(implied), centred(R_STAR), rtol=0, atol=TOL)
    torch.testing.assert_close(log_pi, fdpo_optimum(beta, divergence, alpha), rtol=0, atol=TOL)


def test_plackett_luce_with_two_responses_is_the_sigmoid_loss():
    u = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    for rewards, w, l in (([1.0, 0.0], 0, 1), ([0.0, 1.0], 1, 0)):
        pl = plackett_luce_loss(u, torch.tensor([rewards], dtype=torch.float64), mask)
        assert float(pl) == pytest.approx(math.log1p(math.exp(-(u[0, w] - u[0, l]))), rel=1e-14)


# --------------------------------------------------------------------------- label noise


def flipped(probs: torch.Tensor, eps: float) -> torch.Tensor:
    """Labels flipped with probability ε: P_obs = (1-ε)p + ε(1-p)."""
    return (1 - eps) * probs + eps * (1 - probs)


@pytest.mark.parametrize("eps", (0.1, 0.3))
@pytest.mark.parametrize("beta", (0.1, 2.0))
@pytest.mark.parametrize("divergence, alpha", [("reverse_kl", None), ("jsd", None), ("alpha", 0.5)])
def test_robust_dpo_recovers_the_clean_optimum_from_flipped_labels(divergence, alpha, beta, eps):
    """Expected rDPO loss on labels flipped with the known rate ε = logistic loss on the
    de-noised label (p_obs - ε)/(1 - 2ε) = p: the clean f-DPO optimum of r*. The sigmoid loss on
    the same noisy labels lands elsewhere (at a flattened r*)."""
    weights, noisy = pair_weights("skewed"), flipped(bt_probs(R_STAR), eps)
    robust = LossConfig("robust", divergence, beta, alpha, label_smoothing=eps)
    log_pi = minimise(robust, weights, noisy)
    clean = fdpo_optimum(beta, divergence, alpha)
    torch.testing.assert_close(log_pi, clean, rtol=0, atol=TOL)
    naive = minimise(LossConfig("sigmoid", divergence, beta, alpha), weights, noisy)
    assert (naive - clean).abs().max() > 1e-2


@pytest.mark.parametrize("p", (1.0, 0.9, 0.6))
@pytest.mark.parametrize("eps", (0.05, 0.2))
@pytest.mark.parametrize(
    "divergence, alpha", [("reverse_kl", None), ("forward_kl", None), ("alpha", 0.3)]
)
def test_cdpo_two_responses_reach_the_smoothed_label(divergence, alpha, eps, p):
    """cDPO: P(0 ≻ 1) = p, labels smoothed by ε; the minimiser has β·Δ = logit(p′), p′ = (1-ε)p +
    ε(1-p): finite even for deterministic labels (p = 1), where DPO's margin diverges."""
    beta = 0.5
    config = LossConfig("sigmoid", divergence, beta, alpha, label_smoothing=eps)
    log_ref = torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64))
    one = torch.ones(1, dtype=torch.float64)

    def value(theta):
        log_pi = torch.log_softmax(theta, 0)

        def loss(w, l):
            return preference_loss(
                log_pi[w : w + 1],
                log_pi[l : l + 1],
                log_ref[w : w + 1],
                log_ref[l : l + 1],
                one,
                one,
                config,
            ).losses.sum()

        return p * loss(0, 1) + (1 - p) * loss(1, 0)

    log_pi = minimise_value(value, start=log_ref)
    score = divergence_score(log_pi - log_ref, divergence, alpha)
    smoothed = (1 - eps) * p + eps * (1 - p)
    assert float(beta * (score[0] - score[1])) == pytest.approx(
        math.log(smoothed / (1 - smoothed)), abs=1e-9
    )


# --------------------------------------------------------------------------- length-normalised sigmoid


@pytest.mark.parametrize("length", (1.0, 3.0))
@pytest.mark.parametrize("beta", BETAS)
def test_sigmoid_norm_is_dpo_with_beta_over_length(beta, length):
    """Per-token mean log-ratios with equal lengths n: DPO's optimum with β/n."""
    log_pi = minimise(
        LossConfig("sigmoid_norm", "reverse_kl", beta),
        pair_weights("skewed"),
        bt_probs(R_STAR),
        length,
    )
    expected = torch.log_softmax(LOG_REF + length * R_STAR / beta, 0)
    torch.testing.assert_close(log_pi, expected, rtol=0, atol=TOL)


# --------------------------------------------------------------------------- SFT term, RRHF

BEST = int(R_STAR.argmax())


@pytest.mark.parametrize("divergence, alpha", [("reverse_kl", None), ("jsd", None)])
def test_sft_term_moves_the_optimum_towards_the_best_response(divergence, alpha):
    """sigmoid + λ·NLL(best) (RPO): λ = 0 is the f-DPO optimum; π(best) rises with λ and tends
    to 1 (no closed form in between)."""
    beta, weights, probs = 0.5, pair_weights("uniform"), bt_probs(R_STAR)
    config = LossConfig("sigmoid", divergence, beta, alpha)
    best = []
    for lam in (0.0, 0.3, 3.0, 30.0):
        log_pi = minimise_value(
            lambda t, lam=lam: (
                expected_loss(t, config, weights, probs) - lam * torch.log_softmax(t, 0)[BEST]
            )
        )
        if lam == 0:
            torch.testing.assert_close(
                log_pi, fdpo_optimum(beta, divergence, alpha), rtol=0, atol=TOL
            )
        best.append(float(log_pi[BEST].exp()))
    assert best == sorted(best) and best[0] < best[1] and best[-1] > 0.95, best


def _adam_rrhf(sft_weight: float, lr: float, steps: int = 3000):
    """log π after Adam on the RRHF loss of one prompt ranked by r* (one-token responses)."""
    config = LossConfig("rrhf", sft_weight=sft_weight)
    theta = LOG_REF.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=lr)
    groups = torch.arange(N)[None]
    none = torch.zeros(0, dtype=torch.long)
    ones = torch.ones(N, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        log_pi = torch.log_softmax(theta, 0)
        out = batch_loss(log_pi, LOG_REF, ones, none, none, config, groups, R_STAR)
        rank = rrhf_rank_loss(
            log_pi.detach()[None], R_STAR[None], torch.ones(1, N, dtype=torch.bool)
        )
        if sft_weight == 0 and float(rank) == 0.0:
            break
        out.loss.backward()
        opt.step()
    return torch.log_softmax(theta.detach(), 0), float(rank)


def test_rrhf_ranking_loss_stops_at_any_policy_ordered_like_the_reward():
    """The ranking loss reaches exactly 0 once log π is ordered like r*, wherever that happens:
    two step sizes stop at two different policies (no unique minimiser, no reference)."""
    runs = [_adam_rrhf(0.0, lr) for lr in (0.01, 0.05)]
    for log_pi, rank in runs:
        assert rank == 0.0
        assert torch.equal(torch.argsort(log_pi), torch.argsort(R_STAR))
    assert (runs[0][0] - runs[1][0]).abs().max() > 1e-3


def test_rrhf_with_sft_term_concentrates_on_the_best_response():
    log_pi, rank = _adam_rrhf(1.0, 0.05)
    assert rank == 0.0 and float(log_pi[BEST].exp()) > 0.99
    assert torch.equal(torch.argsort(log_pi), torch.argsort(R_STAR))
