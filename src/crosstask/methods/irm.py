"""IRMv1: invariant risk minimization (Arjovsky, Bottou, Gulrajani & Lopez-Paz 2019, "Invariant Risk
Minimization", arXiv:1907.02893).

A predictor is invariant when the same classifier on top of the features is optimal in every domain. IRMv1
(the paper's equation 4 / section 3) measures how far from optimal a fixed "dummy" classifier ``w = 1.0``
(a scale on the logits) is in each domain ``e``, by the squared gradient of that domain's risk::

    min_Φ  Σ_e R^e(Φ)  +  λ · ‖∇_{w | w=1.0} R^e(w · Φ)‖²

Objective ``risk`` (the mean of the domain risks) and penalty ``penalty`` (λ times the mean of the domain
penalties; λ = ``penalty_weight``, added as it is under every weighting).
``unbiased: true`` uses the paper's unbiased estimate (section 3.2): the product of the gradients on the two
halves of a domain's batch instead of the square of one.

Anneal (section 5.1 of the paper, and DomainBed): the penalty is weighted lightly for the first
``anneal_steps``, then with λ: the effective weight is ``λ · anneal_scale`` before the switch and ``λ``
after, so ``anneal_scale = 1/λ`` is the papers' weight 1 before the switch. Defaults are DomainBed's
(Gulrajani & Lopez-Paz 2021): λ = 100, ``anneal_steps: 500``, ``anneal_scale: 0.01``. At the switch the
loss jumps by a factor of up to λ; the paper's code rescales the loss, DomainBed starts Adam afresh. Here the
method clears the optimizer's state when the switch step starts (``reset_optimizer``; see
:class:`~crosstask.methods.generalization.PenaltyAnnealConfig`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.tasks import Task
from crosstask.evaluation.losses import task_loss
from crosstask.methods.generalization import (
    DomainView,
    Generalization,
    GeneralizationConfig,
    PenaltyAnnealConfig,
)
from crosstask.registry import METHODS


class IRMConfig(GeneralizationConfig, PenaltyAnnealConfig):
    penalty_weight: float = Field(default=100.0, ge=0.0, description="λ: the weight of the IRMv1 penalty")
    unbiased: bool = Field(
        default=False, description="product of the two half-batch gradients instead of the squared gradient"
    )


def irm_penalty(task: Task, logits: Tensor, y: Tensor, masked: bool = True, unbiased: bool = False) -> Tensor:
    """``‖∇_w R(w · logits)‖²`` at ``w = 1.0`` for one domain (``unbiased``: the product of the gradients on
    the even and odd samples). Differentiable with respect to ``logits``."""
    scale = torch.ones((), device=logits.device, dtype=torch.float32, requires_grad=True)
    scaled = logits.float() * scale
    if not unbiased:
        (grad,) = torch.autograd.grad(task_loss(task, scaled, y, masked), scale, create_graph=True)
        return grad.pow(2)
    first = task_loss(task, scaled[0::2], y[0::2], masked)
    second = task_loss(task, scaled[1::2], y[1::2], masked)
    (grad_first,) = torch.autograd.grad(first, scale, create_graph=True)
    (grad_second,) = torch.autograd.grad(second, scale, create_graph=True)
    return grad_first * grad_second


@METHODS.register("irm", config=IRMConfig)
class IRM(Generalization):
    """IRMv1: domain risks plus the squared gradient of each at a dummy classifier scale (Arjovsky et al. 2019)."""

    config: IRMConfig
    objective_losses = ("risk",)
    penalty_losses = ("penalty",)

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        task = self.tasks[self.task]
        risk = self.risks(views).mean()
        penalty = torch.stack(
            [irm_penalty(task, v.logits, v.y, not v.complete, self.config.unbiased) for v in views]
        ).mean()
        return {"risk": risk, "penalty": penalty * self.config.penalty_factor(self.step)}
