"""UPGrad: the unconflicting projection of gradients (Quinton & Rey 2024, "Jacobian Descent for
Multi-Objective Optimization", arXiv:2406.16232; the ``UPGrad`` aggregator of torchjd).

Each gradient ``g_i`` is projected onto the dual cone of the gradients, ``{x : g_j·x ≥ 0 for every j}``
(the directions that conflict with none of them), and the projections are averaged:
``d = (1/K) Σ_i proj_i``. So ``d`` decreases no loss to first order, and when no two gradients conflict
it is the mean gradient.

In the Gram space (``M = G Gᵀ``) the projection of ``g_i`` is ``Gᵀ v_i`` with
``v_i = argmin_{v ≥ e_i} vᵀ M v`` (the dual of the projection problem). Writing ``v = e_i + u`` with
``u ≥ 0`` and ``M = L Lᵀ``, this is the non-negative least-squares problem
``min_{u ≥ 0} ‖Lᵀ u + Lᵀ e_i‖``, solved exactly (Lawson-Hanson active set); when ``M e_i ≥ 0`` the answer is
``u = 0`` and no solve is needed. The weights are ``(1/K) Σ_i v_i``. torchjd normalizes ``M`` and adds a
ridge of 1e-4 before a quadratic-programming solver; we only rescale ``M`` (which does not change ``v``) and
solve the unregularized problem exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram, gram_factor, nnls


def dual_cone_coefficients(m: Tensor) -> Tensor:
    """The K × K matrix ``V`` whose row ``i`` is ``v_i``: ``Gᵀ v_i`` is the projection of ``g_i`` onto the
    dual cone of the gradients. SolverError when ``M`` is not finite or a projection fails."""
    m = m.double()
    k = m.shape[0]
    if not bool(torch.isfinite(m).all()):
        raise SolverError("UPGrad projection: the gradients hold NaN/inf")
    coefficients = torch.eye(k, dtype=m.dtype)
    scale = float(m.diagonal().sum()) / k
    if not scale > 0:  # every gradient is zero: every projection is zero, any v will do
        return coefficients
    m = m / scale
    conflicting = (m < 0).any(dim=1).nonzero().flatten().tolist()  # rows with M e_i ≥ 0 keep u = 0
    if not conflicting:
        return coefficients
    lt = gram_factor(m).T  # Lᵀ with L Lᵀ = M
    for i in conflicting:
        u = nnls(lt, -lt[:, i])
        if not bool(torch.isfinite(u).all()):
            raise SolverError(f"UPGrad projection of gradient {i} returned non-finite coefficients")
        coefficients[i] += u
    return coefficients


@WEIGHTINGS.register("upgrad", config=GradientWeightingConfig)
class UPGrad(GradientWeighting):
    """Mean of each gradient's projection onto the cone of non-conflicting directions (Quinton & Rey 2024)."""

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        try:
            coefficients = dual_cone_coefficients(gram(grads))
        except SolverError as exc:
            raise SolverError(
                f"weighting '{self.name}' failed at step {context.step + 1}: {exc}. Check the losses for "
                "NaN/inf, or lower the learning rate"
            ) from exc
        weights = coefficients.mean(0).to(grads.device, grads.dtype)
        return weights @ grads, weights
