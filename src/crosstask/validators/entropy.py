"""Target prediction entropy (Morerio, Cavazza & Murino 2018, "Minimal-Entropy Correlation Alignment for
Unsupervised Deep Domain Adaptation", ICLR, used there to pick the alignment weight).

``mean_i H(p_i)`` over the target's softmax outputs, ``H(p) = −Σ_c p_c log p_c``: confident target
predictions suggest aligned, class-separated features. Lower is better. It cannot see a confidently wrong
alignment (Saito et al. 2021), which SND addresses.
"""

from __future__ import annotations

import torch

from crosstask.registry import VALIDATORS, ComponentConfig
from crosstask.validators.base import ValidationData, Validator


@VALIDATORS.register("entropy", config=ComponentConfig)
class Entropy(Validator):
    """Mean entropy of the target predictions (nats); lower is better."""

    higher_is_better = False

    def score(self, data: ValidationData) -> float:
        log_p = torch.log_softmax(data.target.logits, dim=1)
        return float(-(log_p.exp() * log_p).sum(dim=1).mean())
