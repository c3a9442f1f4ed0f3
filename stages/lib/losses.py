"""DPO-family preference losses: one small function per divergence score, pair loss and
listwise loss.

Notation. For a completion y of prompt x, ``r(y) = log π(y|x) - log π_ref(y|x)`` summed over the
completion tokens (π_ref is the SFT policy). A divergence turns r into a *score* s(r) = f′(u),
u = π/π_ref = exp(r) (f-DPO convention: α → 0 is reverse KL, α → 1 is forward KL), and a pair
loss acts on the score margin Δ = s(r_w) - s(r_l) of the chosen (w) and rejected (l) completions.

References (equation numbers where we are sure of them, otherwise the named object):

* DPO   — Rafailov et al. 2023, arXiv 2305.18290, Eq. 7 (loss), Eq. 5 (implicit reward β·r).
* f-DPO — Wang et al. 2023, arXiv 2309.16240, Table 1 (f′ per divergence) and the f-DPO loss,
  i.e. DPO's Eq. 7 with r replaced by f′(π/π_ref).
* RSO   — Liu et al. 2023, arXiv 2309.06657: the normalised hinge ("hinge-norm") max(0, 1 - β·Δ)
  on reference log-ratios, Δ = r_w - r_l: ``loss: hinge`` (trl ``hinge``). SLiC's hinge with
  log π replaced by log π/π_sft and the margin by 1/β; it is not SLiC-HF as published.
* SLiC-HF — Zhao et al. 2023, arXiv 2305.10425, the SLiC-HF loss of Section 2 (rank
  calibration plus cross-entropy regularisation): max(0, δ - log π(y+|x) + log π(y-|x)) -
  λ·log π(y_ref|x) on the policy's summed log-probs, no reference model: ``loss: slic_hf``
  (margin δ, λ = ``sft_weight`` on the summed NLL). Not in trl.
* IPO   — Azar et al. 2023, arXiv 2310.12036, Eq. 17 (sampled IPO loss, τ ≡ β).
* cDPO  — Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO" (the
  DPO loss on labels smoothed by ε); robust DPO — Chowdhury et al. 2024, arXiv 2403.00409
  (rDPO, the unbiased loss under label flips with rate ε; trl ``robust``).
* sigmoid_norm — the length-normalised DPO loss (per-token mean log-ratios; Tülu 3, Lambert et
  al. 2024, arXiv 2411.15124; trl ``sigmoid_norm``).
* APO-zero — D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 7 (trl ``apo_zero``). Chosen over
  EXO and NCA: in trl for parity, no extra parameter, and the one anchored loss of the family
  (it moves each completion's own log-ratio, not only the margin: the chosen one goes up).
* Plackett-Luce — DPO appendix A.3 (Eq. 18, the PL model, with the implicit reward β·s(r));
  LiPO, Liu et al. 2024, arXiv 2402.01878 (listwise DPO, "DPO_PL"). Not in trl.
* RRHF  — Yuan et al. 2023, arXiv 2304.05302: Eq. 1 (length-normalised log-prob p_i), Eq. 2
  (ranking loss), Eq. 3 (SFT loss on the best response), Eq. 4 (their sum). Not in trl.
* SFT term — λ·NLL of each prompt's best-ranked completion, added to any loss: SLiC-HF's
  cross-entropy regulariser λ·(-log π(y_ref|x)), RRHF's L_ft (Eq. 3) and RPO's NLL (Pang et al.
  2024, arXiv 2404.19733, DPO + NLL); trl's ``["sigmoid", "sft"]`` with ``loss_weights``.
  ``sft_reduction`` says how the NLL is reduced: ``sum`` over the target's tokens (the sequence
  NLL, averaged over the prompts: SLiC-HF, RRHF; the default of slic_hf and rrhf) or ``mean``
  per token, pooled over the batch's targets (trl's ``sft``; the default of every other loss).
  On the demo a target has 41 tokens on average, so λ weighs the NLL 41 times more under
  ``sum``.

What each loss converges to (population optimum; checked in ``tests/test_losses_theory.py`` on a
tabular policy π over N responses of one prompt, labels from Bradley-Terry P(i ≻ j) = σ(r*_i -
r*_j), each pair {i, j} drawn with a weight w_ij > 0). Write ρ = log π/π_ref per response.

* sigmoid, any divergence — the expected loss of a pair, p·softplus(-d) + (1 - p)·softplus(d) in
  d = β(s(ρ_i) - s(ρ_j)), is strictly convex with its minimum at σ(d) = p, i.e. d = r*_i - r*_j
  (a proper scoring rule). All pairs reach their minimum at once, so the minimiser is the unique π
  with β·s(ρ) = r* + const and Σπ = 1, whatever w. Since s = f′ up to an additive constant
  (reverse KL drops +1, JSD drops log 2; the α score (1 - u^(-α))/α is f′ of
  f(u) = (u^(1-α) - (1-α)u - α)/(α(α-1)), i.e. -u^(-α)/α up to 1/α), this is f-DPO's optimum
  β·f′(π/π_ref) = r* + const of max E_π[r*] - β·D_f(π‖π_ref) (its KKT argument); reverse KL
  gives π ∝ π_ref·exp(r*/β) (DPO Eq. 4). The solution exists and is unique for each divergence
  here: s rises from -∞ (r → -∞) to its supremum (r → ∞), so Σπ runs from 0 to ∞ with the const.
* ipo — a pair's expected squared loss is w·[(h - (2p - 1)/(2β))² + const] in the per-token
  mean margin h = ρ̄_i - ρ̄_j: weighted least squares of h onto (p_ij - 1/2)/β, solved by the
  Laplacian system Σ_j w_ij (ρ̄_i - ρ̄_j) = Σ_j w_ij (p_ij - 1/2)/β. For pairs drawn independently
  from a behaviour policy μ (w_ij = μ_i μ_j) it is Azar et al.'s IPO optimum (Section 5: the
  ΨPO optimum with Ψ = identity) π ∝ π_ref·exp(p*(y ≻ μ)/τ), per token: with equal lengths |y| = n
  the summed log-ratio gets the n-fold target, i.e. τ_eff = β/n. Not Bradley-Terry-calibrated:
  it targets preference probabilities, not r*.
* hinge — a pair's expected loss p·max(0, 1 - d) + (1 - p)·max(0, 1 + d) is minimal at d = 1
  (margin 1/β) for every p > 1/2: the optimum keeps the order of r* but not its size (not
  calibrated). With deterministic labels any π whose preferred pairs all have β·Δ ≥ 1 has zero
  loss, so there is no unique minimiser: training stops wherever the margins first reach 1/β.
  With Bradley-Terry labels over N ≥ 3 responses the pairwise optima d_ij = 1 cannot hold
  together (d_ik = d_ij + d_jk); the minimiser (for reverse KL that of a linear program in ρ)
  depends on p and w, not on r* itself.

* sigmoid with label smoothing ε (cDPO) — the expected loss is the logistic loss on the
  smoothed label p′ = (1-ε)p + ε(1-p): minimum at σ(d) = p′, so a deterministic pair stops at
  d = log((1-ε)/ε) instead of running off to ∞. Smoothed labels are not Bradley-Terry
  consistent over N ≥ 3 responses, so beyond one pair the minimiser depends on w.
* robust (rDPO), labels flipped with probability ε — p·ℓ(d) + (1-p)·ℓ(-d) = [(p-ε)·softplus(-d)
  + (1-p-ε)·softplus(d)]/(1-2ε): the logistic loss on the de-noised label (p - ε)/(1 - 2ε). On
  labels flipped at rate ε it recovers the clean f-DPO optimum β·s(ρ) = r* + const; where the
  observed p < ε (flips overstated) it is unbounded below.
* sigmoid_norm — DPO on per-token means: with equal lengths n, π ∝ π_ref·exp(n·r*/β).
* apo_zero — linear in σ(βρ_i) per response: it drives net winners' log-ratios up and net
  losers' down until the normalisation Σπ = 1 binds; no calibrated interior optimum.
* plackett_luce, any divergence — with full rankings drawn from the PL model of r* (the
  listwise Bradley-Terry model: its pair marginals are BT) the expected negative log-likelihood
  is minimised at the true utilities, β·s(ρ) = r* + const: the sigmoid loss's f-DPO optimum.
* rrhf — zero-margin hinge on p = log π/|y| with no reference: any π whose p are ordered like
  the rewards has zero ranking loss (no unique minimiser, nothing anchors π to π_ref); with the
  SFT term π(best) → 1 (the infimum, not attained).
* slic_hf — the hinge on log π(y_w) - log π(y_l) with margin δ and no reference: any π whose
  preferred pairs all have a log-prob margin ≥ δ has zero calibration loss (no unique
  minimiser, nothing anchors π to π_ref); with the SFT term π(y_ref) → 1 (the infimum).
* the SFT term λ·NLL(best) added to any loss — no closed form: λ = 0 gives the loss's own
  optimum, and π(best) rises with λ towards 1 (hinge + SFT: the hinge is zero on a set, so the
  SFT term alone decides, π → δ_best).

Numerical stability. Every value and gradient is finite in float32 for |r| up to 1e4: log σ and
softplus are used in log space, and the exponentials of the forward-KL and α scores go through
:func:`safe_exp`, which equals exp(x) for x ≤ :data:`SAFE_EXP_CAP` and continues linearly (same
value and slope) beyond it. So the scores equal the paper's f′ exactly for r ≥ -SAFE_EXP_CAP
(forward KL) and α·r ≥ -SAFE_EXP_CAP (α); below that they stay strictly increasing (the sign
of every margin is kept) but grow linearly instead of exponentially. trl instead overflows to
inf/nan (forward KL) or clamps the exponent and loses the gradient (α); see the tests.

Usage::

    from stages.lib.losses import preference_loss
    from stages.lib.variants import LossConfig

    config = LossConfig("sigmoid", "alpha", beta=0.1, alpha=0.5)    # validated once, here
    out = preference_loss(policy_w, policy_l, ref_w, ref_l, len_w, len_l, config)
    out.loss.backward()            # mean over pairs; out.losses holds the [P] per-pair values
    margin = out.chosen_rewards - out.rejected_rewards

    # listwise losses and the SFT term act on whole prompts: every completion's log-probs,
    # each prompt's rows [G, K] (-1 padding) and the rewards [N]
    config = LossConfig("plackett_luce", "jsd", beta=0.3, sft_weight=0.1)
    out = batch_loss(logps, ref_logps, n_tokens, chosen, rejected, config, groups, rewards)
    slic_hf = LossConfig("slic_hf", margin=1.0, sft_weight=1.0)   # SLiC-HF: summed NLL

In ``params.yaml`` the same keys (loss, divergence, beta, alpha, sft_weight, label_smoothing,
margin, sft_reduction) live in ``align.variants.<name>`` (or ``align.common``);
:class:`LossConfig`, the constants that name the losses and divergences (``LOSSES``,
``DIVERGENCES``, ...) and the reading of a variant's settings live in the torch-free
:mod:`stages.lib.variants`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.lib.variants import DIVERGENCES, LISTWISE, PAIRWISE, LossConfig

#: Exponents above this continue linearly in :func:`safe_exp`. exp(30) ≈ 1.1e13, so at |r| = 1e4
#: scores stay below ~1e17/α and score slopes at most exp(30): far from float32's 3.4e38, even
#: squared in a gradient-norm computation. Where the cap acts, a score is ≤ -1.1e13 (≤ -1.1e13/α),
#: so the sigmoid/hinge loss is either flat (Δ ≫ 0: loss and gradient ≈ 0 in both forms) or linear
#: in Δ (Δ ≪ 0), where each capped score contributes slope β·e^30 instead of the paper's β·e^(-r).
#: The sign of every margin and gradient is kept.
SAFE_EXP_CAP = 30.0


def safe_exp(x: Tensor) -> Tensor:
    """exp(x) for x ≤ SAFE_EXP_CAP, continued by its tangent line exp(c)·(1 + x - c) beyond.

    C¹, strictly increasing and finite (with a finite gradient) for any finite x.
    """
    return _capped(torch.exp, x, math.exp(SAFE_EXP_CAP))


def safe_expm1(x: Tensor) -> Tensor:
    """expm1(x) for x ≤ SAFE_EXP_CAP, linear beyond (= safe_exp(x) - 1, exact near 0)."""
    return _capped(torch.expm1, x, math.expm1(SAFE_EXP_CAP))


def _capped(fn, x: Tensor, value_at_cap: float) -> Tensor:
    # x is clamped before fn, so the unselected branch contributes no inf/nan gradient
    c = SAFE_EXP_CAP
    return torch.where(x <= c, fn(x.clamp(max=c)), value_at_cap + math.exp(c) * (x - c))


# --------------------------------------------------------------------------- divergence scores


def reverse_kl_score(r: Tensor) -> Tensor:
    """Reverse KL: f′(u) = log u + 1, score r (constant dropped).

    f-DPO Table 1; with the sigmoid loss this is DPO (Rafailov et al. 2023, Eq. 7).
    """
    return r


def forward_kl_score(r: Tensor) -> Tensor:
    """Forward KL: f′(u) = -1/u, score -exp(-r) (f-DPO Table 1).

    Exact for r ≥ -SAFE_EXP_CAP; linear continuation below (see :func:`safe_exp`).
    """
    return -safe_exp(-r)


def jsd_score(r: Tensor) -> Tensor:
    """Jensen-Shannon: f′(u) = log(2u / (1 + u)), score log σ(r) (log 2 dropped; f-DPO Table 1).

    Computed with ``F.logsigmoid``, stable for any r.
    """
    return F.logsigmoid(r)


def alpha_score(r: Tensor, alpha: float) -> Tensor:
    """α-divergence, 0 < α < 1: f′(u) = (1 - u^(-α))/α = -expm1(-α r)/α (f-DPO Table 1).

    Equal to the table's -exp(-α r)/α up to the constant 1/α, without the cancellation that
    constant causes for small α; → r as α → 0. Exact for α r ≥ -SAFE_EXP_CAP, linear below.
    """
    return -safe_expm1(-alpha * r) / alpha


def divergence_score(r: Tensor, divergence: str, alpha: float | None = None) -> Tensor:
    """Dispatch to the score of ``divergence`` (one of :data:`DIVERGENCES`)."""
    if divergence == "reverse_kl":
        return reverse_kl_score(r)
    if divergence == "forward_kl":
        return forward_kl_score(r)
    if divergence == "jsd":
        return jsd_score(r)
    if divergence == "alpha":
        if alpha is None:
            raise ValueError("alpha: required for divergence 'alpha'")
        return alpha_score(r, alpha)
    raise ValueError(f"divergence: must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")


# --------------------------------------------------------------------------- pair losses


def sigmoid_loss(delta: Tensor, beta: float) -> Tensor:
    """Logistic (Bradley-Terry) loss -log σ(β Δ) = softplus(-β Δ).

    DPO (Rafailov et al. 2023, Eq. 7) for Δ = r_w - r_l; the f-DPO loss for a general score.
    """
    return F.softplus(-beta * delta)


def conservative_sigmoid_loss(delta: Tensor, beta: float, epsilon: float) -> Tensor:
    """cDPO: the logistic loss on labels smoothed by ε, -(1-ε)·log σ(βΔ) - ε·log σ(-βΔ).

    Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO" (cDPO), the
    DPO loss of a pair whose label is right with probability 1 - ε; ε = 0 is DPO. Bounded below,
    with its minimum at βΔ = log((1-ε)/ε) (a finite margin).
    """
    return (1.0 - epsilon) * F.softplus(-beta * delta) + epsilon * F.softplus(beta * delta)


def robust_loss(delta: Tensor, beta: float, epsilon: float) -> Tensor:
    """Robust DPO: [(1-ε)·(-log σ(βΔ)) - ε·(-log σ(-βΔ))] / (1 - 2ε), ε ∈ [0, 1/2).

    Chowdhury et al. 2024, arXiv 2403.00409 (rDPO): the unbiased estimate of the clean DPO loss
    when each label was flipped with probability ε (as trl's ``robust``). Unbounded below in βΔ
    (the -ε·softplus(βΔ) term): a pair whose labels are flipped less often than ε is pushed on.
    """
    return ((1.0 - epsilon) * F.softplus(-beta * delta) - epsilon * F.softplus(beta * delta)) / (
        1.0 - 2.0 * epsilon
    )


def hinge_loss(delta: Tensor, beta: float) -> Tensor:
    """Hinge loss max(0, 1 - β Δ): RSO's normalised hinge ("hinge-norm", Liu et al. 2023, arXiv
    2309.06657) for Δ = r_w - r_l on reference log-ratios (trl's ``hinge``).

    SLiC's calibration hinge with log π replaced by log π/π_sft and the margin δ by 1/β, scaled by
    β; not SLiC-HF as published, which is reference-free (:func:`slic_hf_loss`).
    """
    return torch.relu(1.0 - beta * delta)


def slic_hf_loss(policy_w: Tensor, policy_l: Tensor, margin: float) -> Tensor:
    """SLiC-HF's rank-calibration loss max(0, δ - log π(y_w|x) + log π(y_l|x)) (Zhao et al. 2023,
    arXiv 2305.10425, the SLiC-HF loss of Section 2 without its regulariser, which
    :func:`batch_loss` adds as λ·:func:`sft_nll_sum`).

    Reference-free: it acts on the policy's summed completion log-probs themselves, with the
    margin δ in nats. Finite (with a finite gradient) for any finite input.
    """
    return torch.relu(margin - (policy_w - policy_l))


def ipo_loss(delta_mean: Tensor, beta: float) -> Tensor:
    """IPO squared loss (Δ̄ - 1/(2β))² (Azar et al. 2023, Eq. 17, with τ ≡ β).

    Δ̄ = r_w/|y_w| - r_l/|y_l| uses per-token mean log-ratios, as trl does for IPO.
    """
    return (delta_mean - 1.0 / (2.0 * beta)) ** 2


def apo_zero_loss(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """APO-zero: (1 - σ(β r_w)) + σ(β r_l) = σ(-β r_w) + σ(β r_l) (D'Oosterlinck et al. 2024,
    arXiv 2408.06266, Eq. 7, as trl's ``apo_zero``).

    Anchored: each completion's own log-ratio is pushed (the chosen up, the rejected down)
    instead of only their margin. Bounded in [0, 2], so finite for any r.
    """
    return torch.sigmoid(-beta * r_w) + torch.sigmoid(beta * r_l)


# --------------------------------------------------------------------------- listwise losses


def plackett_luce_loss(utilities: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """-log of the Plackett-Luce likelihood of the reward ranking of each row's completions.

    DPO appendix A.3 (Rafailov et al. 2023, Eq. 18, the Plackett-Luce model, with the implicit
    reward u = β·s(r) substituted as in the DPO objective that follows it; listwise DPO is LiPO's
    "DPO_PL", Liu et al. 2024, arXiv 2402.01878). ``utilities``, ``rewards`` and ``mask`` are
    [G, K] (G prompts, K completions, ``mask`` False on padding); returns [G]:

        Σ_k [log Σ_{j: r_j ≤ r_k} exp(u_j) - u_k]

    With distinct rewards this is exactly -log Π_k exp(u_(k)) / Σ_{j≥k} exp(u_(j)) over the
    completions sorted by reward (the last term is log 1 = 0); for K = 2 it is the sigmoid loss
    softplus(-(u_w - u_l)). Ties (equal rewards): Breslow's rule from Cox regression — tied
    completions form one stage, each member takes the log-sum-exp of everything not ranked
    strictly above it, so no order among tied completions is asserted (a tied pair contributes
    no pairwise preference; its stage's term still normalises against the rest). Log-sum-exp of
    masked utilities, so finite in float32 for any finite u.
    """
    dtype = torch.promote_types(utilities.dtype, torch.float32)
    u = torch.where(mask, utilities.to(dtype), torch.zeros((), dtype=dtype, device=mask.device))
    eye = torch.eye(u.shape[-1], dtype=torch.bool, device=u.device)
    at_or_below = mask[:, None, :] & (rewards[:, None, :] <= rewards[:, :, None])  # [G, k, j]
    risk = at_or_below | eye  # the diagonal keeps padded rows finite (they are dropped below)
    log_denominator = torch.logsumexp(u[:, None, :].masked_fill(~risk, -math.inf), dim=-1)
    terms = torch.where(mask, log_denominator - u, torch.zeros((), dtype=dtype, device=u.device))
    return terms.sum(-1)


def rrhf_rank_loss(scores: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """RRHF ranking loss Σ_{r_i < r_j} max(0, p_i - p_j) per prompt (Yuan et al. 2023, arXiv
    2304.05302, Eq. 2), with p_i = log π(y_i|x)/|y_i| (their Eq. 1) given as ``scores``.

    [G, K] inputs (``mask`` False on padding), returns [G]: a sum over the ordered pairs of the
    prompt with strictly different rewards (ties give no pair), margin 0, no reference model.
    """
    dtype = torch.promote_types(scores.dtype, torch.float32)
    p = scores.to(dtype)
    worse = mask[:, :, None] & mask[:, None, :] & (rewards[:, :, None] < rewards[:, None, :])
    hinge = torch.relu(p[:, :, None] - p[:, None, :])  # [g, i, j]: p_i - p_j, i worse than j
    return torch.where(worse, hinge, torch.zeros((), dtype=dtype, device=p.device)).sum((-2, -1))


def sft_nll(policy_logps: Tensor, n_tokens: Tensor) -> Tensor:
    """Per-token negative log-likelihood of the SFT targets, pooled: -Σ log π(y) / Σ |y|
    (``sft_reduction: mean``).

    Normalised as trl's ``sft`` loss (the mean NLL over all target tokens of the batch) and as
    RPO's length-normalised NLL (Pang et al. 2024, arXiv 2404.19733: L_DPO + α·L_NLL, L_NLL
    divided by the target's length). Not SLiC-HF's or RRHF's term, which sum over the tokens
    (:func:`sft_nll_sum`): under this reduction their λ is divided by the target length (41 on
    average on the demo). ``policy_logps`` are summed completion log-probs [T].
    """
    dtype = torch.promote_types(policy_logps.dtype, torch.float32)
    return -policy_logps.to(dtype).sum() / n_tokens.to(dtype).sum().clamp(min=1.0)


def sft_nll_sum(policy_logps: Tensor) -> Tensor:
    """Sequence negative log-likelihood of the SFT targets, averaged over them: -mean_t log π(y_t)
    with each log π(y_t) summed over the target's tokens (``sft_reduction: sum``).

    The cross-entropy regulariser -log π(y_ref|x) of SLiC-HF (Zhao et al. 2023, arXiv
    2305.10425, Section 2) and RRHF's L_ft = -Σ_t log P(y_t|x, y_<t) of the best response (Yuan
    et al. 2023, Eq. 3; L = L_rank + L_ft, Eq. 4), one target per prompt, averaged over the
    batch's prompts like the rest of the loss. ``policy_logps`` are summed completion log-probs
    [T]. (Per pair, SLiC-HF counts a prompt's target once per pair: the same objective whenever
    every prompt of the batch has as many pairs, as with first-round or all pairs and no ties.)
    """
    dtype = torch.promote_types(policy_logps.dtype, torch.float32)
    return -policy_logps.to(dtype).mean()


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class PreferenceLossOutput:
    """Losses (with grad) and the detached implicit rewards of the pairs, for logging (margin =
    chosen - rejected, accuracy = margin > 0): β·r (DPO Eq. 5) for sigmoid, hinge, robust,
    apo_zero and plackett_luce; β·r/|y| (the per-token mean log-ratio the loss acts on) for ipo
    and sigmoid_norm; p = log π/|y| (RRHF's own score, no reference) for rrhf; the summed log π
    (SLiC-HF's own score, no reference, no β) for slic_hf.

    ``losses`` is [P] (one per pair) for pairwise losses and [G] (one per prompt) for listwise
    ones (``listwise``), the SFT term λ·``sft`` already added to each; ``sft`` is the detached
    NLL of the SFT targets, reduced as ``sft_reduction`` says (None when ``sft_weight`` is 0)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    sft: Tensor | None = None
    listwise: bool = False

    @property
    def loss(self) -> Tensor:
        """Mean loss over the pairs (prompts, for a listwise loss): the training objective."""
        return self.losses.mean()


# --------------------------------------------------------------------------- entry points


def preference_loss(
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    len_w: Tensor,
    len_l: Tensor,
    config: LossConfig,
) -> PreferenceLossOutput:
    """Per-pair preference loss from summed completion log-probs, all tensors of shape [P]
    (a pairwise loss; no SFT term, which needs the prompts: see :func:`batch_loss`).

    ``policy_*`` carry the gradient, ``ref_*`` are the (no-grad) SFT log-probs (slic_hf ignores
    them), ``len_*`` the completion token counts (only IPO and sigmoid_norm use them; clamped to
    ≥ 1). Half-precision inputs are computed in float32. Rewards are the summed log π for
    slic_hf, β·r from the summed log-ratios for sigmoid,
    hinge, robust and apo_zero, and β·r/|y| for IPO and sigmoid_norm, whose losses see only
    per-token means, so that the logged margin and accuracy are the loss's (the IPO margin's
    target is β·1/(2β) = 1/2; τ·log π/π_ref is also the scale of the paper's optimum π ∝
    π_ref·exp(p*(y ≻ μ)/τ)). trl logs summed β·r for both: ours differ there on purpose.
    ``config`` was validated when it was built: nothing is re-checked here.
    """
    loss, divergence, beta, alpha = config.loss, config.divergence, config.beta, config.alpha
    if loss not in PAIRWISE:
        raise ValueError(f"loss: {loss!r} is listwise: use batch_loss")
    dtype = torch.promote_types(policy_w.dtype, torch.float32)
    if loss == "slic_hf":  # reference-free: the policy's own log-probs
        pw, pl = policy_w.to(dtype), policy_l.to(dtype)
        return PreferenceLossOutput(slic_hf_loss(pw, pl, config.margin), pw.detach(), pl.detach())
    r_w = policy_w.to(dtype) - ref_w.to(dtype)
    r_l = policy_l.to(dtype) - ref_l.to(dtype)
    if loss in ("ipo", "sigmoid_norm"):
        n_w, n_l = len_w.to(dtype).clamp(min=1.0), len_l.to(dtype).clamp(min=1.0)  # as trl
        r_w, r_l = r_w / n_w, r_l / n_l  # per-token means: the loss's and the logged rewards
        losses = ipo_loss(r_w - r_l, beta) if loss == "ipo" else sigmoid_loss(r_w - r_l, beta)
    elif loss == "apo_zero":
        losses = apo_zero_loss(r_w, r_l, beta)
    else:
        delta = divergence_score(r_w, divergence, alpha) - divergence_score(r_l, divergence, alpha)
        eps = config.label_smoothing
        if loss == "hinge":
            losses = hinge_loss(delta, beta)
        elif loss == "robust":
            losses = robust_loss(delta, beta, eps)
        elif eps:
            losses = conservative_sigmoid_loss(delta, beta, eps)
        else:
            losses = sigmoid_loss(delta, beta)
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * r_w).detach(),
        rejected_rewards=(beta * r_l).detach(),
    )


def best_rows(groups: Tensor, rewards: Tensor) -> Tensor:
    """Row of the best-ranked completion of each prompt [G] (the first one on a tie in reward):
    the SFT target. ``groups`` [G, K] holds each prompt's rows, -1 on padding."""
    mask = groups >= 0
    r = rewards[groups.clamp(min=0)].masked_fill(~mask, -math.inf)
    return groups.gather(1, r.argmax(-1, keepdim=True)).squeeze(1)


def batch_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    n_tokens: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    config: LossConfig,
    groups: Tensor | None = None,
    rewards: Tensor | None = None,
) -> PreferenceLossOutput:
    """The loss of a batch of prompts from the summed log-probs of all their completions.

    ``policy_logps`` (with grad), ``ref_logps`` and ``n_tokens`` are [N] over every completion
    of the batch; ``chosen``/``rejected`` [P] the rows of each pair's winner and loser; ``groups``
    [G, K] the rows of each prompt (-1 on padding) and ``rewards`` [N] their rewards, needed by
    listwise losses and the SFT term (λ = ``sft_weight`` > 0), whose target is each prompt's
    best-ranked completion (:func:`best_rows`; with one pair per prompt, the pair's chosen one,
    as trl). Pairwise losses give :func:`preference_loss` of the pairs; listwise ones one loss
    per prompt (:func:`plackett_luce_loss` on u = β·s(r), :func:`rrhf_rank_loss` on
    p = log π/|y|) with the pairs' rewards for logging. λ·:func:`sft_nll_sum` (``sft_reduction:
    sum``) or λ·:func:`sft_nll` (``mean``) is added to every entry of ``losses``, so ``loss`` is
    the objective.
    """
    loss, beta = config.loss, config.beta
    n = n_tokens.clamp(min=1)
    if loss in PAIRWISE:
        w, l = chosen, rejected
        out = preference_loss(
            policy_logps[w], policy_logps[l], ref_logps[w], ref_logps[l], n[w], n[l], config
        )
        losses, chosen_rewards, rejected_rewards = (
            out.losses,
            out.chosen_rewards,
            out.rejected_rewards,
        )
    else:
        if groups is None or rewards is None:
            raise ValueError(f"loss: {loss!r} is listwise: it needs the prompts and rewards")
        dtype = torch.promote_types(policy_logps.dtype, torch.float32)
        mask = groups >= 0
        rows = groups.clamp(min=0)
        if loss == "rrhf":
            p = policy_logps.to(dtype) / n.to(dtype)
            losses = rrhf_rank_loss(p[rows], rewards[rows], mask)
            chosen_rewards, rejected_rewards = p[chosen].detach(), p[rejected].detach()
        else:
            r = policy_logps.to(dtype) - ref_logps.to(dtype)
            u = beta * divergence_score(r, config.divergence, config.alpha)
            losses = plackett_luce_loss(u[rows], rewards[rows], mask)
            chosen_rewards, rejected_rewards = (
                (beta * r[chosen]).detach(),
                (beta * r[rejected]).detach(),
            )
    sft = None
    if config.sft_weight > 0:
        if groups is None or rewards is None:
            raise ValueError("sft_weight: the SFT term needs the prompts and rewards")
        target = best_rows(groups, rewards)
        if config.sft_reduction == "sum":
            sft = sft_nll_sum(policy_logps[target])
        else:
            sft = sft_nll(policy_logps[target], n_tokens[target])
        losses = losses + config.sft_weight * sft
        sft = sft.detach()
    return PreferenceLossOutput(
        losses, chosen_rewards, rejected_rewards, sft=sft, listwise=loss in LISTWISE
    )
