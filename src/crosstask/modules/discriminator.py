"""The domain discriminator of adversarial adaptation (DANN, CDAN, BSP): an MLP from features to one logit.

Ganin et al. (2016) and the Transfer-Learning-Library use two hidden layers of 1024 units with ReLU (and
batch normalization in TLlib); the logit is "the input came from the source domain". Source and target go
through the discriminator in one pass (:func:`discriminate`): with batch normalization, separate passes
would normalize each domain's batch on its own and hide a shift of the feature means from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DomainDiscriminator(nn.Module):
    """``in_features → hidden → hidden → 1`` logit, with batch normalization (or dropout) between layers."""

    def __init__(self, in_features: int, hidden: int = 1024, batch_norm: bool = True, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(2):
            layers.append(nn.Linear(width, hidden))
            layers.append(nn.BatchNorm1d(hidden) if batch_norm else nn.Dropout(dropout))
            layers.append(nn.ReLU())
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def discriminate(discriminator: nn.Module, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's logits for the source and the target rows, from one joint pass."""
    logits = discriminator(torch.cat([source, target]))
    return logits[: len(source)], logits[len(source) :]


def domain_loss(
    source_logits: Tensor,
    target_logits: Tensor,
    source_weights: Tensor | None = None,
    target_weights: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of telling source (label 1) from target (label 0), averaged over both domains.

    Optional per-sample weights (CDAN+E's entropy weights) are normalized to sum to one within each domain,
    as in the CDAN authors' code, so each domain still counts half; their scale does not matter and no
    gradient flows through them.
    """
    return 0.5 * (
        _weighted_bce(source_logits, torch.ones_like(source_logits, dtype=torch.float32), source_weights)
        + _weighted_bce(target_logits, torch.zeros_like(target_logits, dtype=torch.float32), target_weights)
    )


def _weighted_bce(logits: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits.float(), labels)
    per_sample = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    weights = weights.detach().float().reshape(per_sample.shape)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)
