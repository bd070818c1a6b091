"""MCD: maximum classifier discrepancy (Saito, Watanabe, Ushiku & Harada 2018, "Maximum Classifier
Discrepancy for Unsupervised Domain Adaptation", CVPR).

Two classifiers ``F1`` (the model's task head) and ``F2`` (a fresh copy of it, in ``self.modules``) on the
shared features ``G(x)``, and their discrepancy on target samples

    d(p1, p2) = mean over target samples and classes of |p1 − p2|    (softmax outputs; L1 distance / K)

The paper alternates three optimizer steps per batch: (A) ``G``, ``F1``, ``F2`` minimize the source losses;
(B) with ``G`` fixed, the classifiers minimize ``L_source − d`` (find target samples outside the source
support); (C) with the classifiers fixed, ``G`` minimizes ``d``, ``n`` times (``n = 4`` for digits).

crosstask plays the game across training steps (``schedule: alternating``, the default): one step in which
the classifiers maximize ``d`` on target features without gradient (step B), then ``generator_steps`` steps
(the paper's ``n``) in which the features minimize ``d`` through classifiers that receive no gradient (step
C); every step also trains on the source losses (step A). As in the paper, the two sides have optimizers of
their own (:meth:`~crosstask.engine.method.Method.optimizer_sides`: ``features``, the shared part, and
``classifiers``, both heads of the adapted task): in the features' turns the classifiers' optimizer rests, so
neither their momentum nor their weight decay moves them. The classifiers' side is written as reversed
gradients (:func:`~crosstask.modules.grl.call_with_reversed_parameters`) so that ``transfer`` is ``d``
itself (≥ 0) rather than ``−d``; the gradients are the same. ``schedule: simultaneous`` plays both sides in
every step (the classifiers reversed, the features plain, both optimizers stepping): on our toy shifts this
gradient descent-ascent oscillated, sometimes below source-only, where the alternating game settled above
it. The features' side is multiplied by ``reversal`` after a DANN warm-up (``warmup_steps: 1`` turns the
warm-up off, as in the paper).

TLlib adds a class-balance term to steps A and B, ``balance = −Σ_classifiers mean_k log(mean_batch p_k +
1e-6)`` on the target predictions (TLlib ``mcd.py``, ``--trade-off-entropy``): it is smallest when
each classifier spreads the target batch over all classes, and keeps the features from ending the game the
cheap way, by sending every target sample to one class where both classifiers agree. It is the penalty
``balance`` with coefficient ``balance_weight`` (TLlib's default 0.01; its digits recipe uses 0.03;
``balance: false`` drops it).

Objectives: ``source`` (F1), ``second_classifier`` (F2's task loss on the labeled streams), ``transfer``
(``λ·d``, λ = ``trade_off``; TLlib digits: 0.3); penalty ``balance``. Evaluation uses F1.
"""

from __future__ import annotations

from typing import Literal

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

    schedule: Literal["alternating", "simultaneous"] = Field(
        default="alternating",
        description="alternating: classifier and feature steps take turns (the paper); simultaneous: both each step",
    )
    generator_steps: int = Field(
        default=4, ge=1, description="alternating: feature steps after each classifier step (the paper's n)"
    )

    balance: bool = Field(
        default=True,
        description="add TLlib's class-balance term on the target predictions (penalty 'balance')",
    )
    balance_weight: float = Field(
        default=0.01,
        ge=0.0,
        description="coefficient of the class-balance penalty (TLlib: 0.01; digits 0.03)",
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

    config: MCDConfig
    transfer_losses = ("second_classifier", "transfer")

    def __init__(self, config: MCDConfig, model, streams):
        super().__init__(config, model, streams)
        self.modules["second_classifier"] = fresh_copy(model.heads[self.task])
        self.transfer_penalties = ("balance",) if config.balance else ()

    def penalty_coefficient(self, name: str) -> str:
        return "method.balance_weight"

    def optimizer_sides(self) -> dict[str, list]:
        classifiers = [
            *self.model.heads[self.task].parameters(),
            *self.modules["second_classifier"].parameters(),
        ]
        return {
            "features": [p for p in self.model.shared_parameters() if p.requires_grad],
            "classifiers": [p for p in classifiers if p.requires_grad],
        }

    def classifiers_turn(self) -> bool:
        return self.step % (1 + self.config.generator_steps) == 0

    def resting_sides(self) -> tuple[str, ...]:
        alternating = self.config.schedule == "alternating"
        return ("classifiers",) if alternating and not self.classifiers_turn() else ()

    def transfer(self, views: Views) -> dict[str, Tensor]:
        coefficient = self.config.coefficient(self.step, self.total_steps)
        first, second = self.model.heads[self.task], self.modules["second_classifier"]
        task = self.tasks[self.task]
        supervised = [
            task_loss(task, second(view.features), view.y, masked=not view.complete)
            for view in (views.source, views.labeled_target)
            if view is not None
        ]
        features, classifiers = scale_gradient(views.target.features, coefficient), 1.0
        if self.config.schedule == "alternating":
            if self.classifiers_turn():  # the classifiers' turn: features fixed
                features = views.target.features.detach()
            else:  # the features' turn: the classifiers fixed
                classifiers = 0.0
        p1 = torch.softmax(call_with_reversed_parameters(first, features, classifiers).float(), dim=1)
        p2 = torch.softmax(call_with_reversed_parameters(second, features, classifiers).float(), dim=1)
        losses = {
            "second_classifier": sum(supervised),
            "transfer": self.config.trade_off * classifier_discrepancy(p1, p2),
        }
        if self.config.balance:
            second_target = torch.softmax(second(views.target.features).float(), dim=1)
            balance = class_balance(views.target.probabilities) + class_balance(second_target)
            losses["balance"] = self.config.balance_weight * balance
        return losses
