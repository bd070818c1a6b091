"""BSS: Chen, Wang, Fu, Long & Wang 2019, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning", NeurIPS; the BSS loss:

    L_bss(F) = η · Σ_{i=1..k} σ²_{−i}

the squares of the ``k`` smallest singular values of the batch feature matrix ``F`` (batch × features, the
representation the heads read: the model's shared representation). Small singular directions carry the
source knowledge that does not transfer; shrinking them curbs negative transfer. The loss is named
``bss``; with several training streams it is the mean over their batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import ConfigError
from crosstask.finetune.base import Regularizer, StreamForward
from crosstask.registry import REGULARIZERS, ComponentConfig


class BSSConfig(ComponentConfig):
    eta: float = Field(default=0.001, ge=0.0, description="η: strength")
    k: int = Field(default=1, ge=1, description="how many of the smallest singular values to shrink")


def smallest_singular_values(features: Tensor, k: int) -> Tensor:
    """The ``k`` smallest singular values of ``features`` (flattened to batch × dims), in float32."""
    values = torch.linalg.svdvals(features.flatten(1).float())  # descending
    return values[-min(k, values.numel()) :]


@REGULARIZERS.register("bss", config=BSSConfig)
class BSS(Regularizer):
    """η·Σ of the squared k smallest singular values of the feature matrix (Chen et al. 2019, NeurIPS)."""

    config: BSSConfig
    needs_start = False

    def penalty(self, forwards: Sequence[StreamForward]) -> Tensor:
        total = 0.0
        for forward in forwards:
            if forward.output.shared is None:
                raise ConfigError(
                    f"regularizer bss needs the shared representation, and architecture "
                    f"'{self.model.architecture_config.name}' has none; use hard_sharing"
                )
            total = total + smallest_singular_values(forward.output.shared, self.config.k).pow(2).sum()
        return self.config.eta * total / len(forwards)
