"""FairGrad: α-fair allocation of the update among the tasks (Ban & Ji 2024, "Fair Resource Allocation in
Multi-Task Learning", ICML).

The update ``d`` maximizes the α-fair utility ``Σ_i u_α(g_i·d)`` of the per-task loss decreases within a
ball; its optimality conditions give ``d = Σ w_i g_i`` with weights ``w > 0`` solving
``(G Gᵀ) w = w^(−1/α)`` element-wise (their Equation 4). ``α`` picks the fairness: α → 0 maximizes the
total decrease, α = 1 is proportional fairness (the Nash-MTL equations ``w_i (Mw)_i = 1``), α = 2 minimizes
potential delay, α → ∞ is max-min fairness.

We solve the equations exactly, in float64, by Newton's method on the root system in log space
(multiplicative steps ``w ← w ⊙ (1 + t s)``, so ``w`` stays positive), to
``max_i |w_i^(1/α) (Mw)_i − 1| ≤ tol`` (or, per equation, to the rounding error of ``(Mw)_i`` when that is
larger); anything else raises :class:`~crosstask.errors.SolverError`. The equations are the stationarity
conditions of the strictly concave potential ``Σ u_α(w_i) − ½ wᵀ M w`` (``u_α' (w) = w^(−1/α)``), so the
Newton system is positive definite and a line search on that potential's slope makes the iterations
converge from any start. (A generic root finder does not: ``scipy.optimize.least_squares`` on the log-space
residual, the authors' tool, left the residual far from zero on many random problems with 10-40 tasks in
our trials.) ``M`` is rescaled by ``tr(M)/K`` first (the solution
transforms back exactly: ``w(sM) = s^(−α/(1+α)) w(M)``). As in Nash-MTL, a tiny ``ridge · M_ii`` on the diagonal
keeps the equations solvable when some non-negative combination of the gradients vanishes, and a loss whose
gradient is exactly zero gets weight 0 while the others share the update. Small ``α``
with very unequal gradients makes some ``(Mw)_i`` vanish in rounding: that is a SolverError too.

Defaults follow the authors' code: ``alpha`` 1.0 (their QM9 script uses 2.0), ``max_norm`` 1.0 (the norm of
the direction is capped, as their ``clip_grad_norm_``; 0 disables it). Their code also multiplies the direction
by K before clipping; we apply ``Σ w_i g_i`` as in the paper. Heads and other task-specific parameters receive
the plain gradient of their loss, as for every gradient weighting here. With gradient accumulation over A
micro-batches (whose losses arrive divided by A), each micro-batch solves for the weights of its undivided
losses and adds 1/A of its capped direction.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting
from crosstask.weighting.nash_mtl import RESOLUTION, GramSystemConfig, active_gram, norm_cap
from crosstask.weighting.solvers import gram

EPS = float(np.finfo(np.float64).eps)


class FairGradConfig(GramSystemConfig):
    alpha: float = Field(
        default=1.0,
        ge=0.1,
        le=20.0,
        description="α of α-fairness: 1 proportional (= Nash-MTL), 2 minimum delay, large → max-min "
        "(authors' code default 1.0)",
    )
    tol: float = Field(
        default=1e-9, gt=0.0, le=1e-3, description="solver tolerance on max |w_i^(1/α) (Mw)_i − 1|"
    )
    max_iter: int = Field(default=200, ge=1, description="Newton iterations before a SolverError")


def fair_weights(
    m: Tensor, alpha: float, ridge: float = 1e-8, tol: float = 1e-9, max_iter: int = 200
) -> Tensor:
    """The ``w > 0`` with ``(M'w)_i = w_i^(−1/α)`` for ``M' = M + ridge · diag(M)`` (float64); 0 for losses
    with a zero gradient. SolverError when the iterations do not reach ``tol`` or ``w`` is not finite."""
    what = f"FairGrad solver (alpha={alpha:g})"
    sub, active = active_gram(m, what)
    w = torch.zeros(active.numel(), dtype=sub.dtype)
    if bool(active.any()):
        w[active] = _allocate(
            sub * (1 + ridge * torch.eye(len(sub), dtype=sub.dtype)), alpha, tol, max_iter, what
        )
    return w


def _allocate(m: Tensor, alpha: float, tol: float, max_iter: int, what: str) -> Tensor:
    """Newton iterations for a Gram matrix with a positive diagonal."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    k = m.shape[0]
    scale = float(m.diagonal().sum()) / k
    a = (m / scale).numpy()
    diagonal = np.diag(a).copy()
    inv = 1.0 / alpha

    x = -(alpha / (1 + alpha)) * np.log(diagonal)  # log w: the root when the gradients are orthogonal
    error = float("inf")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        try:
            for _ in range(max_iter):
                w = np.exp(x)
                aw = a @ w
                errors = np.abs(np.exp(inv * x) * aw - 1)  # |w^(1/α) (Aw) − 1|
                error = float(errors.max())
                # what rounding lets us resolve, per equation: the cancellation in (Aw)_i
                floor = 64 * EPS * np.exp(inv * x) * (np.abs(a) @ w)
                if bool((errors <= np.maximum(tol, floor)).all()):
                    if float(floor.max()) > RESOLUTION:  # some (Mw)_i is lost in rounding: d·g_i unknown
                        raise SolverError(
                            f"{what}: the equations cannot be resolved in float64 (relative rounding error up "
                            f"to {float(floor.max()):.3g}): the gradients are (close to) Pareto-stationary, or "
                            "alpha is too small for gradients this unequal; use a larger ridge or alpha"
                        )
                    break
                # relative Newton step s = Δw / w of the system, scaled by w (rows and columns):
                # (W A W + diag(w^(1−1/α)) / α) s = w ⊙ (w^(−1/α) − Aw), positive definite
                w_power = np.exp((1 - inv) * x)
                rhs = w_power - w * aw
                system = a * np.outer(w, w) + np.diag(inv * w_power)
                try:
                    s = cho_solve(cho_factor(system), rhs)
                except LinAlgError:
                    raise SolverError(f"{what}: the Newton system is not positive definite") from None
                # Line search along w(t) = w ⊙ (1 + t s) on the concave potential Σ u_α(w_i) − ½ wᵀAw whose
                # gradient is the system: its slope ψ'(t) = Σ_i s_i (w_i^(1−1/α) (1+t s_i)^(−1/α) − w_i (Aw(t))_i)
                # decreases in t, and ψ'(t) ≥ ψ'(0)/4 implies ψ(t) − ψ(0) ≥ t ψ'(0)/4 (sufficient increase),
                # checked on gradients only, which stay accurate where the potential's values drown in
                # rounding. Fraction to the boundary keeps w > 0.
                slope0 = float(s @ rhs)
                t = 1.0
                if bool((s < 0).any()):
                    t = min(1.0, 0.99 / float((-s[s < 0]).max()))
                for _ in range(60):
                    factor = 1 + t * s
                    wt = w * factor
                    slope = float(s @ (w_power * factor ** (-inv) - w * (a @ wt)))
                    if slope >= 0.25 * slope0:
                        break
                    t *= 0.5
                else:
                    raise SolverError(
                        f"{what}: the line search stalled (residual {error:.3g}); use a larger ridge"
                    )
                x = x + np.log1p(t * s)
            else:
                raise SolverError(
                    f"{what}: no root in {max_iter} Newton iterations (max |w^(1/α)(Mw) − 1| = {error:.3g}); "
                    "the gradients are close to Pareto-stationary: use a larger ridge or max_iter"
                )
        except FloatingPointError as exc:
            raise SolverError(f"{what}: the iterations overflowed ({exc}); use a larger ridge") from None
    w = torch.from_numpy(np.exp(x)) * scale ** (-alpha / (1 + alpha))
    if not (bool(torch.isfinite(w).all()) and bool((w > 0).all())):
        raise SolverError(f"{what}: the weights are not finite and positive ({w.tolist()})")
    return w


@WEIGHTINGS.register("fairgrad", config=FairGradConfig)
class FairGrad(GradientWeighting):
    """α-fair weights solving (G Gᵀ) w = w^(−1/α); α = 1 is Nash-MTL (Ban & Ji 2024)."""

    config: FairGradConfig

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        cfg = self.config
        a = context.accumulate  # the rows are gradients of L_i / A: solve for the losses' own weights
        try:
            w = fair_weights(
                gram(grads) * a**2, cfg.alpha, ridge=cfg.ridge, tol=cfg.tol, max_iter=cfg.max_iter
            )
        except SolverError as exc:
            raise SolverError(
                f"weighting '{self.name}' failed at step {context.step + 1}: {exc}. Check the losses, "
                "raise weighting.ridge or weighting.max_iter, or lower the learning rate"
            ) from exc
        weights = w.to(grads.device, grads.dtype)
        direction = weights @ grads  # 1/A of the step's direction
        factor = norm_cap(direction * a, cfg.max_norm)
        return direction * factor, weights * factor
