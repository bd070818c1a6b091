"""Soft neighborhood density (Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko 2021, "Tune it the Right
Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density", ICCV).

On the target's softmax outputs ``p_i``, L2-normalized: cosine similarities ``s_ij`` between different
samples, turned into a distribution per sample with a temperature softmax ``P_ij = exp(s_ij/τ) /
Σ_{k≠i} exp(s_ik/τ)``; SND is the mean entropy of the rows, ``mean_i −Σ_j P_ij log P_ij``. Dense soft
neighborhoods (target samples of a class close together) give a high value. Higher is better; τ = 0.05 as
in the paper.
"""

from __future__ import annotations

import torch
from pydantic import Field

from crosstask.registry import VALIDATORS, ComponentConfig
from crosstask.validators.base import ValidationData, Validator


class SNDConfig(ComponentConfig):
    temperature: float = Field(default=0.05, gt=0.0, description="τ of the similarity softmax (paper: 0.05)")


@VALIDATORS.register("snd", config=SNDConfig)
class SND(Validator):
    """Soft neighborhood density of the target predictions; higher is better."""

    config: SNDConfig

    def score(self, data: ValidationData) -> float:
        p = torch.nn.functional.normalize(torch.softmax(data.target.logits.double(), dim=1), dim=1)
        similarity = p @ p.T
        similarity.fill_diagonal_(float("-inf"))  # a sample is not its own neighbor
        log_p = torch.log_softmax(similarity / self.config.temperature, dim=1)
        probs = log_p.exp()
        entropy = -(probs * log_p.masked_fill(probs == 0, 0.0)).sum(dim=1)
        return float(entropy.mean())
