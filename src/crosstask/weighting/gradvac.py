"""GradVac: gradient vaccine (Wang, Tsvetkov, Firat & Cao 2021, "Gradient Vaccine: Investigating and
Improving Multi-task Optimization in Massively Multilingual Models", ICLR).

PCGrad with an adaptive goal: for each loss i, in a random order of the others j, with
``φ_ij = cos(g_i', g_j)`` (``g_i'`` the gradient of i modified so far), if ``φ_ij < φ̂_ij`` then ``g_j`` is
added to ``g_i'`` with the coefficient that lifts the cosine exactly to the target (their closed form):

    g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j

and the target of every ordered pair follows the cosines seen: ``φ̂_ij ← (1 − β) φ̂_ij + β φ_ij``
(``β = 0.01``, ``φ̂ = 0`` at the start, as in the paper; with ``φ̂ = 0`` it is PCGrad). The direction is the
sum of the modified gradients. Like ``pcgrad`` this runs on the K × K Gram matrix (``g_i' = Σ_j C_ij g_j``);
the logged weights are the coefficients of the direction, ``Σ_i C_i``. The paper sets targets per layer;
here there is one target per pair for the whole shared part (or the shared representation). ``φ̂`` is
checkpointed; with gradient accumulation it moves once per optimizer step, with the cosines averaged over
the micro-batches. The random orders come from torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram

TARGET_LIMIT = 1 - 1e-6  # |φ̂| is kept below 1 in the closed form (it divides by √(1 − φ̂²))


class GradVacConfig(GradientWeightingConfig):
    beta: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="moving-average rate of the target similarities (paper: 0.01)",
    )


def gradvac_coefficients(
    m: Tensor, targets: Tensor, orders: list[list[int]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients ``C`` of the modified gradients, with the cosines ``φ_ij`` met and where they were defined.

    ``m`` is the Gram matrix, ``targets`` the K × K target similarities ``φ̂``, ``orders[i]`` the order in
    which loss i meets the others. Returns ``(C, cosines, seen)`` (``seen[i, j]`` false where a gradient
    was zero, so no cosine exists).
    """
    gram_np = m.double().numpy()
    goal = targets.double().clamp(-TARGET_LIMIT, TARGET_LIMIT).numpy()
    k = gram_np.shape[0]
    coefficients = np.eye(k)
    cosines = np.zeros((k, k))
    seen = np.zeros((k, k), dtype=bool)
    norms = np.sqrt(np.clip(np.diag(gram_np), 0.0, None))
    for i in range(k):
        norm_sq = max(gram_np[i, i], 0.0)  # ‖g_i'‖², updated as g_j are added
        for j in orders[i]:
            norm_i = math.sqrt(norm_sq)
            if norm_i == 0.0 or norms[j] == 0.0:
                continue
            dot = float(coefficients[i] @ gram_np[:, j])
            phi = min(1.0, max(-1.0, dot / (norm_i * norms[j])))
            cosines[i, j], seen[i, j] = phi, True
            target = goal[i, j]
            if phi < target:
                root = math.sqrt(1 - target * target)
                step = norm_i * (target * math.sqrt(1 - phi * phi) - phi * root) / (norms[j] * root)
                coefficients[i, j] += step
                norm_sq = max(norm_sq + 2 * step * dot + step * step * gram_np[j, j], 0.0)
    return torch.from_numpy(coefficients), torch.from_numpy(cosines), torch.from_numpy(seen)


@WEIGHTINGS.register("gradvac", config=GradVacConfig)
class GradVac(GradientWeighting):
    """Lift each pair's gradient similarity to an adaptive target, then sum (Wang et al. 2021)."""

    config: GradVacConfig

    def __init__(self, config: GradVacConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        k = len(self.loss_names)
        self.targets = torch.zeros(k, k, dtype=torch.float64)  # φ̂_ij
        self._cosine_sum = torch.zeros(k, k, dtype=torch.float64)
        self._cosine_count = torch.zeros(k, k, dtype=torch.float64)

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        k = grads.shape[0]
        orders = [[j for j in torch.randperm(k).tolist() if j != i] for i in range(k)]
        coefficients, cosines, seen = gradvac_coefficients(gram(grads), self.targets, orders)
        if context.micro_step == 0:
            self._cosine_sum.zero_()
            self._cosine_count.zero_()
        self._cosine_sum += cosines * seen
        self._cosine_count += seen
        if context.last_micro_step:
            met = self._cosine_count > 0
            mean = self._cosine_sum / self._cosine_count.clamp_min(1)
            beta = self.config.beta
            self.targets = torch.where(met, (1 - beta) * self.targets + beta * mean, self.targets)
        weights = coefficients.sum(0).to(grads.device, grads.dtype)
        return weights @ grads, weights

    def extra_state(self) -> dict[str, Any]:
        return {"targets": self.targets.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.targets = state["targets"].double().cpu().clone()
