"""AFN: stepwise adaptive feature norm, SAFN (Xu, Li, Yang & Lin 2019, "Larger Norm More Transferable: An
Adaptive Feature Norm Approach for Unsupervised Domain Adaptation", ICCV).

Target features of small norm carry little information for the classifier; SAFN enlarges the feature norms
of both domains step by step. At each step, with ``h(x; θ₀)`` the norm computed by the current parameters
(held constant) and ``Δr`` the step size:

    L_norm = λ / (n_s + n_t) · Σ_{x ∈ D_s ∪ D_t} (‖h(x; θ)‖₂ − (‖h(x; θ₀)‖₂ + Δr))²

i.e. the mean over the source and target rows of the batch (TLlib instead sums the two domains' means, so
its λ counts twice). Its value is always ``λ·Δr²``; its gradient pushes every norm up by ``Δr``. Its value
carries no information to balance, so it is a penalty (``norm``), added with λ = ``trade_off`` under every
weighting. Paper defaults: ``Δr = 1`` (``delta``), ``λ = 0.05`` (``trade_off``).

Options: ``dropout`` applies the paper's L2-preserving dropout (mask with probability ``p``, scale by
``1/√(1 − p)``, which keeps the expected squared norm) to the features whose norm is taken, in training only;
leave it 0 when the model's bottleneck already has dropout. ``entropy: true`` adds the entropy of the target
predictions as an objective ``entropy`` (the paper's SAFN+ENT; TLlib digits: weight 0.03, a ``static``
weight). Objectives: ``source`` and, with ``entropy``, ``entropy``; penalty ``norm`` (``λ·L_norm``). Any task
kind works without ``entropy``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import ConfigError
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.registry import METHODS


class AFNConfig(AdaptationConfig):
    trade_off: float = Field(
        default=0.05, ge=0.0, description="λ: the weight of the norm penalty (paper: 0.05)"
    )
    delta: float = Field(
        default=1.0, gt=0.0, description="Δr, the norm increase asked at every step (paper: 1)"
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="L2-preserving dropout on the features before their norm"
    )
    entropy: bool = Field(default=False, description="add the target predictions' entropy as loss 'entropy'")


def l2_preserving_dropout(features: Tensor, p: float) -> Tensor:
    """Dropout scaled by ``1/√(1 − p)``: ``E‖dropout(x)‖² = ‖x‖²``."""
    keep = torch.rand_like(features, dtype=torch.float32) >= p
    return features * keep / math.sqrt(1.0 - p)


@METHODS.register("afn", config=AFNConfig)
class AFN(Adaptation):
    """Stepwise adaptive feature norm: enlarge every feature norm by Δr per step (Xu et al. 2019)."""

    config: AFNConfig
    classification_only = False
    transfer_losses = ()
    transfer_penalties = ("norm",)

    def __init__(self, config: AFNConfig, model, streams):
        super().__init__(config, model, streams)
        if config.entropy and self.tasks[self.task].kind != "classification":
            raise ConfigError(
                f"method.entropy: the entropy of predictions needs a classification task; task '{self.task}' "
                f"is {self.tasks[self.task].kind}. Set entropy: false"
            )

    @property
    def objective_names(self) -> list[str]:
        return [*super().objective_names, *(["entropy"] if self.config.entropy else [])]

    def penalty_coefficient(self, name: str) -> str:
        return "method.trade_off"

    def transfer(self, views: Views) -> dict[str, Tensor]:
        features = torch.cat([views.source.features, views.target.features]).flatten(1).float()
        if self.config.dropout and self.model.training:
            features = l2_preserving_dropout(features, self.config.dropout)
        norms = features.norm(dim=1)
        losses = {
            "norm": self.config.trade_off * (norms - (norms.detach() + self.config.delta)).pow(2).mean()
        }
        if self.config.entropy:
            p = views.target.probabilities
            losses["entropy"] = -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean()
        return losses
