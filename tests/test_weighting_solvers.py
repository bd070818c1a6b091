"""The solver-heavy gradient weightings: Nash-MTL, UPGrad, FairGrad.

Each solver is checked against the property its paper promises (bargaining / α-fair equations, dual-cone
projections) and against an independent computation (a generic constrained optimizer on the primal problem,
KKT certificates); failures must raise SolverError naming the weighting and the step; stateful parts must
survive a state_dict round trip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

import crosstask as ct
from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext
from crosstask.weighting.fairgrad import FairGradConfig, fair_weights
from crosstask.weighting.nash_mtl import NashMTLConfig, bargaining_weights
from crosstask.weighting.upgrad import dual_cone_coefficients
from tests.balancing import balance
from tests.conftest import tiny_config

ALPHAS = [0.5, 1.0, 2.0, 5.0]


def random_grads(seed: int, k: int, dim: int, spread: float = 1.0) -> Tensor:
    """K random gradients in ``dim`` dimensions whose norms differ by factors up to ~e^(±2·spread)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(spread * torch.randn(k, 1, generator=g, dtype=torch.float64))
    return torch.randn(k, dim, generator=g, dtype=torch.float64) * scales


def gram_of(grads: Tensor) -> Tensor:
    return grads @ grads.T


def build(name: str, **config: object):
    entry = WEIGHTINGS.get(name)
    return entry.obj(entry.config(name=name, **config), ["t0", "t1", "t2"])


def utility_maximizer(grads: Tensor, alpha: float, radius: float) -> np.ndarray:
    """``argmax_{‖d‖ ≤ radius} Σ_i u_α(g_i·d)`` by a generic constrained optimizer (SLSQP), from a start that
    is not on the answer's ray: the independent definition behind Nash-MTL (α = 1) and FairGrad."""
    from scipy.optimize import minimize

    g = grads.numpy()

    def utility(t: np.ndarray) -> np.ndarray:
        return np.log(t) if alpha == 1 else t ** (1 - alpha) / (1 - alpha)

    start = np.linalg.pinv(g) @ np.ones(g.shape[0])  # g_i·d equal for every task
    start *= 0.5 * radius / np.linalg.norm(start)
    result = minimize(
        lambda d: -float(utility(np.maximum(g @ d, 1e-12)).sum()),
        start,
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda d: radius**2 - d @ d},
            {"type": "ineq", "fun": lambda d: g @ d - 1e-9},
        ],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    # status 8 ("positive directional derivative for linesearch"): no further progress at machine precision,
    # which BLAS thread counts can trigger at the optimum; the comparison with the answer still decides
    assert result.success or result.status == 8, result.message
    return result.x


# ----------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("seed", range(16))
def test_nash_weights_satisfy_the_bargaining_equations(seed: int) -> None:
    k = 2 + seed % 11
    m = gram_of(random_grads(seed, k, k + seed % 7, spread=1.5))
    exact = bargaining_weights(m, ridge=0.0)
    assert bool((exact > 0).all())
    assert float((exact * (m @ exact) - 1).abs().max()) < 1e-9
    alpha = bargaining_weights(m)  # the default ridge: the equations of M + ridge·diag(M)
    ridged = m + 1e-8 * torch.diag(m.diagonal())
    assert float((alpha * (ridged @ alpha) - 1).abs().max()) < 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_nash_direction_is_the_bargaining_solution(seed: int) -> None:
    """Navon et al.'s Theorem: Σ α_i g_i maximizes Σ log(g_i·d) over the ball; ‖d‖² = Σ α_i (Mα)_i = K."""
    grads = random_grads(seed, 3, 5)
    alpha = bargaining_weights(gram_of(grads), ridge=0.0)
    direction = (alpha @ grads).numpy()
    assert np.linalg.norm(direction) == pytest.approx(math.sqrt(3), rel=1e-9)
    expected = utility_maximizer(grads, 1.0, math.sqrt(3))
    assert np.allclose(direction, expected, rtol=1e-4, atol=1e-5)


def test_nash_weights_scale_inversely_with_a_loss() -> None:
    grads = random_grads(0, 4, 6)
    alpha = bargaining_weights(gram_of(grads), ridge=0.0)
    scaled = grads.clone()
    scaled[2] *= 1000.0
    beta = bargaining_weights(gram_of(scaled), ridge=0.0)
    assert torch.allclose(beta[2] * 1000.0, alpha[2], rtol=1e-8)
    assert torch.allclose(beta @ scaled, alpha @ grads, rtol=1e-8, atol=1e-10)  # same direction


@pytest.mark.parametrize("seed", range(3))
def test_nash_stays_finite_at_a_pareto_stationary_point_thanks_to_the_ridge(seed: int) -> None:
    k = 8
    grads = random_grads(seed, k, 2)  # 8 directions in the plane: 0 is in their convex hull
    m = gram_of(grads)
    alpha = bargaining_weights(m)
    ridged = m + 1e-8 * torch.diag(m.diagonal())
    assert bool(torch.isfinite(alpha).all()) and bool((alpha > 0).all())
    assert float((alpha * (ridged @ alpha) - 1).abs().max()) < 1e-3  # the rounding floor of this problem
    assert float((alpha @ grads).norm()) <= math.sqrt(k) * (1 + 1e-6)
    with pytest.raises(SolverError, match="Pareto-stationary"):
        bargaining_weights(m, ridge=0.0)  # unbounded without it


def test_nash_solver_fails_loudly() -> None:
    with pytest.raises(SolverError, match="NaN"):
        bargaining_weights(torch.full((3, 3), float("nan"), dtype=torch.float64))
    opposite = gram_of(torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64))
    with pytest.raises(SolverError, match="Pareto-stationary"):
        bargaining_weights(opposite, ridge=0.0)
    with pytest.raises(SolverError, match="no convergence"):
        bargaining_weights(gram_of(random_grads(0, 3, 4)), max_iter=1)


@pytest.mark.parametrize("solver", [bargaining_weights, lambda m: fair_weights(m, 2.0)], ids=["nash", "fair"])
def test_a_loss_without_gradient_gets_weight_zero_and_the_others_bargain(solver: Callable) -> None:
    grads = random_grads(6, 4, 5)
    grads[2] = 0.0  # e.g. a task without labels in this batch
    weights = solver(gram_of(grads))
    assert weights[2] == 0
    others = solver(gram_of(grads[[0, 1, 3]]))
    assert torch.allclose(weights[[0, 1, 3]], others, rtol=1e-12)
    assert torch.equal(solver(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))


def test_nash_weighting_names_itself_and_the_step_when_it_fails() -> None:
    weighting = build("nash_mtl", max_iter=1)
    grads = random_grads(1, 3, 6).float()
    with pytest.raises(SolverError, match=r"'nash_mtl' failed at step 5: .*no convergence"):
        weighting.aggregate(grads, torch.ones(3), BalanceContext(4, []))
    grads[1, 0] = float("nan")
    with pytest.raises(SolverError, match=r"'nash_mtl' failed at step 5: .*NaN"):
        build("nash_mtl").aggregate(grads, torch.ones(3), BalanceContext(4, []))


def test_a_solver_error_stops_training(tmp_path: Path) -> None:
    """No fallback anywhere between the solver and the user: the run stops with the solver's message."""
    config = tiny_config(tmp_path, weighting={"name": "nash_mtl", "max_iter": 1}, **{"train.steps": 3})
    with pytest.raises(SolverError, match=r"'nash_mtl' failed at step 1"):
        ct.run(config)


@pytest.mark.parametrize("max_norm", [0.0, 0.05])
def test_nash_caps_the_norm_of_the_direction(max_norm: float) -> None:
    grads = random_grads(2, 3, 8).float()
    direction, weights = build("nash_mtl", max_norm=max_norm).aggregate(
        grads, torch.ones(3), BalanceContext(0, [])
    )
    alpha = bargaining_weights(gram_of(grads.double())).float()
    assert torch.allclose(direction, weights @ grads, atol=1e-6)
    if max_norm == 0:
        assert torch.allclose(weights, alpha, rtol=1e-6)
    else:
        assert float(direction.norm()) == pytest.approx(max_norm, rel=1e-5)
        assert torch.allclose(weights, alpha * max_norm / float((alpha @ grads).norm()), rtol=1e-5)


class Toy:
    """A shared layer, three heads, three losses; ``losses()`` runs a fresh forward pass."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.body = nn.Linear(5, 4)
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(3))
        self.x, self.y = torch.randn(16, 5), torch.randn(16, 3)
        self.z: Tensor | None = None

    def losses(self) -> dict[str, Tensor]:
        self.z = torch.tanh(self.body(self.x))
        return {f"t{i}": (self.heads[i](self.z).squeeze(-1) - self.y[:, i]).pow(2).mean() for i in range(3)}

    def context(self, step: int) -> BalanceContext:
        return BalanceContext(
            step, list(self.body.parameters()), shared=self.z, other_parameters=list(self.heads.parameters())
        )

    def zero_grad(self) -> None:
        for p in [*self.body.parameters(), *self.heads.parameters()]:
            p.grad = None

    def backward(self, weighting, step: int) -> dict[str, Tensor]:
        self.zero_grad()
        losses = self.losses()
        return balance(weighting, losses, self.context(step))

    def weighted_gradient(self, weights: Tensor) -> list[Tensor]:
        losses = torch.stack(list(self.losses().values()))
        return list(torch.autograd.grad((weights * losses).sum(), list(self.body.parameters())))


def grads_of(module: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("on", ["parameters", "representation"])
def test_nash_update_every_reuses_the_weights_and_round_trips_its_state(on: str) -> None:
    toy = Toy()
    weighting = build("nash_mtl", update_every=3, max_norm=0.0, on=on)
    solved = torch.stack(list(toy.backward(weighting, 0).values()))

    applied = torch.stack(list(toy.backward(weighting, 1).values()))  # between updates: the same weights
    assert torch.allclose(applied, solved)
    expected = toy.weighted_gradient(solved)
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads_of(toy.body), expected, strict=True))
    plain = torch.autograd.grad(sum(toy.losses().values()), list(toy.heads.parameters()))
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads_of(toy.heads), plain, strict=True))

    resumed = build("nash_mtl", update_every=3, max_norm=0.0, on=on)
    resumed.load_state_dict(weighting.state_dict())
    toy.backward(weighting, 2)
    before = grads_of(toy.body)
    toy.backward(resumed, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, grads_of(toy.body), strict=True))

    with torch.no_grad():
        toy.body.weight.mul_(-2.0)  # a different model: step 3 solves again
    fresh = torch.stack(list(toy.backward(weighting, 3).values()))
    assert not torch.allclose(fresh, solved)
    alpha = bargaining_weights(gram_of(weighting_jacobian(toy, on))).float()
    assert torch.allclose(fresh, alpha, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "update_every"), [("nash_mtl", 1), ("nash_mtl", 2), ("fairgrad", 1), ("upgrad", 1)]
)
def test_accumulation_adds_a_share_of_the_full_direction(name: str, update_every: int) -> None:
    """With accumulate = A the trainer hands over L_i / A: the logged weights stay those of the losses and the
    micro-batch adds 1/A of the direction (so A identical micro-batches make one plain step)."""
    extra = {"update_every": update_every, "max_norm": 0.5} if name == "nash_mtl" else {}
    toy, plain, split = Toy(seed=3), build(name, **extra), build(name, **extra)
    for step in range(update_every):  # the last step reuses the weights when update_every = 2
        toy.zero_grad()
        expected = balance(plain, toy.losses(), toy.context(step))
        full = grads_of(toy.body)
        toy.zero_grad()
        losses = {n: v / 2 for n, v in toy.losses().items()}
        applied = balance(split, losses, replace(toy.context(step), accumulate=2))
        for n in expected:
            assert torch.allclose(applied[n], expected[n], rtol=1e-5)
        assert all(torch.allclose(g * 2, e, atol=1e-6) for g, e in zip(grads_of(toy.body), full, strict=True))


def test_nash_update_every_resumes_exactly(tmp_path: Path) -> None:
    """The run is split at step 4, between two updates (every 3 steps): the resumed half needs the saved α."""
    weighting = {"name": "nash_mtl", "update_every": 3}
    base = tiny_config(
        tmp_path,
        weighting=weighting,
        **{"train.steps": 8, "train.eval_every": 4, "train.deterministic": True, "data.eval": {}},
    )
    full = ct.run({**base, "name": "full"})
    ct.run({**base, "name": "part", "train": {**base["train"], "steps": 4}})
    resumed = ct.run({**base, "name": "part"}, resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def weighting_jacobian(toy: Toy, on: str) -> Tensor:
    losses = list(toy.losses().values())
    inputs = [toy.z] if on == "representation" else list(toy.body.parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, inputs, retain_graph=True)])
        for loss in losses
    ]
    return torch.stack(rows).double()


# ----------------------------------------------------------------------------- UPGrad


def projections(grads: Tensor) -> tuple[Tensor, Tensor]:
    coefficients = dual_cone_coefficients(gram_of(grads))
    return coefficients, coefficients @ grads


@pytest.mark.parametrize("seed", range(20))
def test_upgrad_projections_lie_in_the_dual_cone_and_are_exact(seed: int) -> None:
    k = 2 + seed % 9
    grads = random_grads(seed, k, 1 + seed % 12)  # also fewer dimensions than gradients
    m = gram_of(grads)
    coefficients, projected = projections(grads)
    norms = grads.norm(dim=1)
    scale = norms[:, None] * norms[None, :]
    dots = projected @ grads.T  # (i, j): proj_i · g_j
    assert bool((dots >= -1e-9 * scale).all())
    # KKT certificate that proj_i = g_i + Gᵀu is THE projection: u ≥ 0, G proj_i ≥ 0, u ⊙ G proj_i = 0
    u = coefficients - torch.eye(k, dtype=m.dtype)
    assert bool((u >= 0).all())
    assert float((u * dots).abs().max()) <= 1e-8 * float(m.diagonal().max())


@pytest.mark.parametrize("seed", range(3))
def test_upgrad_projection_matches_a_generic_solver(seed: int) -> None:
    from scipy.optimize import minimize

    grads = random_grads(seed, 3, 4)
    grads[1] = -grads[0] + 0.3 * grads[1]  # a conflict
    _, projected = projections(grads)
    g = grads.numpy()
    for i in range(3):
        result = minimize(
            lambda x, i=i: float((x - g[i]) @ (x - g[i])),
            np.zeros(4),
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda x: g @ x}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert np.allclose(projected[i].numpy(), result.x, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_upgrad_direction_conflicts_with_no_gradient(seed: int) -> None:
    grads = random_grads(seed, 5, 7).float()
    direction, weights = build("upgrad").aggregate(grads, torch.ones(5), BalanceContext(0, []))
    norms = grads.norm(dim=1)
    assert bool((grads @ direction >= -1e-5 * norms * float(direction.norm() + 1e-12)).all())
    assert torch.allclose(direction, weights @ grads)


@pytest.mark.parametrize("seed", range(5))
def test_upgrad_without_conflict_is_the_mean_gradient(seed: int) -> None:
    grads = random_grads(seed, 4, 6).abs().float()  # positive entries: every pairwise dot is > 0
    direction, weights = build("upgrad").aggregate(grads, torch.ones(4), BalanceContext(0, []))
    assert torch.equal(weights, torch.full((4,), 0.25))
    assert torch.allclose(direction, grads.mean(0))


def test_upgrad_edge_cases() -> None:
    zero = torch.zeros(3, 5)
    direction, weights = build("upgrad").aggregate(zero, torch.ones(3), BalanceContext(0, []))
    assert torch.equal(direction, torch.zeros(5)) and bool(torch.isfinite(weights).all())
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # the dual cone is the g_3 axis
    direction, _ = build("upgrad").aggregate(opposite, torch.ones(3), BalanceContext(0, []))
    assert torch.allclose(direction, torch.tensor([0.0, 1.0]) / 3, atol=1e-6)
    bad = torch.ones(3, 5)
    bad[0, 0] = float("inf")
    with pytest.raises(SolverError, match=r"'upgrad' failed at step 8: .*NaN/inf"):
        build("upgrad").aggregate(bad, torch.ones(3), BalanceContext(7, []))


# ----------------------------------------------------------------------------- FairGrad


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("seed", range(8))
def test_fairgrad_weights_satisfy_the_fairness_equations(alpha: float, seed: int) -> None:
    k = 2 + seed % 11
    m = gram_of(random_grads(seed, k, k + seed % 5, spread=1.0))
    exact = fair_weights(m, alpha, ridge=0.0)
    assert bool((exact > 0).all())
    assert float((exact.pow(1 / alpha) * (m @ exact) - 1).abs().max()) < 1e-8
    w = fair_weights(m, alpha)  # the default ridge: the equations of M + ridge·diag(M)
    ridged = m + 1e-8 * torch.diag(m.diagonal())
    assert float((w.pow(1 / alpha) * (ridged @ w) - 1).abs().max()) < 1e-8


@pytest.mark.parametrize("seed", range(10))
def test_fairgrad_with_alpha_one_is_nash_mtl(seed: int) -> None:
    k = 2 + seed % 11
    m = gram_of(random_grads(seed, k, max(1, k - 2 + seed % 5), spread=1.5))  # singular ones too
    assert torch.allclose(fair_weights(m, 1.0), bargaining_weights(m), rtol=1e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fairgrad_direction_maximizes_the_alpha_fair_utility(alpha: float) -> None:
    grads = random_grads(3, 3, 5)
    w = fair_weights(gram_of(grads), alpha, ridge=0.0)
    direction = (w @ grads).numpy()
    expected = utility_maximizer(grads, alpha, float(np.linalg.norm(direction)))
    assert np.allclose(direction, expected, rtol=1e-4, atol=1e-5 * np.linalg.norm(direction))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fairgrad_weights_follow_the_scaling_law(alpha: float) -> None:
    m = gram_of(random_grads(5, 4, 6))
    assert torch.allclose(
        fair_weights(m * 1e4, alpha), fair_weights(m, alpha) * 1e4 ** (-alpha / (1 + alpha))
    )


def test_fairgrad_fails_loudly() -> None:
    with pytest.raises(SolverError, match="NaN"):
        fair_weights(torch.full((2, 2), float("nan"), dtype=torch.float64), 2.0)
    opposite = gram_of(torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64))
    with pytest.raises(SolverError, match="Pareto-stationary"):
        fair_weights(opposite, 2.0, ridge=0.0)
    with pytest.raises(SolverError, match="no root"):
        fair_weights(gram_of(random_grads(0, 4, 5)), 2.0, max_iter=1)
    grads = random_grads(0, 3, 5).float()
    with pytest.raises(SolverError, match=r"'fairgrad' failed at step 3: .*no root"):
        build("fairgrad", max_iter=1).aggregate(grads, torch.ones(3), BalanceContext(2, []))
    with pytest.raises(ValidationError):
        FairGradConfig(name="fairgrad", alpha=0.0)


def test_fairgrad_applies_the_weights_it_reports() -> None:
    grads = random_grads(4, 3, 6).float()
    for max_norm in (0.0, 0.1):
        direction, weights = build("fairgrad", alpha=2.0, max_norm=max_norm).aggregate(
            grads, torch.ones(3), BalanceContext(0, [])
        )
        assert torch.allclose(direction, weights @ grads, atol=1e-6)
        if max_norm:
            assert float(direction.norm()) == pytest.approx(max_norm, rel=1e-5)


# ----------------------------------------------------------------------------- shared


@pytest.mark.parametrize(
    ("name", "solver"),
    [
        ("nash_mtl", lambda m: bargaining_weights(m)),
        ("fairgrad", lambda m: fair_weights(m, 1.0)),
        ("upgrad", lambda m: dual_cone_coefficients(m).mean(0)),
    ],
)
def test_weightings_apply_their_solver_to_the_gram_matrix(
    name: str, solver: Callable[[Tensor], Tensor]
) -> None:
    toy = Toy(seed=1)
    weighting = build(name, max_norm=0.0) if name != "upgrad" else build(name)
    applied = torch.stack(list(toy.backward(weighting, 0).values()))
    expected = solver(gram_of(weighting_jacobian(toy, "parameters"))).float()
    assert torch.allclose(applied, expected, rtol=1e-5)
    assert all(
        torch.allclose(g, e, atol=1e-6)
        for g, e in zip(grads_of(toy.body), toy.weighted_gradient(expected), strict=True)
    )


def test_configs_validate_their_ranges() -> None:
    for bad in ({"update_every": 0}, {"max_norm": -1.0}, {"ridge": -1e-9}, {"tol": 0.0}):
        with pytest.raises(ValidationError):
            NashMTLConfig(name="nash_mtl", **bad)
