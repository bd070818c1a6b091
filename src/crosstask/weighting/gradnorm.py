"""GradNorm: gradient normalization (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML).

The model is trained on ``Σ_i w_i L_i``: every parameter (shared part, heads, a method's modules) receives
that gradient. The weights ``w_i`` start at 1 and are learned so that the weighted gradient norms
``G_i = ‖∇ w_i L_i‖ = w_i ‖g_i‖`` train at rates matching the losses' progress:

    L̃_i = L_i / L_i(first step),   r_i = L̃_i / mean(L̃),
    L_grad = Σ_i |G_i − mean(G) · r_i^α|      (the target mean(G)·r_i^α held constant)

with one gradient step on ``w`` per optimizer step, ``∂L_grad/∂w_i = sign(G_i − target_i)·‖g_i‖`` (at the
learning rate ``lr``), then the weights are kept positive (at least 1e-6) and renormalized to
``Σ w_i = K``. Defaults: ``α = 1.5`` (the paper's NYUv2 value; it reports 0.12 to 1.5 across its
experiments; larger values balance the training rates more strongly), ``lr = 0.025``. The step on
``w_i`` is ``lr·‖g_i‖``: with large gradient norms lower ``lr``, or the weights jump around the balance.

The norms ``‖g_i‖`` are taken with respect to the shared representation (``on: representation``, cheap) or
to all the shared parameters (``on: parameters``, the default, as for the other gradient weightings); the
paper uses the last shared layer's weights. With gradient accumulation the norms and losses are
averaged over the micro-batches and ``w`` moves once per optimizer step. ``w`` and the first step's
losses are checkpointed; the logged weights are ``w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import (
    BalanceContext,
    GradientWeightingConfig,
    Weighting,
    apply_direction,
    per_loss_gradients,
)

MIN_WEIGHT = 1e-6


class GradNormConfig(GradientWeightingConfig):
    alpha: float = Field(
        default=1.5,
        ge=0.0,
        description="asymmetry: how strongly training rates are equalized (paper: 0.12-1.5)",
    )
    lr: float = Field(default=0.025, gt=0.0, description="learning rate of the loss weights")


@WEIGHTINGS.register("gradnorm", config=GradNormConfig)
class GradNorm(Weighting):
    """Learn loss weights that equalize the weighted gradient norms' training rates (Chen et al. 2018)."""

    needs_task_gradients = True
    supports_parameters = True
    supports_representation = True
    config: GradNormConfig

    def __init__(self, config: GradNormConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        k = len(self.loss_names)
        self.weights = torch.ones(k)
        self.initial: Tensor | None = None  # L_i(first step)
        self._norms = torch.zeros(k)  # summed over the micro-batches of this step
        self._losses = torch.zeros(k)

    def backward(self, losses: dict[str, Tensor], context: BalanceContext) -> dict[str, Tensor]:
        values = self.stack(losses)
        self.weights = self.weights.to(values.device)
        applied = self.weights.clone()
        weighted = [w * losses[n] for w, n in zip(applied, self.loss_names, strict=True)]
        others = [p for p in context.other_parameters if p.requires_grad]
        # the rows are the weighted gradients w_i·g_i: their sum is the training gradient of the shared part,
        # the heads get Σ w_i ∇L_i on the way, and no second backward pass is needed
        found = per_loss_gradients(weighted, context, self.config.on, others, self.name)
        if found is None:  # nothing shared: no gradient norms to balance
            torch.stack(weighted).sum().backward()
            return self.named(applied)
        rows, targets = found
        apply_direction(rows.sum(dim=0), targets, context)
        norms = rows.norm(dim=1).detach() / applied.to(rows.device).clamp_min(MIN_WEIGHT)
        if context.micro_step == 0:
            self._norms = torch.zeros_like(norms)
            self._losses = torch.zeros_like(norms)
        # the trainer divides the losses by accumulate: the sums are means over the micro-batches
        self._norms = self._norms + norms.to(self._norms.device)
        self._losses = self._losses + values.detach()
        if context.last_micro_step:
            self._update(self._norms, self._losses, context)
        return self.named(applied)

    def _update(self, norms: Tensor, losses: Tensor, context: BalanceContext) -> None:
        if self.initial is None:
            self.initial = losses.clone()
        self.initial = self.initial.to(losses.device)
        ratios = losses / self.initial.clamp_min(1e-12)
        rates = ratios / ratios.mean().clamp_min(1e-12)
        weighted = self.weights * norms
        target = weighted.mean() * rates**self.config.alpha
        grad = torch.sign(weighted - target) * norms
        updated = (self.weights - self.config.lr * grad).clamp_min(MIN_WEIGHT)
        updated = updated * (len(self.loss_names) / updated.sum())
        if not bool(torch.isfinite(updated).all()):
            raise SolverError(
                f"weighting 'gradnorm' produced non-finite weights at step {context.step + 1} (gradient norms "
                f"{norms.tolist()}, losses {losses.tolist()}); check the losses, or lower weighting.lr"
            )
        self.weights = updated

    def extra_state(self) -> dict[str, Any]:
        return {
            "weights": self.weights.clone(),
            "initial": None if self.initial is None else self.initial.clone(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.initial = None if state["initial"] is None else state["initial"].clone()
