"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu 2021, "Conflict-Averse Gradient
Descent for Multi-task Learning", NeurIPS).

The update ``d`` maximizes the worst per-loss improvement ``min_i g_iᵀd`` within a ball around the mean
gradient ``g0``: ``‖d − g0‖ ≤ c‖g0‖``. Its dual (their Algorithm 1) is a small problem on the simplex,

    w* = argmin_{w ∈ Δ} F(w),   F(w) = g_wᵀg0 + √φ·‖g_w‖,   g_w = Σ_i w_i g_i,   φ = c²‖g0‖²,

and the direction is ``d = g0 + (√φ / ‖g_w‖)·g_w``, divided by ``1 + c²`` when ``rescale`` is on (the
rescaling of their released code, on by default there). ``c = 0`` is the mean gradient; a large ``c``
approaches MGDA. Everything runs on the K × K Gram matrix ``M``: ``g_wᵀg0 = wᵀM1/K`` and
``‖g_w‖² = wᵀMw``. The dual is solved with SLSQP (scipy); every answer is certified by the
primal-dual gap (weak duality: ``min_i g_iᵀd ≤ F(w)`` for every ``d`` in the ball and ``w`` on the simplex,
with equality only at the optimum), accepted below 1e-8 of the largest squared gradient norm. Where
SLSQP stalls (near ``g_w = 0``, where the norm is not smooth) an exact search takes over: for a fixed
radius ``t`` the dual is a min-norm point of shifted gradients (exact non-negative least squares), and the
best ``t`` is found by a bounded scalar search. Where the optimum has ``g_w = 0`` exactly (the formula for
``d`` is then undefined), the primal is solved directly. An answer that still fails the certificate raises
:class:`SolverError`. The logged weights are the coefficients of ``d`` on the rows,
``(1/K + √φ/‖g_w‖·w_i) / (1 + c²)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram, min_norm_point

GAP_TOLERANCE = 1e-8  # duality gap accepted, relative to the largest squared gradient norm


class CAGradConfig(GradientWeightingConfig):
    c: float = Field(
        default=0.4,
        ge=0.0,
        description="radius of the ball around the mean gradient, relative to its norm (the paper's c; 0.4 "
        "in their NYU-v2 and CityScapes experiments). 0 gives the mean gradient",
    )
    rescale: bool = Field(
        default=True, description="divide the direction by 1 + c² (as in the authors' released code)"
    )


class CAGradSolution(NamedTuple):
    coefficients: Tensor  # d = Σ_i coefficients_i g_i, before the rescaling
    dual: Tensor  # the simplex weights w of the dual problem
    gap: float  # dual value − primal value (≥ 0; 0 at the optimum), relative to max_i ‖g_i‖²


def _dual_value(w: np.ndarray, a: np.ndarray, b: np.ndarray, s: float) -> tuple[float, np.ndarray]:
    """``F(w) = bᵀw + s·√(wᵀAw)`` and its gradient (the norm smoothed at 0 by a negligible constant)."""
    aw = a @ w
    norm = math.sqrt(max(float(w @ aw), 0.0) + 1e-30)
    return float(b @ w) + s * norm, b + s * aw / norm


def _primal_from_dual(w: np.ndarray, a: np.ndarray, s: float) -> np.ndarray | None:
    """The coefficients of ``d = g0 + s·g_w/‖g_w‖`` (None where ``g_w`` is 0 and the formula says nothing)."""
    k = len(w)
    norm = math.sqrt(max(float(w @ a @ w), 0.0))
    if norm <= 1e-12:
        return None
    return np.full(k, 1.0 / k) + (s / norm) * w


def _primal_value(beta: np.ndarray | None, a: np.ndarray, s: float) -> float:
    """``min_i g_iᵀd`` for ``d = Σ β_i g_i``, or -inf when ``d`` leaves the ball ``‖d − g0‖ ≤ s``."""
    if beta is None:
        return -math.inf
    offset = beta - 1.0 / len(beta)
    if float(offset @ a @ offset) > s * s * (1 + 1e-6) + 1e-15:
        return -math.inf
    return float((a @ beta).min())


def cagrad_solve(m: Tensor, c: float) -> CAGradSolution:
    """CAGrad's direction for the Gram matrix ``m`` (float64), with a certificate of optimality.

    The dual ``min_{w∈Δ} F(w)`` and the primal ``max_{‖d − g0‖ ≤ c‖g0‖} min_i g_iᵀd`` bound each other
    (``min_i g_iᵀd ≤ F(w)`` for every feasible pair), so their difference certifies both. The dual is solved
    with SLSQP, then, if the certificate fails, by an exact search over the radius ``‖g_w‖``; where the
    dual solution has ``g_w = 0`` (its direction is undefined) the primal is solved directly. The problem
    is scaled by the largest squared gradient norm, so the tolerance is relative. Raises
    :class:`SolverError` when no certified solution is found.
    """
    k = m.shape[0]
    if not bool(torch.isfinite(m).all()):
        raise SolverError("CAGrad solver: the gradients hold NaN/inf")
    uniform = np.full(k, 1.0 / k)
    scale = float(m.diagonal().max())
    a = (m.double() / scale).numpy() if scale > 0 else np.zeros((k, k))
    b = a.mean(axis=1)  # M g0 (g0 = mean gradient), scaled
    s = c * math.sqrt(max(float(a.mean()), 0.0))
    if s == 0.0:  # c = 0 or g0 = 0: the ball is the point g0
        return CAGradSolution(torch.from_numpy(uniform), torch.from_numpy(uniform), 0.0)

    from scipy.optimize import minimize

    def certified(w: np.ndarray, beta: np.ndarray | None) -> float:
        return _dual_value(w, a, b, s)[0] - _primal_value(beta, a, s)

    result = minimize(
        lambda w: _dual_value(w, a, b, s),
        uniform,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None) if np.all(np.isfinite(result.x)) else uniform
    w = w / w.sum()
    beta = _primal_from_dual(w, a, s)
    if certified(w, beta) > GAP_TOLERANCE:  # SLSQP stalls where ‖g_w‖ is nearly 0
        w = _search_radius(a, b, s)
        beta = _primal_from_dual(w, a, s)
    if certified(w, beta) > GAP_TOLERANCE:  # g_w = 0 at the optimum: the primal tells the direction
        beta = _solve_primal(a, s, uniform if beta is None else beta)
    gap = certified(w, beta)
    if not gap <= GAP_TOLERANCE:
        raise SolverError(
            f"CAGrad solver did not converge (duality gap {gap:.3g} > {GAP_TOLERANCE:g}; SLSQP: "
            f"{result.message})"
        )
    assert beta is not None
    return CAGradSolution(torch.from_numpy(beta), torch.from_numpy(w), gap)


def _search_radius(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """The dual solution through its smooth equivalent ``min_{t>0} min_w bᵀw + (s/2)(wᵀAw/t + t)``.

    For a fixed ``t`` the inner problem is the min-norm point of the convex hull of the shifted
    gradients ``g_i + (t/s)·g0`` (as ``Σ w_i = 1``), solved exactly by :func:`min_norm_point` on the
    shifted Gram matrix; the outer function of ``t`` is convex (a partial minimum of a perspective), and its
    minimizer ``t* = ‖g_w*‖`` lies in ``[0, max_i ‖g_i‖]``: a bounded scalar search.
    """
    from scipy.optimize import minimize_scalar

    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    g0_sq = float(a.mean())

    def inner(t: float) -> np.ndarray:
        r = t / s
        return min_norm_point(at + r * (bt[:, None] + bt[None, :]) + r * r * g0_sq).numpy()

    def outer(t: float) -> float:
        w = inner(t)
        return float(b @ w) + 0.5 * s * (float(w @ a @ w) / t + t)

    upper = math.sqrt(float(a.diagonal().max()))
    result = minimize_scalar(outer, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-12})
    return inner(float(result.x))


def _solve_primal(a: np.ndarray, s: float, start: np.ndarray) -> np.ndarray:
    """``max_{β, t} t`` s.t. ``(Aβ)_i ≥ t`` and ``(β − 1/K)ᵀA(β − 1/K) ≤ s²`` (SLSQP), the direction's
    coefficients ``β``."""
    from scipy.optimize import minimize

    k = a.shape[0]
    center = np.full(k, 1.0 / k)

    def ball(x: np.ndarray) -> float:
        offset = x[:k] - center
        return s * s - float(offset @ a @ offset)

    def ball_jac(x: np.ndarray) -> np.ndarray:
        return np.append(-2 * a @ (x[:k] - center), 0.0)

    x0 = np.append(start, float((a @ start).min()))
    result = minimize(
        lambda x: (-x[k], np.append(np.zeros(k), -1.0)),
        x0,
        jac=True,
        method="SLSQP",
        constraints=[
            {
                "type": "ineq",
                "fun": lambda x: a @ x[:k] - x[k],
                "jac": lambda x: np.hstack([a, -np.ones((k, 1))]),
            },
            {"type": "ineq", "fun": ball, "jac": ball_jac},
        ],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x[:k] if np.all(np.isfinite(result.x)) else start


@WEIGHTINGS.register("cagrad", config=CAGradConfig)
class CAGrad(GradientWeighting):
    """Best worst-case improvement within a ball around the mean gradient (Liu et al. 2021)."""

    config: CAGradConfig

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        try:
            weights = cagrad_solve(gram(grads), self.config.c).coefficients
        except SolverError as exc:
            raise SolverError(
                f"weighting 'cagrad' at step {context.step + 1}: {exc}. Check the losses for NaN/inf, or "
                "try another c"
            ) from None
        if self.config.rescale:
            weights = weights / (1 + self.config.c**2)
        weights = weights.to(grads.device, grads.dtype)
        return weights @ grads, weights
