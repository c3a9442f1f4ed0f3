"""DPO-family preference losses: one small function per divergence score and per pair loss.

Notation. For a completion y of prompt x, ``r(y) = log π(y|x) - log π_ref(y|x)`` summed over the
completion tokens (π_ref is the SFT policy). A divergence turns r into a *score* s(r) = f′(u),
u = π/π_ref = exp(r) (f-DPO convention: α → 0 is reverse KL, α → 1 is forward KL), and a pair
loss acts on the score margin Δ = s(r_w) - s(r_l) of the chosen (w) and rejected (l) completions.

References (equation numbers where we are sure of them, otherwise the named object):

* DPO   — Rafailov et al. 2023, arXiv 2305.18290, Eq. 7 (loss), Eq. 5 (implicit reward β·r).
* f-DPO — Wang et al. 2023, arXiv 2309.16240, Table 1 (f′ per divergence) and the f-DPO loss,
  i.e. DPO's Eq. 7 with r replaced by f′(π/π_ref).
* SLiC-HF — Zhao et al. 2023, arXiv 2305.10425 (rank-calibration hinge loss);
  RSO — Liu et al. 2023, arXiv 2309.06657 ("hinge-norm" loss on log π/π_sft).
* IPO   — Azar et al. 2023, arXiv 2310.12036, Eq. 17 (sampled IPO loss, τ ≡ β).

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

Numerical stability. Every value and gradient is finite in float32 for |r| up to 1e4: log σ and
softplus are used in log space, and the exponentials of the forward-KL and α scores go through
:func:`safe_exp`, which equals exp(x) for x ≤ :data:`SAFE_EXP_CAP` and continues linearly (same
value and slope) beyond it. So the scores equal the paper's f′ exactly for r ≥ -SAFE_EXP_CAP
(forward KL) and α·r ≥ -SAFE_EXP_CAP (α); below that they stay strictly increasing (the sign
of every margin is kept) but grow linearly instead of exponentially. trl instead overflows to
inf/nan (forward KL) or clamps the exponent and loses the gradient (α); see the tests.

Usage::

    from stages.lib.losses import LossConfig, preference_loss

    config = LossConfig("sigmoid", "alpha", beta=0.1, alpha=0.5)    # validated once, here
    out = preference_loss(policy_w, policy_l, ref_w, ref_l, len_w, len_l, config)
    out.loss.backward()            # mean over pairs; out.losses holds the [P] per-pair values
    margin = out.chosen_rewards - out.rejected_rewards

In ``params.yaml`` the same four keys live in ``align.variants.<name>`` (or ``align.common``);
:func:`read_loss_config` builds the config from such a mapping with errors naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.lib.config import param, positive_finite, read_mapping

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd", "alpha")
LOSSES = ("sigmoid", "hinge", "ipo")

#: Exponents above this continue linearly in :func:`safe_exp`. exp(30) ≈ 1.1e13, so at |r| = 1e4
#: scores stay below ~1e17/α and score slopes at most exp(30): far from float32's 3.4e38, even
#: squared in a gradient-norm computation. Where the cap acts, a score is ≤ -1.1e13 (≤ -1.1e13/α),
#: so the sigmoid/hinge loss is either flat (Δ ≫ 0: loss and gradient ≈ 0 in both forms) or linear
#: in Δ (Δ ≪ 0), where each capped score contributes slope β·e^30 instead of the paper's β·e^(-r).
#: The sign of every margin and gradient is kept.
SAFE_EXP_CAP = 30.0

ALPHA_RANGE = (
    "in the open interval (0, 1) (use divergence 'reverse_kl' for alpha -> 0, "
    "'forward_kl' for alpha -> 1)"
)


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


def hinge_loss(delta: Tensor, beta: float) -> Tensor:
    """Hinge loss max(0, 1 - β Δ).

    SLiC-HF calibration loss (Zhao et al. 2023) in the normalized form of RSO (Liu et al. 2023).
    """
    return torch.relu(1.0 - beta * delta)


def ipo_loss(delta_mean: Tensor, beta: float) -> Tensor:
    """IPO squared loss (Δ̄ - 1/(2β))² (Azar et al. 2023, Eq. 17, with τ ≡ β).

    Δ̄ = r_w/|y_w| - r_l/|y_l| uses per-token mean log-ratios, as trl does for IPO.
    """
    return (delta_mean - 1.0 / (2.0 * beta)) ** 2


# --------------------------------------------------------------------------- combined entry point


@dataclass(frozen=True)
class PreferenceLossOutput:
    """Per-pair losses [P] (with grad) and the detached implicit rewards the loss acts on, for
    logging (margin = chosen - rejected, accuracy = margin > 0): β·r (DPO Eq. 5) for sigmoid and
    hinge, β·r/|y| (per-token mean log-ratio, the quantity IPO's loss regresses) for ipo."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def loss(self) -> Tensor:
        """Mean loss over the pairs (the training objective)."""
        return self.losses.mean()


@dataclass(frozen=True)
class LossConfig:
    """The pair loss of a variant, validated once when built (``ValueError`` naming the field).

    ``alpha`` is set for ``divergence='alpha'`` only. IPO is only defined for reverse KL: its
    Eq. 17 regresses the log-ratio margin itself onto 1/(2τ), and neither the IPO nor the f-DPO
    paper derives a squared loss on f′-score margins (trl allows it; we do not).
    """

    loss: str = param(
        "pair loss: sigmoid -log σ(βΔ), hinge max(0, 1 - βΔ) or ipo",
        check=lambda v: v in LOSSES,
        must=f"one of {', '.join(LOSSES)}",
    )
    divergence: str = param(
        "score s(r): reverse_kl r, forward_kl -e^-r, jsd log σ(r), alpha",
        check=lambda v: v in DIVERGENCES,
        must=f"one of {', '.join(DIVERGENCES)}",
    )
    beta: float = param(
        "β: scale of the score margin (τ for ipo)",
        check=positive_finite,
        must="a finite number > 0",
    )
    alpha: float | None = param(
        "α of divergence alpha, in (0, 1) (null otherwise)",
        None,
        check=lambda v: 0.0 < v < 1.0,
        must=ALPHA_RANGE,
    )

    def __post_init__(self) -> None:
        loss, divergence, beta, alpha = self.loss, self.divergence, self.beta, self.alpha
        if loss not in LOSSES:
            raise ValueError(f"loss: must be one of {', '.join(LOSSES)}, got {loss!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(
                f"divergence: must be one of {', '.join(DIVERGENCES)}, got {divergence!r}"
            )
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not math.isfinite(beta)
            or beta <= 0
        ):
            raise ValueError(f"beta: must be a finite number > 0, got {beta!r}")
        if divergence == "alpha":
            if alpha is None:
                raise ValueError("alpha: required for divergence 'alpha' (a number in (0, 1))")
            if (
                isinstance(alpha, bool)
                or not isinstance(alpha, numbers.Real)
                or not 0.0 < alpha < 1.0
            ):
                raise ValueError(f"alpha: must be {ALPHA_RANGE}, got {alpha!r}")
        elif alpha is not None:
            raise ValueError(
                f"alpha: only used by divergence 'alpha', not {divergence!r}: remove it"
            )
        if loss == "ipo" and divergence != "reverse_kl":
            raise ValueError(
                f"divergence: loss 'ipo' requires divergence 'reverse_kl', got {divergence!r}"
            )


LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))


def read_loss_config(mapping: dict, where: Callable[[str], str]) -> LossConfig:
    """:class:`LossConfig` from a params mapping of its four keys; every error is one line
    ``params: <where(key)>: ...`` naming the key (also for the checks across keys)."""
    try:
        return read_mapping(mapping, "", LossConfig, where=where)
    except ValueError as err:
        key, sep, rest = str(err).partition(": ")
        if sep and key in LOSS_KEYS:  # raised by __post_init__
            raise ValueError(f"params: {where(key)}: {rest}") from None
        raise


def variant_where(
    name: str, common: dict, variant: dict, common_keys: tuple[str, ...] = ()
) -> Callable[[str], str]:
    """Where a key of alignment variant ``name`` lives, for error messages: ``align.variants.
    <name>.<key>`` when the variant sets it (or it is set nowhere and is not one of
    ``common_keys``), else ``align.common.<key>`` (the variant's settings are ``align.common``
    overridden by ``align.variants.<name>``)."""

    def where(key: str) -> str:
        if key in variant or (key not in common and key not in common_keys):
            return f"align.variants.{name}.{key}"
        return f"align.common.{key}"

    return where


def read_variant_loss(name: str, common: dict, variant: dict) -> LossConfig:
    """The pair loss of variant ``name``: its loss keys over those of ``align.common``, with
    errors naming the key where it was set (see :func:`variant_where`)."""
    merged = {k: v for k, v in {**common, **variant}.items() if k in LOSS_KEYS}
    return read_loss_config(merged, variant_where(name, common, variant))


def preference_loss(
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    len_w: Tensor,
    len_l: Tensor,
    config: LossConfig,
) -> PreferenceLossOutput:
    """Per-pair preference loss from summed completion log-probs, all tensors of shape [P].

    ``policy_*`` carry the gradient, ``ref_*`` are the (no-grad) SFT log-probs, ``len_*`` the
    completion token counts (only IPO uses them; clamped to ≥ 1). Half-precision inputs are
    computed in float32. Rewards are β·r from the summed log-ratios for sigmoid and hinge, and
    β·r/|y| for IPO, whose loss sees only per-token means, so that the logged margin and accuracy
    are the loss's (the IPO margin's target is β·1/(2β) = 1/2; τ·log π/π_ref is also the scale of
    the paper's optimum π ∝ π_ref·exp(p*(y ≻ μ)/τ)). trl logs summed β·r for IPO: ours differ
    there on purpose. ``config`` was validated when it was built: nothing is re-checked here.
    """
    loss, divergence, beta, alpha = config.loss, config.divergence, config.beta, config.alpha
    dtype = torch.promote_types(policy_w.dtype, torch.float32)
    r_w = policy_w.to(dtype) - ref_w.to(dtype)
    r_l = policy_l.to(dtype) - ref_l.to(dtype)
    if loss == "ipo":
        n_w, n_l = len_w.to(dtype).clamp(min=1.0), len_l.to(dtype).clamp(min=1.0)  # as trl
        r_w, r_l = r_w / n_w, r_l / n_l  # per-token means: the loss's and the logged rewards
        losses = ipo_loss(r_w - r_l, beta)
    else:
        delta = divergence_score(r_w, divergence, alpha) - divergence_score(r_l, divergence, alpha)
        losses = sigmoid_loss(delta, beta) if loss == "sigmoid" else hinge_loss(delta, beta)
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * r_w).detach(),
        rejected_rewards=(beta * r_l).detach(),
    )
