"""Equal weighting: the plain sum of the losses, ``Σ L_i``.

The baseline every multi-task paper compares with (e.g. Sener & Koltun 2018, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS, Table 2 "Uniform scaling").
"""

from __future__ import annotations

import torch
from torch import Tensor

from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


@WEIGHTINGS.register("equal", config=ComponentConfig)
class Equal(LossWeighting):
    """Every loss with weight 1: the gradient of the summed loss."""

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        return losses.sum(), torch.ones_like(losses)
