"""Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh 2019, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops).

The objective is the geometric mean of the ``K`` losses, ``(Π_i L_i)^(1/K)``, computed in log space as
``exp(mean_i log L_i)`` so that neither tiny nor huge losses under- or overflow the product. Its gradient is
``Σ_i w_i ∇L_i`` with ``w_i = (Π_j L_j)^(1/K) / (K·L_i)``: a loss that is small relative to the others gets a
large weight, so the balance does not depend on the scale of each loss. Those ``w_i`` are the logged weights.

The geometric mean needs positive losses: a zero or negative one is an error (with the loss named), never a
NaN. With gradient accumulation the trainer passes ``L_i / accumulate`` per micro-batch; the geometric mean
is homogeneous, so each micro-batch contributes ``1/accumulate`` of its own geometric mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


@WEIGHTINGS.register("gls", config=ComponentConfig)
class GLS(LossWeighting):
    """Geometric Loss Strategy: the geometric mean of the losses, (Π L_i)^(1/K) (Chennupati et al. 2019)."""

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        if not bool((losses > 0).all()):
            values = losses.detach() * context.accumulate
            bad = ", ".join(
                f"{n}={v:.4g}" for n, v in zip(self.loss_names, values.tolist(), strict=True) if not v > 0
            )
            raise SolverError(
                f"weighting 'gls' at step {context.step + 1}: the geometric mean needs positive losses, got "
                f"{bad}. Use gls only for losses that stay above 0 (cross-entropy, MSE, ...), or pick another "
                "weighting (equal, dwa, uncertainty) for this method"
            )
        full = losses * context.accumulate
        geometric_mean = torch.exp(torch.log(full).mean())
        weights = geometric_mean.detach() / (len(self.loss_names) * full.detach())
        return geometric_mean / context.accumulate, weights
