"""Pseudo-Label: self-training on the model's own confident target predictions (Lee 2013, "Pseudo-Label: The
Simple and Efficient Semi-Supervised Learning Method for Deep Neural Networks", ICML Workshop on Challenges in
Representation Learning).

Every unlabeled target sample gets the class of its largest predicted probability as a label (eq. 1 of the
paper); with the confidence threshold of the later Pseudo-Label baselines (Oliver et al. 2018, "Realistic
Evaluation of Deep Semi-Supervised Learning Algorithms", NeurIPS: threshold 0.95, also FixMatch's τ), only
samples whose largest probability is at least ``threshold`` count:

    L_pseudo = α(t) · (1/B) Σ_b 1[max_c p_bc ≥ τ] · CE(argmax_c p_bc, p_b)

The mean is over the whole target batch, so a batch with few confident samples contributes little. The
labels carry no gradient. α(t) is the paper's ramp-up (eq. 16): 0 before ``ramp_start``, rising linearly to 1
at ``ramp_end`` (fractions of ``train.steps``; the paper's T1, T2 in epochs); its final value α_f (3 in the
paper) is the static weight of the loss ``pseudo`` (``weighting: {name: static, weights: {pseudo: 3}}``).
Losses: ``source`` and ``pseudo``; logged: ``confident``, the fraction of target samples above the threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.registry import METHODS


def confident_cross_entropy(logits: Tensor, label_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``logits`` against the argmax of ``label_logits``, for the rows whose largest
    probability under ``label_logits`` is at least ``threshold`` (the others count as 0), averaged over all
    rows. Returns the loss and the mask of confident rows. No gradient flows into the labels."""
    probabilities = torch.softmax(label_logits.detach().float(), dim=1)
    confidence, labels = probabilities.max(dim=1)
    mask = (confidence >= threshold).float()
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    return (losses * mask).mean(), mask


class PseudoLabelConfig(AdaptationConfig):
    threshold: float = Field(
        default=0.95, ge=0.0, le=1.0, description="least softmax probability of a pseudo-label (τ)"
    )
    ramp_start: float = Field(
        default=0.0, ge=0.0, le=1.0, description="fraction of training before which the loss is off (T1)"
    )
    ramp_end: float = Field(
        default=0.0, ge=0.0, le=1.0, description="fraction of training at which it reaches full weight (T2)"
    )

    @model_validator(mode="after")
    def _ramp(self) -> PseudoLabelConfig:
        if self.ramp_end < self.ramp_start:
            raise ValueError(f"ramp_end ({self.ramp_end}) must be >= ramp_start ({self.ramp_start})")
        return self

    def ramp(self, progress: float) -> float:
        """α(t) / α_f at training progress ``progress`` in [0, 1] (Lee 2013, eq. 16)."""
        if progress < self.ramp_start:
            return 0.0
        if progress >= self.ramp_end:
            return 1.0
        return (progress - self.ramp_start) / (self.ramp_end - self.ramp_start)


@METHODS.register("pseudo_label", config=PseudoLabelConfig)
class PseudoLabel(Adaptation):
    """Self-training on confident target predictions taken as labels (Lee 2013)."""

    config: PseudoLabelConfig
    aligns_features = False  # it adapts the outputs, so frozen features are fine
    transfer_losses = ("pseudo",)

    def _pseudo(self, views: Views) -> tuple[Tensor, Tensor]:
        logits = views.target.logits
        loss, mask = confident_cross_entropy(logits, logits, self.config.threshold)
        return self.config.trade_off * self.config.ramp(self.progress) * loss, mask

    def transfer(self, views: Views) -> dict[str, Tensor]:
        return {"pseudo": self._pseudo(views)[0]}

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        views = self.views(batch)
        loss, mask = self._pseudo(views)
        return self.step_output(views, {"pseudo": loss}, {"confident": mask.mean()})
