"""Nash-MTL: the Nash bargaining solution of the tasks (Navon, Shamsian, Achituve, Maron, Kawaguchi,
Chechik & Fetaya 2022, "Multi-Task Learning as a Bargaining Game", ICML).

The update is ``d = Σ α_i g_i`` with weights ``α > 0`` solving the bargaining equations
``GᵀG α = 1/α`` element-wise (the paper's notation, gradients as columns), i.e. ``α_i (Mα)_i = 1`` with
``M`` the K × K Gram matrix of the per-loss gradients: every task gets ``g_i·d = 1/α_i``, scaling one loss
scales its weight inversely, and ``‖d‖² = Σ α_i (Mα)_i = K`` whatever the gradients' size. These are the
stationarity conditions of the strictly concave problem ``max_{α>0} Σ log α_i − ½ αᵀ M α``, which we solve
*exactly*, in float64, with a damped Newton method (backtracking keeps ``α > 0``) until
``max |α_i (Mα)_i − 1|`` is below ``tol`` (or below the rounding error of ``Mα``, when that is larger and
still under 1e-2). The paper's code approximates the same solution with at most 20
convex-concave iterations of an external conic solver and, when that solver fails, keeps the previous
weights inside a bare ``except``; here a failure raises :class:`~crosstask.errors.SolverError`.

Well-posedness: the problem has a maximum unless some non-negative combination of the gradients vanishes
(a Pareto-stationary point; then ``α`` grows without bound). ``ridge`` adds ``ridge · M_ii`` to each diagonal
entry of ``M`` (as if every gradient had an extra orthogonal component of relative size ``sqrt(ridge)``),
which bounds ``α`` there, keeps the solution's exact invariance to rescaling a loss, and leaves
well-conditioned problems unchanged to ~``ridge``. Before the Newton iterations ``M`` is rescaled to unit
diagonal (``α`` transforms back exactly), so the tolerance means the same whatever the gradients' size. A
loss whose gradient on the shared part is exactly zero (a task with no labels in the batch, a loss that does
not reach the shared part) cannot bargain (``α_i · 0 = 1`` has no solution): it gets weight 0, which changes
nothing in the direction, and the others bargain among themselves.

As in the paper's code: ``max_norm`` caps the norm of the direction (their ``clip_grad_norm_`` of the
shared gradient after the backward pass; 0 disables it), and ``update_every`` recomputes the weights every
N optimizer steps only, reusing the last ones in between (the solve is skipped; the Jacobian is still taken,
so the cap applies to the same direction a solved step would give).
The logged weights are the coefficients actually applied (``α`` times the clipping factor). With gradient
accumulation over A micro-batches (whose losses arrive divided by A), each micro-batch solves for the
weights of its undivided losses and adds 1/A of its capped direction. One deviation,
common to every gradient weighting here: heads and other task-specific parameters receive the plain
gradient of their loss, not ``α_i`` times it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram

EPS = float(np.finfo(np.float64).eps)
RESOLUTION = 1e-2  # converged "to rounding" only counts while rounding blurs the equations by less than this


class GramSystemConfig(GradientWeightingConfig):
    """Keys shared by the weightings that solve a nonlinear system in the Gram matrix (Nash-MTL, FairGrad)."""

    max_norm: float = Field(
        default=1.0, ge=0.0, description="cap on the norm of the direction, 0 for none (authors' code: 1.0)"
    )
    ridge: float = Field(
        default=1e-8,
        ge=0.0,
        le=1e-2,
        description="ridge · M_ii added to the Gram matrix's diagonal: keeps a singular or Pareto-stationary "
        "problem well-posed",
    )


class NashMTLConfig(GramSystemConfig):
    update_every: int = Field(
        default=1, ge=1, description="recompute the weights every N optimizer steps (paper's code: 1)"
    )
    tol: float = Field(default=1e-10, gt=0.0, le=1e-3, description="solver tolerance on max |α_i (Mα)_i − 1|")
    max_iter: int = Field(default=100, ge=1, description="Newton iterations before a SolverError")


def active_gram(m: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """The float64 Gram matrix restricted to the losses with a non-zero gradient, and their mask; SolverError
    when ``M`` holds NaN/inf."""
    m = m.double()
    if not bool(torch.isfinite(m).all()):
        raise SolverError(f"{what}: the gradients hold NaN/inf")
    active = m.diagonal() > 0
    return m[active][:, active], active


def bargaining_weights(m: Tensor, ridge: float = 1e-8, tol: float = 1e-10, max_iter: int = 100) -> Tensor:
    """The ``α > 0`` with ``α_i (M'α)_i = 1`` for ``M' = M + ridge · diag(M)``, exactly (damped Newton on
    ``max Σ log α_i − ½ αᵀM'α``, float64); 0 for losses with a zero gradient. SolverError when it does not
    converge or ``α`` is not finite."""
    what = "Nash-MTL bargaining solver"
    sub, active = active_gram(m, what)
    alpha = torch.zeros(active.numel(), dtype=sub.dtype)
    if bool(active.any()):
        alpha[active] = _bargain(
            sub * (1 + ridge * torch.eye(len(sub), dtype=sub.dtype)), tol, max_iter, what
        )
    return alpha


def _bargain(m: Tensor, tol: float, max_iter: int, what: str) -> Tensor:
    """Damped Newton for a Gram matrix with a positive diagonal (numpy: K × K work, no thread start-ups)."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    d = np.sqrt(m.diagonal().numpy())
    c = m.numpy() / d[:, None] / d[None, :]  # unit diagonal; the solution for M is β / d
    abs_c = np.abs(c)

    def objective(x: np.ndarray) -> float:
        return float(np.log(x).sum() - 0.5 * x @ c @ x)

    beta = np.ones(len(c))
    value = objective(beta)
    residual = float("inf")
    for _ in range(max_iter):
        cb = c @ beta
        residual = float(np.abs(beta * cb - 1).max())
        # the residual can be computed no better than this (cancellation in Cβ when gradients conflict)
        floor = 64 * EPS * float((beta * (abs_c @ beta)).max())
        if residual <= max(tol, floor):
            if floor > RESOLUTION:
                raise SolverError(
                    f"{what}: the equations cannot be resolved in float64 (relative rounding error up to "
                    f"{floor:.3g}): the gradients are (close to) Pareto-stationary; use a larger ridge"
                )
            break
        gradient = 1 / beta - cb
        hessian = c + np.diag(beta**-2)  # minus the Hessian: positive definite for β > 0
        try:
            step = cho_solve(cho_factor(hessian), gradient)
        except LinAlgError:
            raise SolverError(
                f"{what}: the Newton system is not positive definite (Gram matrix not PSD?)"
            ) from None
        decrease = float(gradient @ step)  # squared Newton decrement λ², > 0
        if decrease < 0.0625 and bool((beta + step > 0).all()):
            # λ < 1/4: −objective is self-concordant, so the full step is in the quadratic-convergence region
            # (Boyd & Vandenberghe 2004, §9.6); a line search there would only fight rounding errors
            beta = beta + step
            value = objective(beta)
            continue
        t = 1.0
        negative = step < 0
        if bool(negative.any()):  # stay inside β > 0, with a margin
            t = min(1.0, 0.99 * float((-beta[negative] / step[negative]).min()))
        for _ in range(60):
            candidate = beta + t * step
            new_value = objective(candidate)
            if new_value >= value + 0.25 * t * decrease:
                break
            t *= 0.5
        else:
            raise SolverError(
                f"{what}: the line search stalled (residual {residual:.3g}); the Gram matrix is badly "
                "conditioned, use a larger ridge"
            )
        beta, value = candidate, new_value
    else:
        raise SolverError(
            f"{what}: no convergence in {max_iter} Newton iterations (max |α_i (Mα)_i − 1| = {residual:.3g}); "
            "the gradients are close to Pareto-stationary: use a larger ridge or max_iter"
        )
    alpha = torch.from_numpy(beta / d)
    if not (bool(torch.isfinite(alpha).all()) and bool((alpha > 0).all())):
        raise SolverError(f"{what}: the weights are not finite and positive ({alpha.tolist()})")
    return alpha


def norm_cap(direction: Tensor, max_norm: float) -> float:
    """The factor (≤ 1) that brings ``direction``'s norm down to ``max_norm`` (1 when ``max_norm`` is 0)."""
    if max_norm <= 0:
        return 1.0
    norm = float(direction.norm())
    return max_norm / norm if norm > max_norm else 1.0


@WEIGHTINGS.register("nash_mtl", config=NashMTLConfig)
class NashMTL(GradientWeighting):
    """Nash bargaining weights α_i (Mα)_i = 1, solved exactly by Newton's method (Navon et al. 2022)."""

    scale_invariant = True  # g_i → c g_i gives α_i → α_i / c: the direction Σ α_i g_i does not change
    config: NashMTLConfig

    def __init__(self, config: NashMTLConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        self.alpha: Tensor | None = None  # the last solution (float64), reused between updates

    def solve(self, m: Tensor, context: BalanceContext) -> Tensor:
        cfg = self.config
        try:
            return bargaining_weights(m, ridge=cfg.ridge, tol=cfg.tol, max_iter=cfg.max_iter)
        except SolverError as exc:
            raise SolverError(
                f"weighting '{self.name}' failed at step {context.step + 1}: {exc}. Check the losses, "
                "raise weighting.ridge or weighting.max_iter, or lower the learning rate"
            ) from exc

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        # with accumulation the rows are gradients of L_i / A: solve for the losses' own weights (the solution
        # is not linear in the losses) and let each micro-batch add 1/A of its capped direction
        a = context.accumulate
        if self.alpha is None or context.step % self.config.update_every == 0:
            self.alpha = self.solve(gram(grads) * a**2, context)
        weights = self.alpha.to(grads.device, grads.dtype)
        direction = weights @ grads
        factor = norm_cap(direction * a, self.config.max_norm)
        return direction * factor, weights * factor

    def extra_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.clone() if self.alpha is not None else None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        alpha = state.get("alpha")
        self.alpha = None if alpha is None else alpha.double().clone()
