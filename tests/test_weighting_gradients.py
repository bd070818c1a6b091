"""Gradient-based loss balancing: CAGrad, IMTL, Aligned-MTL, DB-MTL, GradVac, GradDrop, GradNorm.

Each method's promise is checked against an independent computation on small random gradients: the
property it guarantees (equal projections, condition number 1, lifted cosines, ...), its formula written
out on the raw vectors, its state surviving ``state_dict``/``load_state_dict``, and loud failures.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.errors import ConfigError, SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.aligned_mtl import alignment_matrix
from crosstask.weighting.base import BalanceContext
from crosstask.weighting.cagrad import cagrad_solve
from crosstask.weighting.graddrop import graddrop_mask
from crosstask.weighting.gradvac import gradvac_coefficients
from crosstask.weighting.imtl import imtl_g_weights
from crosstask.weighting.pcgrad import pcgrad_coefficients
from tests.balancing import balance
from tests.conftest import tiny_config


def make(name: str, losses: tuple[str, ...] = ("a", "b"), **config):
    entry = WEIGHTINGS.get(name)
    return entry.obj(entry.config(name=name, **config), list(losses))


def random_grads(seed: int, k: int, d: int, conflict: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(k, d, generator=g, dtype=torch.float64) * (0.2 + 3 * torch.rand(k, 1, generator=g))
    if conflict:  # the others mostly opposed to the first
        grads[1:] = -0.7 * grads[0] + 0.3 * grads[1:]
    return grads


def quadratic_losses(
    theta: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``L_i = s_i ‖θ − c_i‖²`` named a, b, c, ...; their gradients are ``2 s_i (θ − c_i)``."""
    names = "abcdefgh"
    return {names[i]: scales[i] * (theta - centers[i]).pow(2).sum() for i in range(len(centers))}


def simplex_grid(k: int, n: int) -> list[torch.Tensor]:
    return [
        torch.tensor([*c, n - sum(c)], dtype=torch.float64) / n
        for c in itertools.product(range(n + 1), repeat=k - 1)
        if sum(c) <= n
    ]


# ----------------------------------------------------------------------------- CAGrad


def cagrad_objective(w: torch.Tensor, grads: torch.Tensor, c: float) -> float:
    g0 = grads.mean(0)
    gw = w @ grads
    return float(gw @ g0 + c * g0.norm() * gw.norm())


@pytest.mark.parametrize("seed", range(8))
def test_cagrad_dual_weights_minimize_the_dual_objective(seed: int) -> None:
    grads = random_grads(seed, 3, 6, conflict=seed % 2 == 1)
    solution = cagrad_solve(grads @ grads.T, 0.4)
    w = solution.dual
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= 0).all())
    best = min(cagrad_objective(v, grads, 0.4) for v in simplex_grid(3, 60))
    assert cagrad_objective(w, grads, 0.4) <= best + 1e-9
    # the direction is the paper's formula, d = g0 + c‖g0‖·g_w/‖g_w‖
    g0, gw = grads.mean(0), w @ grads
    expected = g0 + 0.4 * g0.norm() * gw / gw.norm()
    assert torch.allclose(solution.coefficients @ grads, expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_cagrad_direction_maximizes_the_worst_improvement_within_the_ball(seed: int) -> None:
    """The primal problem, checked independently: ``max_d min_i g_iᵀd`` s.t. ``‖d − g0‖ ≤ c‖g0‖``."""
    c, k, dim = 0.5, 3, 5
    grads = random_grads(100 + seed, k, dim, conflict=seed % 2 == 0).float()
    weighting = make("cagrad", ("a", "b", "c"), c=c, rescale=False)
    d, weights = weighting.aggregate(grads, torch.ones(k), BalanceContext(0, []))
    assert torch.allclose(d, weights @ grads)
    g = grads.double()
    d = d.double()
    g0 = g.mean(0)
    radius = c * float(g0.norm())
    assert float((d - g0).norm()) <= radius * (1 + 1e-4)
    worst = float((g @ d).min())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3000):  # no point of the ball's surface does better
        u = torch.randn(dim, generator=gen, dtype=torch.float64)
        candidate = g0 + radius * u / u.norm()
        assert float((g @ candidate).min()) <= worst + 1e-4 * (1 + abs(worst))


def test_cagrad_rescale_and_c_zero() -> None:
    grads = random_grads(3, 3, 7).float()
    context = BalanceContext(0, [])
    d0, w0 = make("cagrad", ("a", "b", "c"), c=0.0).aggregate(grads, torch.ones(3), context)
    assert torch.allclose(w0, torch.full((3,), 1 / 3)) and torch.allclose(d0, grads.mean(0), atol=1e-6)
    d1, w1 = make("cagrad", ("a", "b", "c"), c=0.4).aggregate(grads, torch.ones(3), context)
    d2, w2 = make("cagrad", ("a", "b", "c"), c=0.4, rescale=False).aggregate(grads, torch.ones(3), context)
    assert torch.allclose(w1 * (1 + 0.4**2), w2, atol=1e-6)
    assert torch.allclose(d1 * (1 + 0.4**2), d2, atol=1e-5)


def test_cagrad_falls_back_to_the_exact_search_and_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.optimize

    from crosstask.weighting import cagrad

    grads = random_grads(7, 3, 4, conflict=True)
    m = grads @ grads.T
    expected = cagrad_solve(m, 0.4)

    class Stuck:  # an SLSQP run that never moved
        def __init__(self, start):
            self.x, self.message = start, "stuck"

    monkeypatch.setattr(scipy.optimize, "minimize", lambda fun, x0, **kw: Stuck(x0))
    fallback = cagrad_solve(m, 0.4)
    assert torch.allclose(fallback.coefficients, expected.coefficients, atol=1e-5)
    monkeypatch.setattr(cagrad, "_search_radius", lambda a, b, s: torch.full((3,), 1 / 3).numpy())
    with pytest.raises(SolverError, match="did not converge"):
        cagrad_solve(m, 0.4)
    with pytest.raises(SolverError, match=r"'cagrad' at step 5.*NaN"):
        make("cagrad").aggregate(torch.full((2, 3), float("nan")), torch.ones(2), BalanceContext(4, []))


def test_cagrad_when_the_optimum_has_no_dual_direction() -> None:
    """g1 = −g2 and g3 ⟂ g1: the dual optimum is g_w = 0 and d is found from the primal."""
    grads = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.3]], dtype=torch.float64)
    solution = cagrad_solve(grads @ grads.T, 0.4)
    d = solution.coefficients @ grads
    g0 = grads.mean(0)
    assert float((d - g0).norm()) <= 0.4 * float(g0.norm()) * (1 + 1e-6)
    assert float((grads @ d).min()) == pytest.approx(0.0, abs=1e-8)  # the best worst case is 0 here
    assert solution.gap <= 1e-8


# ----------------------------------------------------------------------------- IMTL


@pytest.mark.parametrize(("seed", "k"), [(s, k) for s in range(4) for k in (2, 3, 5)])
def test_imtl_g_projections_on_all_unit_gradients_are_equal(seed: int, k: int) -> None:
    grads = random_grads(seed, k, 12, conflict=seed % 2 == 1)
    alpha = imtl_g_weights(grads @ grads.T)
    d = alpha @ grads
    units = grads / grads.norm(dim=1, keepdim=True)
    projections = units @ d
    assert float(alpha.sum()) == pytest.approx(1.0)
    assert torch.allclose(projections, projections[0].expand(k), rtol=1e-8, atol=1e-10)
    # the paper's closed form on the raw vectors: α_{2..K} = g_1 Uᵀ (D Uᵀ)⁻¹
    diff, unit_diff = grads[0] - grads[1:], units[0] - units[1:]
    rest = grads[0] @ unit_diff.T @ torch.linalg.inv(diff @ unit_diff.T)
    assert torch.allclose(alpha[1:], rest, atol=1e-8)


def test_imtl_g_leaves_out_zero_gradients_and_fails_loudly() -> None:
    grads = random_grads(1, 3, 6)
    grads[1] = 0
    alpha = imtl_g_weights(grads @ grads.T)
    assert alpha[1] == 0 and float(alpha.sum()) == pytest.approx(1.0)
    d = alpha @ grads
    assert float(grads[0] @ d / grads[0].norm()) == pytest.approx(float(grads[2] @ d / grads[2].norm()))
    with pytest.raises(SolverError, match=r"'imtl' at step 3.*NaN"):
        make("imtl").aggregate(torch.full((2, 3), float("nan")), torch.ones(2), BalanceContext(2, []))


def test_imtl_hybrid_learns_loss_scales_and_balances_the_scaled_gradients() -> None:
    theta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    centers, scales = (
        torch.randn(3, 4, dtype=torch.float64),
        torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64),
    )
    weighting = make("imtl", ("a", "b", "c"))
    assert weighting.config.mode == "hybrid"
    s = weighting.params["log_scale"]
    with torch.no_grad():
        s.copy_(torch.tensor([0.3, -0.5, 1.0]))
    losses = quadratic_losses(theta, centers, scales)
    applied = balance(weighting, losses, BalanceContext(0, [theta]))
    values = torch.stack([v.detach() for v in losses.values()]).float()
    assert torch.allclose(s.grad, torch.exp(s.detach()) * values - 1, atol=1e-5)  # ∂(e^s L − s)/∂s
    raw = torch.stack([2 * scales[i] * (theta.detach() - centers[i]) for i in range(3)])
    weights = torch.stack([applied[n] for n in "abc"]).double()
    assert torch.allclose(theta.grad, weights @ raw, atol=1e-5)
    # unit gradients do not depend on the scales: the projections on the raw ones are equal too
    projections = (raw / raw.norm(dim=1, keepdim=True)) @ theta.grad
    assert torch.allclose(projections, projections[0].expand(3), rtol=1e-5)
    clone = make("imtl", ("a", "b", "c"))
    clone.load_state_dict(weighting.state_dict())
    assert torch.equal(clone.params["log_scale"], s)


def test_imtl_gradient_mode_has_no_learned_scales() -> None:
    weighting = make("imtl", mode="gradient")
    assert len(list(weighting.params.parameters())) == 0


# ----------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize(("seed", "k"), [(s, k) for s in range(4) for k in (2, 3, 5)])
def test_aligned_mtl_gradients_have_condition_number_one(seed: int, k: int) -> None:
    grads = random_grads(seed, k, 10, conflict=seed % 2 == 0)
    aligned = alignment_matrix(grads @ grads.T) @ grads
    singular = torch.linalg.svdvals(aligned)
    smallest = torch.linalg.svdvals(grads).min()
    assert torch.allclose(singular, smallest.expand(k), rtol=1e-6)  # all equal to σ_min(G): κ = 1
    assert torch.allclose(aligned @ aligned.T, smallest**2 * torch.eye(k, dtype=torch.float64), atol=1e-8)


def test_aligned_mtl_handles_dependent_gradients_and_sums_with_preferences() -> None:
    grads = random_grads(5, 3, 8)
    grads[2] = grads[0] + grads[1]
    aligned = alignment_matrix(grads @ grads.T) @ grads
    singular = torch.linalg.svdvals(aligned)
    nonzero = torch.linalg.svdvals(grads)[:2].min()
    assert torch.allclose(singular[:2], nonzero.expand(2), rtol=1e-6) and float(singular[2]) < 1e-6
    weighting = make("aligned_mtl", ("a", "b", "c"), preferences={"b": 2.0})
    d, weights = weighting.aggregate(grads.float(), torch.ones(3), BalanceContext(0, []))
    expected = aligned[0] + 2 * aligned[1] + aligned[2]
    assert torch.allclose(d.double(), expected, atol=1e-4) and torch.allclose(d, weights @ grads.float())
    with pytest.raises(ConfigError, match="no loss 'z'"):
        make("aligned_mtl", preferences={"z": 1.0})


# ----------------------------------------------------------------------------- DB-MTL


def test_db_mtl_rescales_moving_averages_of_log_loss_gradients_to_the_largest_norm() -> None:
    centers, scales = torch.randn(3, 5), torch.tensor([1.0, 10.0, 0.1])
    weighting = make("db_mtl", ("a", "b", "c"))
    beta = weighting.config.beta
    assert beta == 0.9 and weighting.config.beta_sigma == 0.0
    average = torch.zeros(3, 5)
    theta0 = torch.randn(5)
    for step in range(3):
        theta = (theta0 + 0.1 * step).requires_grad_()
        losses = quadratic_losses(theta, centers, scales)
        applied = balance(weighting, losses, BalanceContext(step, [theta]))
        log_grads = torch.stack(
            [2 * scales[i] * (theta.detach() - centers[i]) / losses[n].detach() for i, n in enumerate("abc")]
        )
        average = beta * average + (1 - beta) * log_grads
        norms = average.norm(dim=1)
        expected = ((norms.max() / norms)[:, None] * average).sum(0)
        assert torch.allclose(theta.grad, expected, rtol=1e-4, atol=1e-6), step
        rescaled = torch.stack([applied[n] for n in "abc"])[:, None] * average
        assert torch.allclose(rescaled.norm(dim=1), norms.max().expand(3), rtol=1e-5)
    assert weighting.steps == 3


def test_db_mtl_state_round_trips_and_accumulation_moves_the_average_once() -> None:
    centers, scales = torch.randn(2, 4), torch.tensor([1.0, 3.0])
    first = make("db_mtl")
    theta = torch.randn(4, requires_grad=True)
    balance(first, quadratic_losses(theta, centers, scales), BalanceContext(0, [theta]))
    second = make("db_mtl")
    second.load_state_dict(first.state_dict())
    assert second.steps == 1 and torch.equal(second.average, first.average)
    theta.grad = None
    balance(first, quadratic_losses(theta, centers, scales), BalanceContext(1, [theta]))
    expected = theta.grad.clone()
    theta.grad = None
    balance(second, quadratic_losses(theta, centers, scales), BalanceContext(1, [theta]))
    assert torch.equal(theta.grad, expected)

    accumulating = make("db_mtl")
    before = None
    for micro in range(2):  # two micro-batches with the losses halved, as the trainer does
        losses = {n: v / 2 for n, v in quadratic_losses(theta, centers, scales).items()}
        balance(accumulating, losses, BalanceContext(0, [theta], micro_step=micro, accumulate=2))
        if micro == 0:
            before = accumulating.average.clone()
    assert accumulating.steps == 1 and torch.equal(before, torch.zeros_like(before))
    assert torch.allclose(accumulating.average, make_average(theta, centers, scales, 0.9), rtol=1e-5)


def make_average(theta, centers, scales, beta) -> torch.Tensor:
    losses = quadratic_losses(theta.detach(), centers, scales)
    return torch.stack(
        [(1 - beta) * 2 * scales[i] * (theta.detach() - centers[i]) / losses[n] for i, n in enumerate(losses)]
    )


def test_db_mtl_refuses_negative_losses_and_the_representation() -> None:
    theta = torch.randn(3, requires_grad=True)
    losses = {"a": theta.sum() - 100.0, "b": theta.pow(2).sum()}
    with pytest.raises(SolverError, match=r"'db_mtl' at step 1.*a is negative"):
        balance(make("db_mtl"), losses, BalanceContext(0, [theta]))
    with pytest.raises(ConfigError, match="on: parameters"):
        make("db_mtl", on="representation")


# ----------------------------------------------------------------------------- GradVac


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


@pytest.mark.parametrize("seed", range(6))
def test_gradvac_lifts_a_pair_below_its_target_to_the_target(seed: int) -> None:
    grads = random_grads(seed, 2, 8)
    target = min(0.95, cosine(grads[0], grads[1]) + 0.3)
    targets = torch.full((2, 2), target, dtype=torch.float64)
    coefficients, cosines, seen = gradvac_coefficients(grads @ grads.T, targets, [[1], [0]])
    modified = coefficients @ grads
    assert cosine(modified[0], grads[1]) == pytest.approx(target, abs=1e-9)
    assert cosine(modified[1], grads[0]) == pytest.approx(target, abs=1e-9)
    assert bool(seen[0, 1]) and float(cosines[0, 1]) == pytest.approx(cosine(grads[0], grads[1]))
    # a pair already above its target is left alone
    low = torch.full((2, 2), cosine(grads[0], grads[1]) - 0.1, dtype=torch.float64)
    untouched, _, _ = gradvac_coefficients(grads @ grads.T, low, [[1], [0]])
    assert torch.equal(untouched, torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_gradvac_with_zero_targets_is_pcgrad(seed: int) -> None:
    grads = random_grads(seed, 4, 6, conflict=True)
    orders = [
        [j for j in torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist() if j != i]
        for i in range(4)
    ]
    m = grads @ grads.T
    ours, _, _ = gradvac_coefficients(m, torch.zeros(4, 4, dtype=torch.float64), orders)
    assert torch.allclose(ours, pcgrad_coefficients(m, orders), atol=1e-9)


def test_gradvac_targets_follow_the_cosines_once_per_step_and_round_trip() -> None:
    grads = random_grads(2, 2, 5).float()
    weighting = make("gradvac")
    assert weighting.config.beta == 0.01 and torch.equal(weighting.targets, torch.zeros(2, 2))
    weighting.aggregate(grads, torch.ones(2), BalanceContext(0, [], micro_step=0, accumulate=2))
    assert torch.equal(
        weighting.targets, torch.zeros(2, 2, dtype=torch.float64)
    )  # not before the last micro-step
    weighting.aggregate(grads, torch.ones(2), BalanceContext(0, [], micro_step=1, accumulate=2))
    phi = cosine(grads[0].double(), grads[1].double())
    expected = torch.tensor([[0.0, 0.01 * phi], [0.01 * phi, 0.0]], dtype=torch.float64)
    assert torch.allclose(weighting.targets, expected, atol=1e-7)
    clone = make("gradvac")
    clone.load_state_dict(weighting.state_dict())
    assert torch.equal(clone.targets, weighting.targets)


# ----------------------------------------------------------------------------- GradDrop


def test_graddrop_keeps_one_sign_per_element_chosen_by_purity() -> None:
    gen = torch.Generator().manual_seed(0)
    k, batch, features = 3, 4, 50
    activation = torch.randn(batch, features, generator=gen)
    grads = torch.randn(k, batch, features, generator=gen)
    grads[:, :, 0] = activation[:, 0].sign()  # every loss pushes the element up: purity 1
    uniform = torch.rand(features, generator=gen)
    mask = graddrop_mask(grads, activation, uniform)
    signed = (grads * activation.sign()).sum(1)
    assert bool(mask[:, 0].all())  # a pure element keeps every gradient, whatever U
    for f in range(features):
        purity = 0.5 * (1 + signed[:, f].sum() / signed[:, f].abs().sum())
        for i in range(k):
            keep = (purity > uniform[f] and signed[i, f] > 0) or (purity < uniform[f] and signed[i, f] < 0)
            assert bool(mask[i, f]) == bool(keep)
        kept = signed[mask[:, f].bool(), f]
        assert bool((kept > 0).all()) or bool((kept < 0).all())  # one sign survives


def test_graddrop_direction_uses_the_global_rng_and_the_leak() -> None:
    shared = torch.randn(4, 6)
    grads = torch.randn(2, 24)
    weighting = make("graddrop")
    assert weighting.config.on == "representation"
    torch.manual_seed(3)
    d, weights = weighting.aggregate(grads, torch.ones(2), BalanceContext(0, [], shared=shared))
    torch.manual_seed(3)
    mask = graddrop_mask(grads.view(2, 4, 6), shared, torch.rand(6))
    assert torch.allclose(d, (grads.view(2, 4, 6) * mask[:, None, :]).sum(0).reshape(-1))
    assert torch.equal(weights, torch.ones(2))
    leaky = make("graddrop", leak={"a": 1.0, "b": 1.0})
    d, _ = leaky.aggregate(grads, torch.ones(2), BalanceContext(0, [], shared=shared))
    assert torch.allclose(d, grads.sum(0))


def test_graddrop_on_parameters_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weighting.on"):
        ct.run(tiny_config(tmp_path, weighting={"name": "graddrop", "on": "parameters"}))
    with pytest.raises(ConfigError, match="no loss 'z'"):
        make("graddrop", leak={"z": 0.5})


# ----------------------------------------------------------------------------- GradNorm


def test_gradnorm_moves_the_weights_toward_equal_weighted_gradient_norms() -> None:
    theta = torch.zeros(4, requires_grad=True)
    centers, scales = torch.randn(2, 4), torch.tensor([1.0, 20.0])
    weighting = make("gradnorm", lr=0.001)
    assert weighting.config.alpha == 1.5
    raw_norms = torch.stack([2 * scales[i] * (theta.detach() - centers[i]) for i in range(2)]).norm(dim=1)
    gaps = []
    for step in range(60):  # θ fixed: the loss ratios stay 1, the target is the mean weighted norm
        theta.grad = None
        before = weighting.weights.clone()
        losses = quadratic_losses(theta, centers, scales)
        applied = balance(weighting, losses, BalanceContext(step, [theta]))
        assert torch.equal(torch.stack([applied["a"], applied["b"]]), before)
        expected = sum(before[i] * 2 * scales[i] * (theta.detach() - centers[i]) for i in range(2))
        assert torch.allclose(theta.grad, expected, atol=1e-5)  # the model gets ∇ Σ w_i L_i
        assert float(weighting.weights.sum()) == pytest.approx(2.0)
        weighted = weighting.weights * raw_norms
        gaps.append(float((weighted[0] - weighted[1]).abs()))
    assert weighting.weights[0] > 1 > weighting.weights[1]
    assert max(gaps[-10:]) < 0.2 * gaps[0]  # it oscillates around the balance by about lr·‖g‖²


def test_gradnorm_state_round_trips_and_accumulation_updates_once() -> None:
    theta = torch.randn(3, requires_grad=True)
    centers, scales = torch.randn(2, 3), torch.tensor([1.0, 4.0])
    weighting = make("gradnorm")
    balance(weighting, quadratic_losses(theta, centers, scales), BalanceContext(0, [theta]))
    clone = make("gradnorm")
    clone.load_state_dict(weighting.state_dict())
    assert torch.equal(clone.weights, weighting.weights) and torch.equal(clone.initial, weighting.initial)
    theta2 = (theta.detach() + 0.3).requires_grad_()
    for w in (weighting, clone):
        balance(w, quadratic_losses(theta2, centers, scales), BalanceContext(1, [theta2]))
    assert torch.equal(clone.weights, weighting.weights)

    accumulating = make("gradnorm")
    losses = {n: v / 2 for n, v in quadratic_losses(theta, centers, scales).items()}
    balance(accumulating, losses, BalanceContext(0, [theta], micro_step=0, accumulate=2))
    assert torch.equal(accumulating.weights, torch.ones(2)) and accumulating.initial is None
    losses = {n: v / 2 for n, v in quadratic_losses(theta, centers, scales).items()}
    balance(accumulating, losses, BalanceContext(0, [theta], micro_step=1, accumulate=2))
    assert torch.allclose(accumulating.weights, make_first_update(theta, centers, scales), atol=1e-6)


def make_first_update(theta, centers, scales) -> torch.Tensor:
    """GradNorm's first update on its own: the ratios are 1, so the target is the mean norm."""
    norms = torch.stack([2 * scales[i] * (theta.detach() - centers[i]) for i in range(2)]).norm(dim=1)
    w = torch.ones(2) - 0.025 * torch.sign(norms - norms.mean()) * norms
    w = w.clamp_min(1e-6)
    return w * 2 / w.sum()


def test_gradnorm_on_representation_uses_the_representation_norms() -> None:
    x = torch.randn(8, 3)
    layer = torch.nn.Linear(3, 4)
    z = layer(x)
    heads = torch.randn(2, 4)
    losses = {"a": (z @ heads[0]).pow(2).mean(), "b": 5 * (z @ heads[1]).pow(2).mean()}
    weighting = make("gradnorm", on="representation")
    balance(weighting, losses, BalanceContext(0, list(layer.parameters()), shared=z))
    assert layer.weight.grad is not None
    assert not math.isclose(float(weighting.weights[0]), 1.0)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "weighting",
    [
        {"name": "db_mtl"},
        {"name": "gradvac", "on": "representation", "beta": 0.5},  # targets that move within 16 steps
        {"name": "gradnorm"},
        {"name": "imtl"},
        {"name": "graddrop"},
    ],
    ids=lambda w: w["name"],
)
def test_stateful_weightings_resume_to_the_same_model(tmp_path: Path, weighting: dict) -> None:
    """Moving averages, targets, learned weights, loss scales and the RNG all survive a checkpoint."""
    base = tiny_config(
        tmp_path,
        weighting=weighting,
        **{"train.steps": 16, "train.eval_every": 8, "train.deterministic": True, "data.eval": {}},
    )
    full = ct.run({**base, "name": "full"})
    ct.run({**base, "name": "part", "train": {**base["train"], "steps": 8}})
    resumed = ct.run({**base, "name": "part"}, resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
