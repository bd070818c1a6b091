"""Random Loss Weighting (Lin, Ye, Zhang & Tsang 2022, "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning", TMLR).

Every optimizer step draws fresh weights and minimizes ``Σ λ_i·L_i``. The paper samples ``λ̃`` from a
distribution and normalizes it onto the simplex; its default (and ours) is ``λ = softmax(λ̃)`` with
``λ̃ ~ N(0, I)``. ``uniform`` takes ``softmax`` of ``U(0, 1)`` draws, ``dirichlet`` draws ``λ ~ Dir(1)``
directly. The weights sum to 1, as in the paper.

The draw comes from torch's global CPU generator (checkpointed with the run, so a resume is exact) and is
made once per optimizer step: every micro-batch of a step under gradient accumulation uses the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


class RLWConfig(ComponentConfig):
    distribution: Literal["normal", "uniform", "dirichlet"] = Field(
        default="normal",
        description="normal: softmax of N(0, 1) draws (the paper's default); uniform: softmax of U(0, 1) "
        "draws; dirichlet: Dir(1) draws",
    )


def draw_weights(k: int, distribution: str) -> Tensor:
    """``k`` random weights on the simplex, from torch's global CPU generator."""
    if distribution == "normal":
        return torch.softmax(torch.randn(k), dim=0)
    if distribution == "uniform":
        return torch.softmax(torch.rand(k), dim=0)
    return torch.distributions.Dirichlet(torch.ones(k)).sample()


@WEIGHTINGS.register("rlw", config=RLWConfig)
class RLW(LossWeighting):
    """Random Loss Weighting: fresh random weights on the simplex every step (Lin et al. 2022)."""

    config: RLWConfig

    def __init__(self, config: RLWConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        self._weights: Tensor | None = None  # this step's draw, reused by its micro-batches

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        if context.micro_step == 0 or self._weights is None:
            self._weights = draw_weights(len(self.loss_names), self.config.distribution)
        weights = self._weights.to(losses.device, non_blocking=True)
        return (weights * losses).sum(), weights
