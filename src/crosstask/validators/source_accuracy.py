"""Source validation accuracy: the classic, target-blind choice (a held-out split of the labeled source).

It ignores the shift entirely, so it tends to prefer source-overfit models; it is the baseline the other
validators are compared with (You et al. 2019; Saito et al. 2021).
"""

from __future__ import annotations

from crosstask.registry import VALIDATORS, ComponentConfig
from crosstask.validators.base import ValidationData, Validator


@VALIDATORS.register("source_accuracy", config=ComponentConfig)
class SourceAccuracy(Validator):
    """Accuracy (%) on the source validation domain; higher is better."""

    needs_source = True

    def score(self, data: ValidationData) -> float:
        labels = data.source.labels
        known = labels >= 0
        predicted = data.source.logits.argmax(dim=1)
        return float((predicted[known] == labels[known]).float().mean() * 100)
