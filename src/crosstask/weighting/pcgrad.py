"""PCGrad: gradient surgery (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", NeurIPS).

For every loss i, in a random order of the others j: if ``g_i·g_j < 0``, project ``g_i`` onto the normal
plane of ``g_j``: ``g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j``. The direction is the sum of the projected
gradients. Every projected gradient stays a combination of the original ones, so the surgery runs on the
K × K Gram matrix (coefficients ``C``, ``g_i^PC = Σ_j C_ij g_j``) instead of on model-sized vectors; the
logged weights are the coefficients of the direction, ``Σ_i C_i``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram


def pcgrad_coefficients(m: Tensor, orders: list[list[int]]) -> Tensor:
    """Coefficients ``C`` (K × K) of the projected gradients given the Gram matrix and each row's order
    (numpy: K² small sequential steps, cheaper than as tensor operations)."""
    gram = m.double().numpy()
    k = gram.shape[0]
    coefficients = np.eye(k)
    for i in range(k):
        row = coefficients[i]
        for j in orders[i]:
            dot = row @ gram[:, j]
            if dot < 0 and gram[j, j] > 0:
                row[j] -= dot / gram[j, j]
    return torch.from_numpy(coefficients)


@WEIGHTINGS.register("pcgrad", config=GradientWeightingConfig)
class PCGrad(GradientWeighting):
    """Project each gradient off the others it conflicts with, then sum (Yu et al. 2020)."""

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        k = grads.shape[0]
        orders = [[j for j in torch.randperm(k).tolist() if j != i] for i in range(k)]
        weights = pcgrad_coefficients(gram(grads), orders).sum(0)
        weights = weights.to(grads.device, grads.dtype)
        return weights @ grads, weights
