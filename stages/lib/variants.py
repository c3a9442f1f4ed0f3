"""The alignment variants of ``params.yaml``, read once: ``align.common`` merged with
``align.variants.<name>`` (the variant's keys win), where each key was set (for error messages),
the name checks, and the pair loss :class:`LossConfig` they configure. Torch-free: ``report``
and ``frontier`` read variants without importing the loss functions (:mod:`stages.lib.losses`).

::

    from stages.lib.variants import read_variant, read_variants

    dpo = read_variant(params, "dpo")           # checks the name and the align section's shape
    dpo.settings["learning_rate"]               # align.common overridden by align.variants.dpo
    dpo.where("beta")                           # 'align.variants.dpo.beta' (or 'align.common.beta')
    dpo.loss()                                  # LossConfig, errors naming the key where it was set
    for name, variant in read_variants(params).items(): ...   # every variant, params order

The same keys (loss, divergence, beta, alpha, sft_weight, label_smoothing, margin,
sft_reduction) may live in
``align.variants.<name>`` or ``align.common``; :func:`read_loss_config` builds a
:class:`LossConfig` from such a mapping with errors naming the key. The training keys
(:class:`stages.lib.align.TrainConfig`) are read by the align stage from
:attr:`Variant.settings` with :meth:`Variant.where`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

from stages.lib.config import param, positive_finite, read_mapping

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd", "alpha")
PAIRWISE = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm", "apo_zero", "slic_hf")
LISTWISE = ("plackett_luce", "rrhf")
LOSSES = PAIRWISE + LISTWISE
#: Losses defined on the log-ratio itself (not an f′ score): reverse KL only.
REVERSE_KL_ONLY = ("ipo", "sigmoid_norm", "apo_zero")
#: Losses on policy log-probs alone: no reference, no divergence, no β (what each one acts on).
NO_REFERENCE = {
    "rrhf": "it ranks length-normalised policy log-probs, without reference or score",
    "slic_hf": "it compares summed policy log-probs, without reference or score; its margin is "
    "`margin`",
}
#: Losses that take a label-smoothing ε (cDPO for sigmoid, robust DPO).
SMOOTHED = ("sigmoid", "robust")
#: Losses that take a margin δ (SLiC-HF's calibration margin, in nats of log π).
MARGIN = ("slic_hf",)
#: How the SFT term reduces the NLL of each prompt's target: ``sum`` over its tokens (the
#: sequence NLL, averaged over the prompts: SLiC-HF's -log π(y_ref|x), RRHF's L_ft) or ``mean``
#: per token, pooled over the batch's targets (trl's ``sft`` loss; RPO's length-normalised NLL).
SFT_REDUCTIONS = ("mean", "sum")
#: The SFT reduction of a loss whose paper sums the NLL over tokens; every other loss: ``mean``.
SUMMED_SFT = ("slic_hf", "rrhf")

ALPHA_RANGE = (
    "in the open interval (0, 1) (use divergence 'reverse_kl' for alpha -> 0, "
    "'forward_kl' for alpha -> 1)"
)
#: The SFT policy's name: no variant may take it (report and frontier list it with them).
SFT = "sft"
#: DVC stage-name characters (``dvc.stage.utils.is_valid_name``) minus the dot, which would split
#: the key in the dotted parameter path ``align.variants.<name>`` that dvc.yaml lists.
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------- the loss


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def default_sft_reduction(loss: str) -> str:
    """The SFT term's reduction of ``loss`` when ``sft_reduction`` is not set: its paper's
    (``sum`` for slic_hf and rrhf, ``mean`` otherwise)."""
    return "sum" if loss in SUMMED_SFT else "mean"


@dataclass(frozen=True)
class LossConfig:
    """The loss of a variant, validated once when built (``ValueError`` naming the field).

    Pairwise losses (:data:`PAIRWISE`) act on each preference pair; listwise losses
    (:data:`LISTWISE`) on all K completions of a prompt ranked by reward (the pairs then only
    serve the logged accuracy and margin). ``alpha`` is set for ``divergence='alpha'`` only.
    IPO, sigmoid_norm and apo_zero are only defined for reverse KL: IPO's Eq. 17 regresses the
    log-ratio margin itself onto 1/(2τ), sigmoid_norm averages the log-ratio over tokens and
    APO-zero anchors each log-ratio at 0, and no paper derives these on f′ scores (trl allows
    some; we do not). RRHF ranks policy log-probs with no reference: it takes neither a
    divergence nor β; nor does slic_hf (SLiC-HF as published: a hinge with margin ``margin`` δ
    on the policy's own log-prob margin; the ``hinge`` loss is RSO's normalised hinge on
    reference log-ratios). ``label_smoothing`` ε is used by sigmoid (cDPO) and robust only;
    ``sft_weight`` λ adds λ times the NLL of each prompt's best-ranked completion to any loss,
    reduced as ``sft_reduction`` says (:data:`SFT_REDUCTIONS`; unset: :func:`default_sft_reduction`
    of the loss, which is what the field holds once built).
    """

    loss: str = param(
        "loss: sigmoid, hinge, ipo, robust, sigmoid_norm, apo_zero, slic_hf (pairwise); "
        "plackett_luce, rrhf (listwise)",
        check=lambda v: v in LOSSES,
        must=f"one of {', '.join(LOSSES)}",
    )
    divergence: str = param(  # None: only for rrhf, slic_hf (checked in __post_init__)
        "score s(r): reverse_kl r, forward_kl -e^-r, jsd log σ(r), alpha (null for rrhf, slic_hf)",
        None,
        check=lambda v: v in DIVERGENCES,
        must=f"one of {', '.join(DIVERGENCES)}",
    )
    beta: float = param(  # None: only for rrhf, slic_hf
        "β: scale of the score margin (τ for ipo; null for rrhf, slic_hf)",
        None,
        check=positive_finite,
        must="a finite number > 0",
    )
    alpha: float | None = param(
        "α of divergence alpha, in (0, 1) (null otherwise)",
        None,
        check=lambda v: 0.0 < v < 1.0,
        must=ALPHA_RANGE,
    )
    sft_weight: float = param(
        "λ: weight of the NLL of each prompt's best-ranked completion (0 = none)",
        0.0,
        check=lambda v: 0.0 <= v < math.inf,
        must="a finite number >= 0",
    )
    label_smoothing: float = param(
        "ε: label-flip rate of cDPO (loss sigmoid) and robust DPO, in [0, 0.5)",
        0.0,
        check=lambda v: 0.0 <= v < 0.5,
        must="in [0, 0.5)",
    )
    margin: float | None = param(
        "δ: margin of slic_hf's hinge max(0, δ - log π(y_w|x) + log π(y_l|x)), nats (null otherwise)",
        None,
        check=positive_finite,
        must="a finite number > 0",
    )
    sft_reduction: str | None = param(
        "the SFT term's NLL: sum (over the target's tokens; default for slic_hf, rrhf) or mean "
        "(per token over the batch; default otherwise)",
        None,
        check=lambda v: v in SFT_REDUCTIONS,
        must=f"one of {', '.join(SFT_REDUCTIONS)}",
    )

    def __post_init__(self) -> None:
        loss, divergence, beta, alpha = self.loss, self.divergence, self.beta, self.alpha
        if loss not in LOSSES:
            raise ValueError(f"loss: must be one of {', '.join(LOSSES)}, got {loss!r}")
        if loss in NO_REFERENCE:
            for key, value in (("divergence", divergence), ("beta", beta)):
                if value is not None:
                    raise ValueError(
                        f"{key}: not used by loss {loss!r} ({NO_REFERENCE[loss]}): remove it, "
                        f"got {value!r}"
                    )
        else:
            if divergence is None:
                raise ValueError(f"divergence: is missing ({_doc('divergence')})")
            if divergence not in DIVERGENCES:
                raise ValueError(
                    f"divergence: must be one of {', '.join(DIVERGENCES)}, got {divergence!r}"
                )
            if beta is None:
                raise ValueError(f"beta: is missing ({_doc('beta')})")
            if not _is_real(beta) or not math.isfinite(beta) or beta <= 0:
                raise ValueError(f"beta: must be a finite number > 0, got {beta!r}")
        if divergence == "alpha":
            if alpha is None:
                raise ValueError("alpha: required for divergence 'alpha' (a number in (0, 1))")
            if not _is_real(alpha) or not 0.0 < alpha < 1.0:
                raise ValueError(f"alpha: must be {ALPHA_RANGE}, got {alpha!r}")
        elif alpha is not None:
            raise ValueError(
                f"alpha: only used by divergence 'alpha', not {divergence!r}: remove it"
            )
        if loss in REVERSE_KL_ONLY and divergence != "reverse_kl":
            raise ValueError(
                f"divergence: loss {loss!r} requires divergence 'reverse_kl', got {divergence!r}"
            )
        w, eps = self.sft_weight, self.label_smoothing
        if not _is_real(w) or not 0.0 <= w < math.inf:
            raise ValueError(f"sft_weight: must be a finite number >= 0, got {w!r}")
        if not _is_real(eps) or not 0.0 <= eps < 0.5:
            raise ValueError(f"label_smoothing: must be in [0, 0.5), got {eps!r}")
        if eps != 0 and loss not in SMOOTHED:
            raise ValueError(
                f"label_smoothing: only used by losses {', '.join(SMOOTHED)}, not {loss!r}: "
                f"remove it, got {eps!r}"
            )
        margin = self.margin
        if loss in MARGIN:
            if margin is None:
                raise ValueError(f"margin: is missing ({_doc('margin')})")
            if not _is_real(margin) or not math.isfinite(margin) or margin <= 0:
                raise ValueError(f"margin: must be a finite number > 0, got {margin!r}")
        elif margin is not None:
            hint = " (the hinge's margin is 1/beta)" if loss == "hinge" else ""
            raise ValueError(
                f"margin: only used by loss {', '.join(MARGIN)}, not {loss!r}{hint}: remove it, "
                f"got {margin!r}"
            )
        reduction = self.sft_reduction
        if reduction is None:  # the loss's paper's reduction, stored so that the config says it
            object.__setattr__(self, "sft_reduction", default_sft_reduction(loss))
        elif reduction not in SFT_REDUCTIONS:
            raise ValueError(
                f"sft_reduction: must be one of {', '.join(SFT_REDUCTIONS)}, got {reduction!r}"
            )

    @property
    def listwise(self) -> bool:
        """True for a loss over all completions of a prompt (:data:`LISTWISE`)."""
        return self.loss in LISTWISE

    def logged(self) -> dict:
        """The settings to log: loss, divergence, beta, alpha, plus sft_weight and
        label_smoothing where they are not 0, margin where it is set and sft_reduction where
        there is an SFT term (the logs of the original variants are unchanged)."""
        out = {k: getattr(self, k) for k in ("loss", "divergence", "beta", "alpha")}
        out.update(
            {k: getattr(self, k) for k in ("sft_weight", "label_smoothing") if getattr(self, k)}
        )
        if self.margin is not None:
            out["margin"] = self.margin
        if self.sft_weight:
            out["sft_reduction"] = self.sft_reduction
        return out


def _doc(key: str) -> str:
    return next(f.metadata["doc"] for f in dataclasses.fields(LossConfig) if f.name == key)


LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))


def read_loss_config(mapping: dict, where: Callable[[str], str]) -> LossConfig:
    """:class:`LossConfig` from a params mapping of its keys; every error is one line
    ``params: <where(key)>: ...`` naming the key (also for the checks across keys). A
    ``sft_reduction`` set without an SFT term (``sft_weight`` 0) is refused: it would do nothing."""
    try:
        config = read_mapping(mapping, "", LossConfig, where=where)
    except ValueError as err:
        key, sep, rest = str(err).partition(": ")
        if sep and key in LOSS_KEYS:  # raised by __post_init__
            raise ValueError(f"params: {where(key)}: {rest}") from None
        raise
    if mapping.get("sft_reduction") is not None and not config.sft_weight:
        raise ValueError(
            f"params: {where('sft_reduction')}: only used with an SFT term (sft_weight > 0): "
            f"remove it, got {mapping['sft_reduction']!r}"
        )
    return config


# --------------------------------------------------------------------------- variants


def check_name(name: str) -> None:
    """A variant name is a DVC matrix key that also works in dotted parameter paths."""
    if not VARIANT_NAME.match(str(name)):
        hint = f" (try {str(name).replace('.', '_')!r})" if "." in str(name) else ""
        raise ValueError(
            f"variant name {name!r} must match {VARIANT_NAME.pattern}: it is a DVC matrix "
            f"key inside the parameter path align.variants.<name>{hint}"
        )


def align_section(params: dict) -> tuple[dict, dict]:
    """``align.common`` (empty when null) and ``align.variants`` (a non-empty mapping)."""
    if "align" not in params:
        raise ValueError("params: section 'align' is missing")
    align = params["align"]
    if not isinstance(align, dict):
        raise ValueError(f"params: align: must be a mapping, got {align!r}")
    common = align.get("common")
    common = {} if common is None else common
    if not isinstance(common, dict):
        raise ValueError(f"params: align.common: must be a mapping, got {common!r}")
    variants = align.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"params: align.variants: must be a non-empty mapping, got {variants!r}")
    return common, variants


@dataclass(frozen=True)
class Variant:
    """One alignment variant: its ``name``, the ``common`` settings (``align.common``) and its
    ``own`` (``align.variants.<name>``, empty when null)."""

    name: str
    common: dict
    own: dict

    @property
    def settings(self) -> dict:
        """``align.common`` overridden by the variant's own keys."""
        return {**self.common, **self.own}

    def where(self, key: str, common_keys: tuple[str, ...] = ()) -> str:
        """Where ``key`` lives, for error messages: ``align.variants.<name>.<key>`` when the
        variant sets it (or it is set nowhere and is not one of ``common_keys``), else
        ``align.common.<key>``."""
        if key in self.own or (key not in self.common and key not in common_keys):
            return f"align.variants.{self.name}.{key}"
        return f"align.common.{key}"

    def loss(self) -> LossConfig:
        """The variant's pair loss: its loss keys over those of ``align.common``, with errors
        naming the key where it was set (see :meth:`where`)."""
        merged = {k: v for k, v in self.settings.items() if k in LOSS_KEYS}
        return read_loss_config(merged, self.where)

    def check_keys(self, train_keys: tuple[str, ...]) -> None:
        """Every key is a training key (``train_keys``) or a loss key, and none is ``seed``
        (the training seed is the run's, ``--seed``)."""
        for section, keys in (
            ("align.common", self.common),
            (f"align.variants.{self.name}", self.own),
        ):
            if "seed" in keys:
                raise ValueError(
                    f"params: {section}.seed: not allowed: the training seed is the run's seed, "
                    f"from `seeds` (python -m stages align {self.name} --seed <s>)"
                )
        known = [k for k in (*train_keys, *LOSS_KEYS) if k != "seed"]
        for key in self.settings:
            if key not in known:
                where = self.where(key, train_keys)
                raise ValueError(f"params: {where}: not a known key (known: {', '.join(known)})")


def _variant(name: str, common: dict, variants: dict) -> Variant:
    if name == SFT:
        raise ValueError(f"params: align.variants.{SFT}: clashes with the SFT policy's name")
    own = variants[name]
    own = {} if own is None else own
    if not isinstance(own, dict):
        raise ValueError(f"params: align.variants.{name}: must be a mapping, got {own!r}")
    return Variant(str(name), common, own)


def read_variant(params: dict, name: str) -> Variant:
    """Variant ``name`` of ``params``: its name and ``align``'s shape checked (one-line errors
    naming the key)."""
    check_name(name)
    common, variants = align_section(params)
    if name not in variants:
        raise ValueError(
            f"params: align.variants.{name}: is missing (variants: {', '.join(map(str, variants))})"
        )
    return _variant(name, common, variants)


def read_variants(params: dict) -> dict[str, Variant]:
    """Every variant of ``align.variants`` (params order), each checked as :func:`read_variant`."""
    common, variants = align_section(params)
    out = {}
    for name in variants:
        check_name(name)
        out[str(name)] = _variant(name, common, variants)
    return out
