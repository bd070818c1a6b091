"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020, "Just
Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS).

Defined on the gradients with respect to a shared *activation* ``A`` (here the shared representation,
``on: representation``; it cannot work on the parameters). Per element of ``A``, with the batch-separated
gradients ``∇_i = Σ_batch sgn(A) ∘ ∇_A L_i`` (summed over the batch, as in the paper):

    P = ½ (1 + Σ_i ∇_i / Σ_i |∇_i|)      (the positive sign purity, in [0, 1])
    U ~ Uniform(0, 1)                       (one draw per element, torch's global generator)
    M_i = 1[P > U] · 1[∇_i > 0] + 1[P < U] · 1[∇_i < 0]

so each element keeps either the losses pushing it up or those pushing it down, the sign chosen with
probability given by its purity. The representation receives ``Σ_i (ℓ_i + (1 − ℓ_i) M_i) ∘ ∇_A L_i``,
with the mask broadcast over the batch and the paper's leak ``ℓ_i`` (default 0: full dropout; 1 lets a
loss through unmasked, e.g. a source loss in transfer). The direction is not a combination of the rows,
so the logged weights are ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from crosstask.errors import ConfigError, suggest
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig


class GradDropConfig(GradientWeightingConfig):
    on: Literal["representation"] = Field(
        default="representation",
        description="GradDrop masks gradients with respect to the shared representation (activations) only",
    )
    leak: dict[str, float] = Field(
        default_factory=dict,
        description="leak in [0, 1] per loss name: the fraction of its gradient passed unmasked (default 0)",
    )

    @field_validator("leak")
    @classmethod
    def _in_unit_interval(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"leak must be in [0, 1]; not for {', '.join(bad)}")
        return value


def graddrop_mask(grads: Tensor, activation: Tensor, uniform: Tensor) -> Tensor:
    """The keep-mask ``M`` (K × features) for per-loss gradients ``grads`` (K × batch × features) of the
    activation (batch × features), given the uniform draw (features)."""
    signed = (grads * activation.sign().to(grads.dtype)).sum(1)  # ∇_i, batch-separated
    purity = 0.5 * (1 + signed.sum(0) / signed.abs().sum(0).clamp_min(1e-30))
    keep_positive = (purity > uniform) & (signed > 0)
    keep_negative = (purity < uniform) & (signed < 0)
    return (keep_positive | keep_negative).to(grads.dtype)


@WEIGHTINGS.register("graddrop", config=GradDropConfig)
class GradDrop(GradientWeighting):
    """Keep one gradient sign per representation element, by its purity (Chen et al. 2020)."""

    supports_parameters = False
    supports_representation = True
    config: GradDropConfig

    def __init__(self, config: GradDropConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        for name in config.leak:
            if name not in self.loss_names:
                raise ConfigError(
                    f"weighting.leak.{name}: the method produces no loss '{name}'.{suggest(name, self.loss_names)} "
                    f"Its losses: {', '.join(self.loss_names)}"
                )
        self.leak = torch.tensor([float(config.leak.get(n, 0.0)) for n in self.loss_names])

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        shared = context.shared
        assert shared is not None  # on: representation, checked by GradientWeighting.backward
        k = grads.shape[0]
        batch = shared.shape[0] if shared.dim() > 0 else 1
        per_sample = grads.view(k, batch, -1)
        activation = shared.detach().reshape(batch, -1)
        uniform = torch.rand(per_sample.shape[2], device=grads.device, dtype=grads.dtype)
        mask = graddrop_mask(per_sample, activation, uniform)
        leak = self.leak.to(grads.device, grads.dtype)[:, None]
        keep = leak + (1 - leak) * mask  # K × features
        direction = (per_sample * keep[:, None, :]).sum(0).reshape(-1)
        return direction, torch.ones(k, device=grads.device, dtype=grads.dtype)
