"""MDD: margin disparity discrepancy (Zhang, Liu, Long & Jordan 2019, "Bridging Theory and Algorithm for
Domain Adaptation", ICML).

An adversarial head ``f′`` (a fresh copy of the task head) sits on the features behind a gradient-reversal
layer. With ``h_f`` the task head's predicted class, it plays

    min_{f′}  γ · E_s CE(f′(x), h_f(x)) + E_t −log(1 − softmax(f′(x))[h_f(x)])

(agree with the task head on source, disagree on target: the margin disparity discrepancy with margin factor
``γ``), while the features, through the reversal layer, maximize it. The task head's predictions enter
without gradient. That term is ``transfer``; the paper's objective ``L_source + η·D_γ`` is
``weighting: {name: static, weights: {transfer: η}}`` (TLlib: η = 1).

Defaults follow the paper and TLlib: ``margin`` γ = 4 (the paper picks γ per dataset from {2, 3, 4}; its
benchmarks are Office-31, Office-Home and VisDA; TLlib runs digits with 4), and a reversal coefficient that
warms up to 0.1 (TLlib's MDD). ``log(1 − p)`` is computed from the logits with ``logsumexp`` over the other
classes, which is exact and stable (TLlib clamps instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.modules.grl import ReversalConfig, reverse_gradient
from crosstask.modules.heads import fresh_copy
from crosstask.registry import METHODS


class MDDConfig(AdaptationConfig, ReversalConfig):
    margin: float = Field(
        default=4.0, gt=0.0, description="margin factor γ (paper: from {2, 3, 4}; TLlib: 4)"
    )
    reversal: float = Field(
        default=0.1, ge=0.0, description="reversal coefficient reached after warm-up (TLlib's MDD: 0.1)"
    )


def log_probability_not(logits: Tensor, classes: Tensor) -> Tensor:
    """``log(1 − softmax(logits)[class])`` per row, as ``logsumexp`` of the other classes minus the total."""
    others = logits.scatter(1, classes.unsqueeze(1), float("-inf"))
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)


@METHODS.register("mdd", config=MDDConfig)
class MDD(Adaptation):
    """An adversarial head through gradient reversal measures the margin disparity (Zhang et al. 2019)."""

    config: MDDConfig

    def __init__(self, config: MDDConfig, model, streams):
        super().__init__(config, model, streams)
        self.modules["adversary"] = fresh_copy(model.heads[self.task])

    def transfer(self, views: Views) -> dict[str, Tensor]:
        coefficient = self.config.coefficient(self.step, self.total_steps)
        source, target = views.source, views.target
        features = reverse_gradient(torch.cat([source.features, target.features]), coefficient)
        adversary = self.modules["adversary"](features).float()
        source_adv, target_adv = adversary[: len(source.features)], adversary[len(source.features) :]
        source_agree = F.cross_entropy(source_adv, source.logits.detach().argmax(1))
        target_disagree = -log_probability_not(target_adv, target.logits.detach().argmax(1)).mean()
        return {"transfer": self.config.trade_off * (self.config.margin * source_agree + target_disagree)}
