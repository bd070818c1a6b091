"""MCC: minimum class confusion (Jin et al. 2020, "Minimum Class Confusion for Versatile Domain Adaptation",
ECCV).

On each target batch (B samples, |C| classes), with the paper's equations:

- temperature-rescaled predictions ``Ŷ = softmax(Z / T)`` (eq. 1), T = 2.5 (``temperature``: the default
  of the authors' code in the Transfer-Learning-Library, which its MNIST→USPS recipe uses);
- uncertainty weights from the entropy ``H(ŷ_i)`` (eq. 3): ``W_ii = B (1 + exp(−H(ŷ_i))) /
  Σ_j (1 + exp(−H(ŷ_j)))`` (eq. 4), so confident samples count more; they act as weights (no gradient);
- the class confusion matrix ``C = Ŷᵀ W Ŷ`` (eq. 5), each row divided by its sum (category normalization,
  eq. 6);
- the loss, the mean over classes of the off-diagonal confusion: ``(1/|C|) Σ_j Σ_{j'≠j} |C̃_jj'|`` (eq. 7).

The paper's objective ``L_source + μ·L_MCC`` (μ = 1) is ``weighting: {name: static, weights: {confusion: μ}}``.
The loss is 0 when every class is predicted with certainty by some sample and no sample hesitates between
classes; a class that no sample predicts keeps a (tiny) row that normalizes to confusion, as in the paper.
Losses: ``source`` and ``confusion``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.registry import METHODS


def class_confusion_loss(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """The MCC loss of a batch of logits (B, C): the mean off-diagonal of the normalized class confusion."""
    log_probabilities = torch.log_softmax(logits.float() / temperature, dim=1)
    probabilities = log_probabilities.exp()
    entropy = -(probabilities * log_probabilities).sum(dim=1).detach()
    weight = 1.0 + torch.exp(-entropy)
    weight = len(logits) * weight / weight.sum()
    confusion = (probabilities * weight[:, None]).T @ probabilities  # (C, C), symmetric
    confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
    return (confusion.sum() - confusion.trace()) / confusion.shape[0]


class MCCConfig(AdaptationConfig):
    temperature: float = Field(default=2.5, gt=0.0, description="probability rescaling temperature T")


@METHODS.register("mcc", config=MCCConfig)
class MCC(Adaptation):
    """Minimum class confusion on the target predictions (Jin et al. 2020)."""

    config: MCCConfig
    aligns_features = False  # it adapts the outputs, so frozen features are fine
    transfer_losses = ("confusion",)

    def transfer(self, views: Views) -> dict[str, Tensor]:
        return {
            "confusion": self.config.trade_off
            * class_confusion_loss(views.target.logits, self.config.temperature)
        }
