"""The on-policy policies (issue #30) that ``report`` and ``frontier`` read beside the offline
variants: their names and how they group into curves, from params; the one home of that list::

    curves = online_curves(params)     # [] in the demo (online.variants: [], rl_settings: {})
    names = online_policies(params)    # online-dpo-r1, online-dpo-r2, ..., rloo-kl0_02, ...
    stage = curves[0].eval_stage("online-dpo-r2", 0)   # evaluate-online@dpo-0-from1

Each variant v of ``online.variants`` is one curve ``online-<v>`` whose points are its rounds
1..R (policies ``online-<v>-r<r>``, evaluated by ``evaluate-online``); its round 0 is the SFT
policy, as for every curve. The RLOO baseline (``online.rl_settings``, when it has any) is one
curve ``rloo`` over its KL coefficients, its points the settings (``rloo-<setting>``, evaluated
by ``evaluate-rl``), in params order. The settings are read by :mod:`stages.lib.online` and
:mod:`stages.lib.rl` as the online stages read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.lib.online import online_section, policy_name, read_online_variants, read_rounds
from stages.lib.rl import read_kl_coef

#: The curve of the RLOO baseline and the label of its policies' loss column in the report.
RLOO = "rloo"
#: The two kinds of on-policy curve: iterative rounds of a variant, and RLOO's KL coefficients.
KINDS = ("rounds", "rl")


@dataclass(frozen=True)
class OnlineCurve:
    """One on-policy curve: ``name`` (``online-<v>`` or ``rloo``), ``kind`` (:data:`KINDS`),
    its ``policies`` in curve order, each point's ``knobs`` (the round, or the KL coefficient)
    and, for rounds, the align ``variant`` whose loss the rounds train with."""

    name: str
    kind: str
    policies: tuple[str, ...]
    knobs: tuple[float, ...]
    variant: str | None = None

    def eval_stage(self, policy: str, seed: int) -> str:
        """The DVC stage that evaluates ``policy`` (one of :attr:`policies`) with ``seed``."""
        i = self.policies.index(policy)
        if self.kind == "rounds":
            return f"evaluate-online@{self.variant}-{seed}-from{int(self.knobs[i]) - 1}"
        return f"evaluate-rl@{policy.removeprefix(f'{RLOO}-')}-{seed}"

    def describe(self) -> str:
        """One line: what the curve is and its points."""
        if self.kind == "rounds":
            return (
                f"iterative {self.variant} (on-policy rounds, stages online-round): rounds "
                f"{', '.join(str(int(k)) for k in self.knobs)} ({', '.join(self.policies)})"
            )
        pts = ", ".join(f"{p} ({k:g})" for p, k in zip(self.policies, self.knobs))
        return f"trl's RLOO (stages online-rl), KL coefficient per setting: {pts}"


def online_curves(params: dict) -> list[OnlineCurve]:
    """The on-policy curves of ``online.variants`` (one per variant, rounds 1..R of
    ``online.rounds``) and ``online.rl_settings`` (one ``rloo`` curve), in that order; [] when
    there is no ``online`` section or both are empty (one-line errors naming the key)."""
    if "online" not in params:
        return []
    online = online_section(params)
    known = list((params.get("align") or {}).get("variants") or {})
    variants = read_online_variants(params, known)
    out = []
    if variants:
        rounds = [spec.round for spec in read_rounds(params)]
        for v in variants:
            names = tuple(policy_name(v, r) for r in rounds)
            out.append(OnlineCurve(f"online-{v}", "rounds", names, tuple(rounds), v))
    settings = online.get("rl_settings") or {}
    if not isinstance(settings, dict):
        raise ValueError(
            f"params: online.rl_settings: must be a mapping (setting -> KL coefficient), "
            f"got {settings!r}"
        )
    if settings:
        names = tuple(f"{RLOO}-{s}" for s in settings)
        coefs = tuple(read_kl_coef(params, s) for s in settings)
        out.append(OnlineCurve(RLOO, "rl", names, coefs))
    return out


def online_policies(params: dict) -> list[str]:
    """Every on-policy policy of :func:`online_curves`, in curve order ([] in the demo)."""
    return [p for c in online_curves(params) for p in c.policies]


def check_names(curves: list[OnlineCurve], taken) -> None:
    """No on-policy policy or curve is named like a policy of ``taken`` (sft, the variants,
    the families): a one-line error naming the key."""
    taken = set(taken)
    for c in curves:
        key = "online.variants" if c.kind == "rounds" else "online.rl_settings"
        for name in (c.name, *c.policies):
            if name in taken:
                raise ValueError(
                    f"params: {key}: the on-policy name {name!r} clashes with a policy or "
                    f"family of the same name"
                )


def online_labels(curves: list[OnlineCurve], labels: dict[str, dict]) -> dict[str, dict]:
    """policy -> the report's label columns (loss, divergence, alpha): a round's are its
    variant's (``labels``: the variants' own), an RLOO run's ``rloo`` and ``reverse_kl`` (its
    KL penalty is the reverse KL to the SFT policy)."""
    out = {}
    for c in curves:
        for p in c.policies:
            if c.kind == "rounds":
                out[p] = dict(labels[c.variant])
            else:
                out[p] = {"loss": RLOO, "divergence": "reverse_kl", "alpha": None}
    return out


def summary_note(curves: list[OnlineCurve]) -> list[str]:
    """The report summary's lines on the on-policy policies ([] without any)."""
    if not curves:
        return []
    lines = [
        "On-policy policies (issue #30, docs/online.md), reported like every variant (no "
        "align run behind them, so no val accuracy):",
        "",
    ]
    lines += [f"- `{c.name}`: {c.describe()}." for c in curves]
    return [*lines, ""]
