"""Tests for the losses added after the original three (stages.lib.losses): cDPO and robust DPO
(label smoothing ε), the length-normalised sigmoid, APO-zero, the listwise Plackett-Luce and
RRHF losses, and the SFT term (SLiC-HF, RPO, RRHF): closed forms, float32 stability at extreme
log-ratios, the config's one-line errors, and trl parity wherever trl implements the same loss
(the ``trl_trainer`` fixture and ``run_trl`` of tests/test_losses.py).

    .venv/bin/python -m pytest tests/test_losses_variants.py -q
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from test_losses import (
    BETAS,
    EXTREME_R,
    TRL_DIVERGENCE,
    _batch,
    run_ours,
    run_trl,
    t64,
    trl_trainer,  # noqa: F401  (the fixture)
)

from stages.lib import losses as L
from stages.lib import variants as V

DIVS = [("reverse_kl", None), ("forward_kl", None), ("jsd", None), ("alpha", 0.2), ("alpha", 0.9)]


def sp(x: float) -> float:
    """softplus in plain math, stable for any x."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def groups_of(*sizes: int, width: int | None = None) -> torch.Tensor:
    """[G, K] rows of consecutive prompts of the given sizes, -1 padding."""
    width = width or max(sizes)
    out, start = [], 0
    for k in sizes:
        out.append(list(range(start, start + k)) + [-1] * (width - k))
        start += k
    return torch.tensor(out, dtype=torch.long)


def new_configs():
    """Every new (valid) configuration, with a representative ε / λ."""
    out = []
    for d, a in DIVS:
        out += [
            V.LossConfig("sigmoid", d, 0.5, a, label_smoothing=0.2),  # cDPO
            V.LossConfig("robust", d, 0.5, a, label_smoothing=0.2),
            V.LossConfig("robust", d, 0.5, a),  # ε = 0
            V.LossConfig("hinge", d, 0.5, a, sft_weight=0.7),  # SLiC-HF
            V.LossConfig("sigmoid", d, 0.5, a, sft_weight=0.7),  # RPO
            V.LossConfig("plackett_luce", d, 0.5, a),
            V.LossConfig("plackett_luce", d, 0.5, a, sft_weight=0.3),
        ]
    out += [
        V.LossConfig("sigmoid_norm", "reverse_kl", 0.5),
        V.LossConfig("apo_zero", "reverse_kl", 0.5),
        V.LossConfig("rrhf"),
        V.LossConfig("rrhf", sft_weight=1.0),
    ]
    return out


def _id(c: V.LossConfig) -> str:
    extras = f"-eps{c.label_smoothing}" if c.label_smoothing else ""
    extras += f"-sft{c.sft_weight}" if c.sft_weight else ""
    return f"{c.loss}-{c.divergence}-{c.alpha}{extras}"


# --------------------------------------------------------------------------- closed forms

DELTAS = (-4.0, -0.3, 0.0, 0.7, 5.0, 30.0)


@pytest.mark.parametrize("eps", (0.0, 0.1, 0.3, 0.49))
@pytest.mark.parametrize("beta", (0.1, 1.0, 2.0))
def test_smoothed_losses_closed_forms(beta, eps):
    d = t64(*DELTAS)
    cdpo = t64(*((1 - eps) * sp(-beta * x) + eps * sp(beta * x) for x in DELTAS))
    robust = t64(
        *(((1 - eps) * sp(-beta * x) - eps * sp(beta * x)) / (1 - 2 * eps) for x in DELTAS)
    )
    torch.testing.assert_close(L.conservative_sigmoid_loss(d, beta, eps), cdpo)
    torch.testing.assert_close(L.robust_loss(d, beta, eps), robust)
    if eps == 0:  # both are DPO at ε = 0
        torch.testing.assert_close(L.robust_loss(d, beta, eps), L.sigmoid_loss(d, beta))
        torch.testing.assert_close(
            L.conservative_sigmoid_loss(d, beta, eps), L.sigmoid_loss(d, beta)
        )


def test_cdpo_minimum_is_the_smoothed_logit():
    """-(1-ε) log σ(x) - ε log σ(-x) is minimal at σ(x) = 1 - ε: a finite margin."""
    eps, beta = 0.1, 0.5
    d = torch.linspace(-20, 40, 600_001, dtype=torch.float64)
    k = int(torch.argmin(L.conservative_sigmoid_loss(d, beta, eps)))
    assert float(beta * d[k]) == pytest.approx(math.log((1 - eps) / eps), abs=1e-4)


def test_apo_zero_closed_form():
    r_w, r_l = t64(-3.0, 0.0, 2.0, 40.0), t64(1.0, 0.0, -5.0, -40.0)
    for beta in (0.1, 1.0):
        expected = t64(
            *(1 - sig(beta * a) + sig(beta * b) for a, b in zip(r_w.tolist(), r_l.tolist()))
        )
        torch.testing.assert_close(L.apo_zero_loss(r_w, r_l, beta), expected)


@pytest.mark.parametrize(
    "config",
    [
        V.LossConfig("sigmoid", "jsd", 0.5, label_smoothing=0.2),
        V.LossConfig("robust", "alpha", 0.5, 0.3, label_smoothing=0.2),
        V.LossConfig("sigmoid_norm", "reverse_kl", 0.5),
        V.LossConfig("apo_zero", "reverse_kl", 0.5),
    ],
    ids=_id,
)
def test_new_pairwise_losses_by_hand(config):
    pw, pl = t64(-10.0, -20.0, -5.0), t64(-12.0, -18.0, -7.0)
    rw, rl = t64(-11.0, -19.0, -5.5), t64(-11.0, -18.5, -6.0)
    lw, ll = t64(4, 10, 2), t64(5, 8, 3)
    beta, eps = config.beta, config.label_smoothing
    out = L.preference_loss(pw, pl, rw, rl, lw, ll, config)
    expected, per_token = [], config.loss == "sigmoid_norm"
    for i in range(3):
        r_w, r_l = float(pw[i] - rw[i]), float(pl[i] - rl[i])
        if config.loss == "apo_zero":
            expected.append(1 - sig(beta * r_w) + sig(beta * r_l))
            continue
        if per_token:
            x = beta * (r_w / float(lw[i]) - r_l / float(ll[i]))
            expected.append(sp(-x))
            continue
        s = {
            "jsd": lambda r: -math.log1p(math.exp(-r)),
            "alpha": lambda r: (1 - math.exp(-0.3 * r)) / 0.3,
        }
        x = beta * (s[config.divergence](r_w) - s[config.divergence](r_l))
        if config.loss == "sigmoid":
            expected.append((1 - eps) * sp(-x) + eps * sp(x))
        else:
            expected.append(((1 - eps) * sp(-x) - eps * sp(x)) / (1 - 2 * eps))
    torch.testing.assert_close(out.losses, t64(*expected))
    n_w, n_l = (lw, ll) if per_token else (1, 1)  # sigmoid_norm logs per-token rewards, as IPO
    torch.testing.assert_close(out.chosen_rewards, beta * (pw - rw).detach() / n_w)
    torch.testing.assert_close(out.rejected_rewards, beta * (pl - rl) / n_l)


def test_sigmoid_without_smoothing_is_bitwise_the_old_loss():
    pw, pl, rw, rl, lw, ll = _batch(n=32, seed=4)
    old = L.sigmoid_loss(
        L.divergence_score(pw - rw, "jsd") - L.divergence_score(pl - rl, "jsd"), 0.3
    )
    new = L.preference_loss(pw, pl, rw, rl, lw, ll, V.LossConfig("sigmoid", "jsd", 0.3)).losses
    assert torch.equal(old, new)


def _pl_by_hand(u: list[float], rewards: list[float]) -> float:
    """-log PL over the reward order with Breslow ties: each completion against everything not
    ranked strictly above it."""
    total = 0.0
    for k in range(len(u)):
        risk = [math.exp(u[j]) for j in range(len(u)) if rewards[j] <= rewards[k]]
        total += math.log(sum(risk)) - u[k]
    return total


def test_plackett_luce_closed_forms():
    u = t64(0.3, -1.2, 2.0, 0.5)
    mask = torch.ones(1, 4, dtype=torch.bool)
    # distinct rewards: order 2 > 0 > 3 > 1
    rewards = t64(1.0, -2.0, 3.0, 0.0)
    e = [math.exp(x) for x in u.tolist()]
    expected = (
        -math.log(e[2] / (e[2] + e[0] + e[3] + e[1]))
        - math.log(e[0] / (e[0] + e[3] + e[1]))
        - math.log(e[3] / (e[3] + e[1]))
    )
    got = L.plackett_luce_loss(u[None], rewards[None], mask)
    torch.testing.assert_close(got, t64(expected))
    # ties (Breslow): 0 and 3 tied in the middle, both normalised against {0, 3, 1}
    tied = t64(1.0, -2.0, 3.0, 1.0)
    expected = (
        -math.log(e[2] / sum(e))
        - math.log(e[0] / (e[0] + e[3] + e[1]))
        - math.log(e[3] / (e[0] + e[3] + e[1]))
    )
    torch.testing.assert_close(L.plackett_luce_loss(u[None], tied[None], mask), t64(expected))
    assert expected == pytest.approx(_pl_by_hand(u.tolist(), tied.tolist()))
    # K = 2 is the sigmoid loss on u_w - u_l
    two = L.plackett_luce_loss(t64(0.7, -0.4)[None], t64(0.0, 1.0)[None], mask[:, :2])
    torch.testing.assert_close(two, L.sigmoid_loss(t64(-0.4 - 0.7), 1.0))


def test_plackett_luce_ties_assert_no_order_among_tied():
    """Swapping the utilities of two tied completions leaves the loss unchanged (no order is
    asserted between them); swapping two untied ones changes it."""
    rewards = t64(1.0, 1.0, 0.0)[None]
    mask = torch.ones(1, 3, dtype=torch.bool)
    a = L.plackett_luce_loss(t64(0.5, -1.0, 0.2)[None], rewards, mask)
    b = L.plackett_luce_loss(t64(-1.0, 0.5, 0.2)[None], rewards, mask)
    c = L.plackett_luce_loss(t64(0.5, 0.2, -1.0)[None], rewards, mask)
    torch.testing.assert_close(a, b)
    assert abs(float(a - c)) > 0.1


def test_plackett_luce_is_invariant_to_order_and_padding():
    gen = torch.Generator().manual_seed(3)
    u, rewards = torch.randn(5, generator=gen, dtype=torch.float64), t64(0.1, 2.0, -1.0, 0.5, 3.0)
    mask = torch.ones(1, 5, dtype=torch.bool)
    base = L.plackett_luce_loss(u[None], rewards[None], mask)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(L.plackett_luce_loss(u[perm][None], rewards[perm][None], mask), base)
    padded_u = torch.cat([u, t64(1e3, -7.0)])[None]  # garbage in the padding
    padded_r = torch.cat([rewards, t64(99.0, -99.0)])[None]
    padded_mask = torch.tensor([[True] * 5 + [False] * 2])
    torch.testing.assert_close(L.plackett_luce_loss(padded_u, padded_r, padded_mask), base)
    by_hand = _pl_by_hand(u.tolist(), rewards.tolist())
    assert float(base) == pytest.approx(by_hand, rel=1e-12)


def test_rrhf_closed_form_and_ties():
    p = t64(-1.0, -0.5, -2.0, -0.5)  # length-normalised log-probs
    rewards = t64(0.0, 1.0, 2.0, 1.0)  # 1 and 3 tied: no pair between them
    mask = torch.ones(1, 4, dtype=torch.bool)
    expected = 0.0
    for i, j in itertools.permutations(range(4), 2):
        if rewards[i] < rewards[j]:
            expected += max(0.0, float(p[i] - p[j]))
    # pairs: (0<1) 0, (0<2) 1.0, (0<3) 0, (1<2) 1.5, (3<2) 1.5 -> 4.0
    assert expected == pytest.approx(4.0)
    torch.testing.assert_close(L.rrhf_rank_loss(p[None], rewards[None], mask), t64(4.0))
    assert float(L.rrhf_rank_loss(p[None], t64(1.0, 1.0, 1.0, 1.0)[None], mask)) == 0.0


def test_sft_nll_and_best_rows():
    torch.testing.assert_close(L.sft_nll(t64(-6.0, -2.0), t64(3, 1)), t64(2.0).squeeze())
    groups = groups_of(3, 2, width=3)
    rewards = t64(0.5, 2.0, 2.0, -1.0, -3.0)  # prompt 0: rows 1 and 2 tie for best -> the first
    assert L.best_rows(groups, rewards).tolist() == [1, 3]


def _flat_batch(seed=0, sizes=(4, 3, 4)):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    ref = -5 - 30 * torch.rand(n, generator=gen, dtype=torch.float64)
    policy = ref + (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * 3
    n_tokens = torch.randint(1, 20, (n,), generator=gen).double()
    rewards = torch.randn(n, generator=gen, dtype=torch.float64)
    groups = groups_of(*sizes)
    chosen, rejected = [], []
    for g in groups.tolist():
        rows = [r for r in g if r >= 0]
        for a, b in zip(rows[::2], rows[1::2]):  # first-round pairs, higher reward chosen
            w, l = (a, b) if rewards[a] > rewards[b] else (b, a)
            chosen.append(w)
            rejected.append(l)
    return policy, ref, n_tokens, torch.tensor(chosen), torch.tensor(rejected), groups, rewards


def test_batch_loss_pairwise_is_preference_loss_plus_the_sft_term():
    policy, ref, n, w, l, groups, rewards = _flat_batch()
    config = V.LossConfig("hinge", "reverse_kl", 0.5)
    plain = L.batch_loss(policy, ref, n, w, l, config, groups, rewards)
    direct = L.preference_loss(policy[w], policy[l], ref[w], ref[l], n[w], n[l], config)
    assert torch.equal(plain.losses, direct.losses) and plain.sft is None and not plain.listwise
    slic = L.batch_loss(
        policy, ref, n, w, l, dataclasses.replace(config, sft_weight=0.7), groups, rewards
    )
    best = L.best_rows(groups, rewards)
    nll = -policy[best].sum() / n[best].sum()
    torch.testing.assert_close(slic.losses, direct.losses + 0.7 * nll)
    torch.testing.assert_close(slic.sft, nll)
    torch.testing.assert_close(slic.loss, direct.loss + 0.7 * nll)


def test_batch_loss_listwise_by_hand():
    policy, ref, n, w, l, groups, rewards = _flat_batch()
    beta = 0.5
    out = L.batch_loss(
        policy, ref, n, w, l, V.LossConfig("plackett_luce", "jsd", beta), groups, rewards
    )
    assert out.listwise and out.losses.shape == (3,)
    for g, rows in enumerate(groups.tolist()):
        rows = [r for r in rows if r >= 0]
        u = [beta * -math.log1p(math.exp(-float(policy[r] - ref[r]))) for r in rows]
        assert float(out.losses[g]) == pytest.approx(
            _pl_by_hand(u, [float(rewards[r]) for r in rows])
        )
    torch.testing.assert_close(out.chosen_rewards, beta * (policy[w] - ref[w]))  # the pairs' β·r
    out = L.batch_loss(policy, ref, n, w, l, V.LossConfig("rrhf", sft_weight=2.0), groups, rewards)
    p = policy / n
    for g, rows in enumerate(groups.tolist()):
        rows = [r for r in rows if r >= 0]
        rank = sum(
            max(0.0, float(p[i] - p[j]))
            for i, j in itertools.permutations(rows, 2)
            if rewards[i] < rewards[j]
        )
        best = max(rows, key=lambda r: float(rewards[r]))
        assert float(out.losses[g] - 2.0 * out.sft) == pytest.approx(rank)
        assert best in L.best_rows(groups, rewards).tolist()
    torch.testing.assert_close(out.chosen_rewards, p[w])  # RRHF's own score, no β
    with pytest.raises(ValueError, match="^loss: 'rrhf' is listwise"):
        L.batch_loss(policy, ref, n, w, l, V.LossConfig("rrhf"))


@pytest.mark.parametrize("config", [c for c in new_configs() if c.alpha in (None, 0.2)], ids=_id)
def test_new_losses_gradients_match_finite_differences(config):
    policy, ref, n, w, l, groups, rewards = _flat_batch(seed=5)

    def f(x):
        return L.batch_loss(x, ref, n, w, l, config, groups, rewards).losses

    assert torch.autograd.gradcheck(f, (policy.clone().requires_grad_(),))


# --------------------------------------------------------------------------- float32 stability


@pytest.mark.parametrize("config", new_configs(), ids=_id)
def test_new_losses_finite_float32_at_extremes(config):
    """Every log-ratio of the extreme grid (|r| up to 1e4) in groups of 4 completions with
    distinct, tied and reversed rewards: values and gradients finite, for every β."""
    r = torch.tensor(EXTREME_R, dtype=torch.float32)
    combos = torch.tensor(list(itertools.product(range(len(r)), repeat=2)))
    g = len(combos)
    # each prompt: two grid values and their negatives, so each pair mixes extremes
    r_rows = torch.stack([r[combos[:, 0]], r[combos[:, 1]], -r[combos[:, 0]], -r[combos[:, 1]]], 1)
    gen = torch.Generator().manual_seed(0)
    ref = -torch.rand(g, 4, generator=gen) * 300
    n = torch.randint(1, 512, (g, 4), generator=gen).float()
    reward_kinds = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    rewards = reward_kinds[torch.arange(g) % 3].reshape(-1)
    groups = torch.arange(4 * g).reshape(g, 4)
    w = (groups[:, [3, 1]] * 1).reshape(-1)
    l = (groups[:, [0, 2]] * 1).reshape(-1)
    for beta in BETAS if config.beta is not None else (None,):
        c = dataclasses.replace(config, beta=beta)
        policy = (ref + r_rows).reshape(-1).requires_grad_()
        out = L.batch_loss(policy, ref.reshape(-1), n.reshape(-1), w, l, c, groups, rewards)
        (grad,) = torch.autograd.grad(out.losses.sum(), policy)
        assert torch.isfinite(out.losses).all(), (c, beta)
        assert torch.isfinite(grad).all(), (c, beta)
        assert (
            torch.isfinite(out.chosen_rewards).all() and torch.isfinite(out.rejected_rewards).all()
        )


# --------------------------------------------------------------------------- LossConfig


def test_new_configs_are_valid_and_logged_compactly():
    assert V.LossConfig("rrhf").listwise and V.LossConfig("plackett_luce", "jsd", 0.3).listwise
    assert not V.LossConfig("robust", "jsd", 0.3).listwise
    # the original variants log exactly the four keys they always did
    assert V.LossConfig("sigmoid", "alpha", 0.1, 0.5).logged() == {
        "loss": "sigmoid",
        "divergence": "alpha",
        "beta": 0.1,
        "alpha": 0.5,
    }
    assert V.LossConfig("hinge", "reverse_kl", 0.3, sft_weight=0.1).logged()["sft_weight"] == 0.1
    assert (
        V.LossConfig("robust", "reverse_kl", 0.3, label_smoothing=0.1).logged()["label_smoothing"]
        == 0.1
    )


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"loss": "listmle", "divergence": "reverse_kl", "beta": 0.1}, "loss"),
        ({"loss": "rrhf", "divergence": "reverse_kl"}, "divergence"),
        ({"loss": "rrhf", "beta": 0.1}, "beta"),
        ({"loss": "plackett_luce", "beta": 0.1}, "divergence"),
        ({"loss": "plackett_luce", "divergence": "jsd"}, "beta"),
        ({"loss": "sigmoid_norm", "divergence": "jsd", "beta": 0.1}, "divergence"),
        ({"loss": "apo_zero", "divergence": "alpha", "beta": 0.1, "alpha": 0.5}, "divergence"),
        (
            {"loss": "sigmoid", "divergence": "reverse_kl", "beta": 0.1, "sft_weight": -0.1},
            "sft_weight",
        ),
        ({"loss": "rrhf", "sft_weight": math.inf}, "sft_weight"),
        ({"loss": "rrhf", "sft_weight": True}, "sft_weight"),
        (
            {"loss": "robust", "divergence": "jsd", "beta": 0.1, "label_smoothing": 0.5},
            "label_smoothing",
        ),
        (
            {"loss": "sigmoid", "divergence": "jsd", "beta": 0.1, "label_smoothing": -0.01},
            "label_smoothing",
        ),
        (
            {"loss": "robust", "divergence": "jsd", "beta": 0.1, "label_smoothing": math.nan},
            "label_smoothing",
        ),
        (
            {"loss": "hinge", "divergence": "jsd", "beta": 0.1, "label_smoothing": 0.1},
            "label_smoothing",
        ),
        (
            {"loss": "plackett_luce", "divergence": "jsd", "beta": 0.1, "label_smoothing": 0.1},
            "label_smoothing",
        ),
        ({"loss": "rrhf", "alpha": 0.5}, "alpha"),
    ],
)
def test_bad_new_configs_are_one_line_naming_the_field(kwargs, param):
    with pytest.raises(ValueError, match=rf"^{param}: ") as err:
        V.LossConfig(**kwargs)
    assert "\n" not in str(err.value)


def _where(key: str) -> str:
    return f"align.variants.x.{key}"


@pytest.mark.parametrize(
    "mapping, message",
    [
        (
            {"loss": "rrhf", "divergence": "reverse_kl", "beta": 0.1},
            "params: align.variants.x.divergence: not used by loss 'rrhf' (it ranks "
            "length-normalised policy log-probs, without reference or score): remove it, got "
            "'reverse_kl'",
        ),
        (
            {"loss": "plackett_luce", "beta": 0.1},
            "params: align.variants.x.divergence: is missing (score s(r): ",
        ),
        (
            {"loss": "plackett_luce", "divergence": "jsd"},
            "params: align.variants.x.beta: is missing (β: ",
        ),
        (
            {"loss": "sigmoid", "divergence": "jsd", "beta": 0.1, "sft_weight": -1},
            "params: align.variants.x.sft_weight: must be a finite number >= 0, got -1.0",
        ),
        (
            {"loss": "robust", "divergence": "jsd", "beta": 0.1, "label_smoothing": 0.5},
            "params: align.variants.x.label_smoothing: must be in [0, 0.5), got 0.5",
        ),
        (
            {"loss": "hinge", "divergence": "jsd", "beta": 0.1, "label_smoothing": 0.1},
            "params: align.variants.x.label_smoothing: only used by losses sigmoid, robust, not "
            "'hinge': remove it, got 0.1",
        ),
        (
            {"loss": "sigmoid_norm", "divergence": "forward_kl", "beta": 0.1},
            "params: align.variants.x.divergence: loss 'sigmoid_norm' requires divergence "
            "'reverse_kl', got 'forward_kl'",
        ),
        (
            {"loss": "rrhf", "sft_weight": "big"},
            "params: align.variants.x.sft_weight: must be float, got 'big'",
        ),
    ],
)
def test_read_loss_config_names_the_new_keys(mapping, message):
    with pytest.raises(ValueError) as err:
        V.read_loss_config(mapping, _where)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_read_loss_config_reads_the_new_keys():
    config = V.read_loss_config({"loss": "rrhf", "sft_weight": 1}, _where)
    assert config == V.LossConfig("rrhf", sft_weight=1.0) and isinstance(config.sft_weight, float)
    config = V.read_loss_config(
        {"loss": "robust", "divergence": "jsd", "beta": 0.3, "label_smoothing": 0.1}, _where
    )
    assert config.label_smoothing == 0.1 and config.divergence == "jsd"


# --------------------------------------------------------------------------- parity with trl


def _check(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", (0.0, 0.1, 0.3))
@pytest.mark.parametrize("divergence, alpha", DIVS)
def test_robust_matches_trl(trl_trainer, divergence, alpha, eps):  # noqa: F811
    coef = 1 - alpha if alpha is not None else 0.5
    trainer = trl_trainer("robust", TRL_DIVERGENCE[divergence], coef, 0.5, label_smoothing=eps)
    batch = _batch(seed=11)
    theirs = run_trl(trainer, *batch)
    out, gw, gl = run_ours(
        *batch, loss="robust", divergence=divergence, beta=0.5, alpha=alpha, label_smoothing=eps
    )
    _check((out.loss.detach(), gw, gl), theirs)


@pytest.mark.parametrize("beta", (0.1, 1.0))
@pytest.mark.parametrize("loss", ("sigmoid_norm", "apo_zero"))
def test_length_normalised_sigmoid_and_apo_zero_match_trl(trl_trainer, loss, beta):  # noqa: F811
    batch = _batch(seed=12)
    theirs = run_trl(trl_trainer(loss, "reverse_kl", 0.5, beta), *batch)
    out, gw, gl = run_ours(*batch, loss=loss, divergence="reverse_kl", beta=beta)
    _check((out.loss.detach(), gw, gl), theirs)


@pytest.mark.parametrize("eps", (0.05, 0.2))
def test_cdpo_matches_trl_one_pair_at_a_time(trl_trainer, eps):  # noqa: F811
    """trl 1.x dropped label smoothing from its sigmoid loss; its ``aot`` loss applies the same
    smoothed logistic loss to sorted batch log-ratio margins, which for a batch of one pair is
    exactly cDPO on r_w - r_l."""
    trainer = trl_trainer("aot", "reverse_kl", 0.5, 0.5, label_smoothing=eps)
    pw, pl, rw, rl, lw, ll = _batch(n=6, seed=13)
    for i in range(6):
        pair = tuple(x[i : i + 1] for x in (pw, pl, rw, rl, lw, ll))
        theirs = run_trl(trainer, *pair)
        out, gw, gl = run_ours(
            *pair, loss="sigmoid", divergence="reverse_kl", beta=0.5, label_smoothing=eps
        )
        _check((out.loss.detach(), gw, gl), theirs)


def _grouped_pairs(pw, pl, rw, rl, lw, ll):
    """One prompt per pair (its two completions, the chosen one with the higher reward): the
    flat batch_loss inputs. Then the best-ranked completion is each pair's chosen one."""
    n = len(pw)
    policy = torch.stack([pw, pl], 1).reshape(-1)
    ref = torch.stack([rw, rl], 1).reshape(-1)
    n_tokens = torch.stack([lw, ll], 1).reshape(-1)
    rewards = torch.tensor([1.0, 0.0]).repeat(n)
    groups = torch.arange(2 * n).reshape(n, 2)
    return policy, ref, n_tokens, groups[:, 0], groups[:, 1], groups, rewards


def _run_batch(config, pw, pl, rw, rl, lw, ll):
    pw, pl = pw.detach().clone().requires_grad_(), pl.detach().clone().requires_grad_()
    policy, ref, n, w, l, groups, rewards = _grouped_pairs(pw, pl, rw, rl, lw, ll)
    out = L.batch_loss(policy, ref, n, w, l, config, groups, rewards)
    gw, gl = torch.autograd.grad(out.loss, (pw, pl))
    return out, gw, gl


@pytest.mark.parametrize("weight", (0.1, 1.0))
@pytest.mark.parametrize("loss", ("sigmoid", "hinge"))
@pytest.mark.parametrize("divergence, alpha", [("reverse_kl", None), ("jsd", None), ("alpha", 0.5)])
def test_sft_term_matches_trl(trl_trainer, loss, divergence, alpha, weight):  # noqa: F811
    """RPO (sigmoid + λ·NLL) and SLiC-HF (hinge + λ·NLL) against trl's ["<loss>", "sft"] with
    loss_weights [1, λ]: trl's sft term is the mean NLL over all chosen tokens of the batch."""
    coef = 1 - alpha if alpha is not None else 0.5
    trainer = trl_trainer(
        [loss, "sft"], TRL_DIVERGENCE[divergence], coef, 0.5, loss_weights=[1.0, weight]
    )
    batch = _batch(seed=14)
    theirs = run_trl(trainer, *batch)
    config = V.LossConfig(loss, divergence, 0.5, alpha, sft_weight=weight)
    out, gw, gl = _run_batch(config, *batch)
    _check((out.loss.detach(), gw, gl), theirs)
    without = _run_batch(dataclasses.replace(config, sft_weight=0.0), *batch)[0]
    assert float((out.loss - without.loss).detach()) == pytest.approx(
        weight * float(out.sft), rel=1e-5
    )


@pytest.mark.parametrize("divergence, alpha", DIVS)
def test_plackett_luce_with_two_completions_is_trl_sigmoid(trl_trainer, divergence, alpha):  # noqa: F811
    coef = 1 - alpha if alpha is not None else 0.5
    batch = _batch(seed=15)
    theirs = run_trl(trl_trainer("sigmoid", TRL_DIVERGENCE[divergence], coef, 0.5), *batch)
    out, gw, gl = _run_batch(V.LossConfig("plackett_luce", divergence, 0.5, alpha), *batch)
    _check((out.loss.detach(), gw, gl), theirs)


def test_trl_accepts_sigmoid_norm_with_f_divergences_we_reject(trl_trainer):  # noqa: F811
    """As for IPO: trl averages f′ scores over tokens, which no paper derives; we raise."""
    trl_trainer("sigmoid_norm", "js_divergence", 0.5, 0.1)
    with pytest.raises(ValueError, match="^divergence: loss 'sigmoid_norm' requires"):
        V.LossConfig("sigmoid_norm", "jsd", 0.1)
