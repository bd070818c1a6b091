"""Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR).

Each loss has a learnable log-variance ``s_i = log σ_i²``, optimized with the model:
``Σ_i exp(−s_i)·L_i + s_i``. The weights ``exp(−s_i)`` start at 1 (equal weighting) and fall for noisy,
hard-to-reduce losses; the ``+ s_i`` term keeps them from collapsing to 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


class UncertaintyConfig(ComponentConfig):
    init: float = Field(default=0.0, description="initial log-variance s_i (weights exp(-init))")


@WEIGHTINGS.register("uncertainty", config=UncertaintyConfig)
class Uncertainty(LossWeighting):
    """Learned homoscedastic-uncertainty weights exp(-s_i), objective Σ exp(-s_i) L_i + s_i (Kendall et al. 2018)."""

    config: UncertaintyConfig

    def __init__(self, config: UncertaintyConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        self.params["log_var"] = nn.Parameter(torch.full((len(self.loss_names),), float(config.init)))

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        log_var = self.params["log_var"]
        weights = torch.exp(-log_var)
        # with accumulation the losses arrive divided by accumulate: so does the + s_i term
        return (weights * losses + log_var / context.accumulate).sum(), weights
