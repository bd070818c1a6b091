"""MCD: maximum classifier discrepancy (Saito, Watanabe, Ushiku & Harada 2018, "Maximum Classifier
Discrepancy for Unsupervised Domain Adaptation", CVPR).

Two classifiers ``F1`` (the model's task head) and ``F2`` (a fresh copy of it, in ``self.modules``) on the
shared features ``G(x)``, and their discrepancy on target samples

    d(p1, p2) = mean over target samples and classes of |p1 − p2|    (softmax outputs; L1 distance / K)

The paper alternates three optimizer steps per batch: (A) ``G``, ``F1``, ``F2`` minimize the source losses;
(B) with ``G`` fixed, the classifiers minimize ``L_source − d`` (find target samples outside the source
support); (C) with the classifiers fixed, ``G`` minimizes ``d``, ``n`` times (``n = 4`` for digits).

crosstask takes one optimizer step per training step, so this is the single-step min-max form: one loss
``L = L_source(F1) + L_source(F2) + d`` in which the classifiers receive the *reversed* gradient of ``d``
(they maximize it, as in step B) and the features its plain gradient, times the warm-up coefficient
``reversal`` (they minimize it, as in step C). It is a gradient-reversal layer between ``G`` and the two
classifiers, written on the classifiers' side so that ``transfer`` is ``d`` itself (≥ 0) rather than ``−d``;
the gradients are the same. Differences from the paper: both players move simultaneously, with plain
gradient steps, instead of the classifiers first reaching a maximizer for fixed features; ``n`` generator
steps become one step whose strength is ``reversal`` (try values above 1 to mimic ``n > 1``); the warm-up
(as in DANN; ``warmup_steps: 1`` turns it off) is not in the paper.

TLlib adds a class-balance term to steps A and B, ``balance = −Σ_classifiers mean_k log(mean_batch p_k +
1e-6)`` on the target predictions (TLlib ``mcd.py``, ``--trade-off-entropy``): it is smallest when
each classifier spreads the target batch over all classes, and keeps the features from ending the game the
cheap way, by sending every target sample to one class where both classifiers agree. It is loss
``balance`` with default weight 0.01 (TLlib's default; its digits recipe uses 0.03; ``balance: false`` drops
it).

Losses: ``source`` (F1), ``second_classifier`` (F2's task loss on the labeled streams), ``transfer``
(``d``) and ``balance``; evaluation uses F1. The trade-off on ``d`` (TLlib digits: 0.3) is ``weighting:
{name: static, weights: {transfer: 0.3}}``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.evaluation.losses import task_loss
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.modules.grl import ReversalConfig, call_with_reversed_parameters, scale_gradient
from crosstask.modules.heads import fresh_copy
from crosstask.registry import METHODS


class MCDConfig(AdaptationConfig, ReversalConfig):
    """``reversal``: the weight of the features' side of the game (after warm-up)."""

    balance: bool = Field(
        default=True, description="add TLlib's class-balance term on the target predictions as loss 'balance'"
    )


def classifier_discrepancy(first: Tensor, second: Tensor) -> Tensor:
    """MCD's ``d``: the mean absolute difference of two probability matrices (samples × classes)."""
    return (first - second).abs().mean()


def class_balance(probabilities: Tensor) -> Tensor:
    """``−mean_k log(mean_batch p_k + 1e-6)``: log K when the batch's mean prediction is uniform, large when
    one class takes the whole batch (TLlib's MCD ``entropy``)."""
    return -torch.log(probabilities.mean(0) + 1e-6).mean()


@METHODS.register("mcd", config=MCDConfig)
class MCD(Adaptation):
    """Two classifiers maximize their target discrepancy, the features minimize it (Saito et al. 2018)."""

    default_weights = {"transfer": 0.3, "balance": 0.01}  # TLlib digits trade-offs
    config: MCDConfig

    def __init__(self, config: MCDConfig, model, streams):
        super().__init__(config, model, streams)
        self.modules["second_classifier"] = fresh_copy(model.heads[self.task])
        self.transfer_losses = ("second_classifier", "transfer", *(("balance",) if config.balance else ()))

    def transfer(self, views: Views) -> dict[str, Tensor]:
        coefficient = self.config.coefficient(self.step, self.total_steps)
        first, second = self.model.heads[self.task], self.modules["second_classifier"]
        task = self.tasks[self.task]
        supervised = [
            task_loss(task, second(view.features), view.y, masked=not view.complete)
            for view in (views.source, views.labeled_target)
            if view is not None
        ]
        features = scale_gradient(views.target.features, coefficient)
        p1 = torch.softmax(call_with_reversed_parameters(first, features).float(), dim=1)
        p2 = torch.softmax(call_with_reversed_parameters(second, features).float(), dim=1)
        losses = {"second_classifier": sum(supervised), "transfer": classifier_discrepancy(p1, p2)}
        if self.config.balance:
            second_target = torch.softmax(second(views.target.features).float(), dim=1)
            losses["balance"] = class_balance(views.target.probabilities) + class_balance(second_target)
        return losses
