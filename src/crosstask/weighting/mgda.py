"""MGDA: the multiple-gradient descent algorithm as multi-objective optimization (Sener & Koltun 2018,
"Multi-Task Learning as Multi-Objective Optimization", NeurIPS).

The direction is the min-norm point of the convex hull of the per-loss gradients, ``Σ w_i g_i`` with
``w`` on the simplex minimizing ``‖Σ w_i g_i‖²`` (closed form for two losses; more: solved exactly as a
non-negative least-squares problem, :func:`~crosstask.weighting.solvers.min_norm_point`, not by the
paper's Frank-Wolfe iterations).
With ``on: representation`` this is **MGDA-UB**: the paper's upper bound, which takes the gradients with
respect to the shared representation instead of the shared parameters (one backward pass through the
encoder). ``normalize`` scales the gradients before solving, as in their code: ``l2`` by their norm,
``loss`` by the loss value, ``loss+`` by both; the weights found are then applied to the raw gradients.

An objective whose gradient is exactly zero (no confident pseudo-label in a batch, a loss not yet switched
on) would put the min-norm point at 0 and stop every other objective, although moving along the others
leaves it unchanged to first order (a Pareto improvement). It gets weight 0 and the others are solved for
among themselves; when every gradient is zero, so is the direction.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram, min_norm_point


class MGDAConfig(GradientWeightingConfig):
    normalize: Literal["none", "l2", "loss", "loss+"] = Field(
        default="none", description="gradient normalization before solving (Sener & Koltun's options)"
    )


def normalization(m: Tensor, losses: Tensor, kind: str) -> Tensor:
    """Per-loss scale factors of the gradients whose Gram matrix is ``m`` (norms from its diagonal)."""
    norms = m.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
    if kind == "l2":
        return norms
    if kind == "loss":
        return losses.clamp_min(1e-12)
    if kind == "loss+":
        return losses.clamp_min(1e-12) * norms
    return torch.ones_like(norms)


@WEIGHTINGS.register("mgda", config=MGDAConfig)
class MGDA(GradientWeighting):
    """Min-norm point of the gradients' convex hull; on: representation gives MGDA-UB (Sener & Koltun 2018)."""

    config: MGDAConfig

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        m = gram(grads)  # everything below is K × K, on the host
        active = (m.diagonal() > 0).nonzero().flatten()
        weights = torch.zeros(m.shape[0], dtype=m.dtype)
        if len(active):
            sub = m[active][:, active]
            scale = normalization(sub, losses.detach().double().cpu()[active], self.config.normalize)
            weights[active] = min_norm_point(sub / (scale[:, None] * scale[None, :]))
        weights = weights.to(grads.device, grads.dtype)
        return weights @ grads, weights  # as in their code: normalization only shapes the weights
