"""Dynamic Weight Average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention", CVPR).

Each loss is weighted by how slowly it has been falling: with ``r_i = L̄_i(t−1) / L̄_i(t−2)`` the ratio of
its mean over the last two completed windows,

    w_i = K · exp(r_i / T) / Σ_j exp(r_j / T)

so the weights sum to ``K`` (the number of losses) and a loss that stopped improving (``r_i`` near or above
1) gains weight. The paper averages over epochs; a run here counts steps, so the average is taken over
windows of ``window`` optimizer steps (one "epoch" of the paper). All weights are 1 until two windows are
complete (the paper's ``w_i(1) = w_i(2) = 1``). ``T = 2`` is the paper's temperature.

The ratios are meant for positive losses (cross-entropy, MSE, ...); they are clamped to ±1e4 so that the
weights stay finite whatever the losses (past that the softmax is one-hot anyway).

With gradient accumulation the trainer passes ``L_i / accumulate`` per micro-batch, so the sum over the
micro-batches of one step is the step's mean loss: that is what enters the window average, once per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


class DWAConfig(ComponentConfig):
    window: int = Field(
        default=100,
        ge=1,
        description="optimizer steps per averaging window (stands for the paper's epoch); the weights "
        "change once per window",
    )
    temperature: float = Field(
        default=2.0, gt=0.0, description="softmax temperature T (the paper's 2); larger is closer to equal"
    )


def dwa_weights(older: Tensor, newer: Tensor, temperature: float) -> Tensor:
    """``K · softmax(r / T)`` with ``r = newer / older``, the rate of change of each loss's window mean."""
    ratio = (newer / older.clamp_min(1e-12)).clamp(-1e4, 1e4)
    return newer.numel() * torch.softmax(ratio / temperature, dim=0)


@WEIGHTINGS.register("dwa", config=DWAConfig)
class DWA(LossWeighting):
    """Dynamic Weight Average: K·softmax(r/T), r = each loss's ratio of its last two window means (Liu et al. 2019)."""

    config: DWAConfig

    def __init__(self, config: DWAConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        self._sum: Tensor | None = None  # Σ of the step-mean losses in the current window
        self._count = 0  # steps in the current window
        self._means: Tensor | None = None  # (2, K): the last two window means, older first
        self._windows = 0  # completed windows (at most 2 counted)

    def current_weights(self, device: torch.device) -> Tensor:
        """The weights the next step applies: 1 until two windows are complete."""
        if self._windows < 2 or self._means is None:
            return torch.ones(len(self.loss_names), device=device)
        means = self._means.to(device)
        return dwa_weights(means[0], means[1], self.config.temperature)

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        weights = self.current_weights(losses.device)
        objective = (weights * losses).sum()
        detached = losses.detach()
        if self._sum is None:
            self._sum = detached.clone()
        else:
            self._sum = self._sum.to(losses.device) + detached
        if context.last_micro_step:
            self._count += 1
            if self._count == self.config.window:
                mean = self._sum / self.config.window
                if self._means is None:
                    self._means = torch.stack([mean, mean])
                else:
                    self._means = torch.stack([self._means[1].to(mean.device), mean])
                self._windows = min(self._windows + 1, 2)
                self._sum, self._count = None, 0
        return objective, weights

    def extra_state(self) -> dict[str, Any]:
        return {
            "sum": None if self._sum is None else self._sum.detach().cpu().clone(),
            "count": self._count,
            "means": None if self._means is None else self._means.detach().cpu().clone(),
            "windows": self._windows,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._sum = state["sum"]
        self._count = int(state["count"])
        self._means = state["means"]
        self._windows = int(state["windows"])
