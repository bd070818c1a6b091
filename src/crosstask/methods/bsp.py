"""BSP: batch spectral penalization (Chen, Wang, Long & Wang 2019, "Transferability vs. Discriminability:
Batch Spectral Penalization for Adversarial Domain Adaptation", ICML).

Adversarial alignment (DANN here) strengthens a few eigen-directions of the features at the cost of the
others, hurting discriminability. BSP penalizes the ``k`` largest singular values of the source and target
feature matrices of each batch (``F_s``, ``F_t``: rows are samples):

    L_bsp = Σ_{i=1..k} (σ_{s,i}² + σ_{t,i}²)

and trains ``L_source + λ·L_transfer + β·L_bsp``. Objectives: ``source`` and ``transfer`` (DANN's
discriminator loss through gradient reversal, times λ = ``trade_off``, see :mod:`crosstask.methods.dann`);
penalty ``spectral`` (``β·L_bsp``, β = ``beta``), added as it is under every weighting. The paper uses
``k = 1`` and ``β = 1e-4``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Views
from crosstask.methods.dann import DANN, DANNConfig
from crosstask.registry import METHODS


class BSPConfig(DANNConfig):
    k: int = Field(default=1, ge=1, description="number of largest singular values penalized (paper: 1)")
    beta: float = Field(
        default=1e-4, ge=0.0, description="β: the weight of the spectral penalty (paper: 1e-4)"
    )


def batch_spectral_penalty(features: Tensor, k: int = 1) -> Tensor:
    """The sum of the squares of the ``k`` largest singular values of the (batch × features) matrix."""
    singular_values = torch.linalg.svdvals(features.flatten(1).float())
    return singular_values[:k].pow(2).sum()


@METHODS.register("bsp", config=BSPConfig)
class BSP(DANN):
    """DANN plus a penalty on the largest singular values of the batch features (Chen et al. 2019)."""

    config: BSPConfig
    transfer_losses = ("transfer",)
    transfer_penalties = ("spectral",)

    def penalty_coefficient(self, name: str) -> str:
        return "method.beta"

    def transfer(self, views: Views) -> dict[str, Tensor]:
        losses = super().transfer(views)
        k = self.config.k
        spectral = batch_spectral_penalty(views.source.features, k) + batch_spectral_penalty(
            views.target.features, k
        )
        losses["spectral"] = self.config.beta * spectral
        return losses
