"""Static weights: ``Σ w_i·L_i`` with fixed ``w_i`` (default 1 each).

The one operation behind both ``λ1·L_source + λ2·L_target`` (transfer) and ``Σ αi·L_i`` (multi-task).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, field_validator
from torch import Tensor

from crosstask.errors import ConfigError, suggest
from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


class StaticConfig(ComponentConfig):
    weights: dict[str, float] = Field(default_factory=dict, description="weight per loss name")
    default: float = Field(default=1.0, ge=0.0, description="weight of losses not listed in weights")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = [k for k, w in value.items() if w < 0]
        if negative:
            raise ValueError(f"weights must be >= 0; negative for {', '.join(negative)}")
        return value


@WEIGHTINGS.register("static", config=StaticConfig)
class Static(LossWeighting):
    """Fixed weights per loss name: λ1·L_source + λ2·L_target, or Σ αi·L_i."""

    config: StaticConfig

    def __init__(self, config: StaticConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        for name in config.weights:
            if name not in self.loss_names:
                raise ConfigError(
                    f"weighting.weights.{name}: the method produces no loss '{name}'.{suggest(name, self.loss_names)} "
                    f"Its losses: {', '.join(self.loss_names)}"
                )
        self.weights = [float(config.weights.get(n, config.default)) for n in self.loss_names]
        self._tensor: Tensor | None = None

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        if self._tensor is None or self._tensor.device != losses.device:
            self._tensor = torch.tensor(self.weights, device=losses.device)
        return (self._tensor * losses).sum(), self._tensor
