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


def normalization(grads: Tensor, losses: Tensor, kind: str) -> Tensor:
    """Per-loss scale factors of the gradients."""
    norms = grads.norm(dim=1).clamp_min(1e-12)
    if kind == "l2":
        return norms
    if kind == "loss":
        return losses.clamp_min(1e-12)
    if kind == "loss+":
        return losses.clamp_min(1e-12) * norms
    return grads.new_ones(grads.shape[0])


@WEIGHTINGS.register("mgda", config=MGDAConfig)
class MGDA(GradientWeighting):
    """Min-norm point of the gradients' convex hull; on: representation gives MGDA-UB (Sener & Koltun 2018)."""

    config: MGDAConfig

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        active = (grads != 0).any(dim=1)
        weights = torch.zeros(grads.shape[0], device=grads.device, dtype=grads.dtype)
        if not bool(active.any()):
            return grads.sum(0), weights
        rows = grads[active]
        scale = normalization(rows, losses[active], self.config.normalize)
        weights[active] = min_norm_point(gram(rows / scale[:, None])).to(grads.device, grads.dtype)
        return weights @ grads, weights  # as in their code: normalization only shapes the weights
