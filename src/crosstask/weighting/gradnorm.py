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
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig

MIN_WEIGHT = 1e-6


class GradNormConfig(GradientWeightingConfig):
    alpha: float = Field(
        default=1.5,
        ge=0.0,
        description="asymmetry: how strongly training rates are equalized (paper: 0.12-1.5)",
    )
    lr: float = Field(default=0.025, gt=0.0, description="learning rate of the loss weights")


@WEIGHTINGS.register("gradnorm", config=GradNormConfig)
class GradNorm(GradientWeighting):
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
        self._applied = self.weights

    def prescale(self, context: BalanceContext) -> Tensor:
        # the model trains on Σ w_i L_i: the engine multiplies the objectives by w, so the rows are w_i·g_i
        self._applied = self.weights.clone()
        return self._applied

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        applied = self._applied.to(grads.device)
        norms = grads.norm(dim=1).detach() / applied.clamp_min(MIN_WEIGHT)
        if context.micro_step == 0:
            self._norms = torch.zeros_like(norms)
            self._losses = torch.zeros_like(norms)
        # the trainer divides the losses by accumulate: the sums are means over the micro-batches
        self._norms = self._norms + norms
        self._losses = self._losses + losses.to(norms.device)
        if context.last_micro_step:
            self._update(self._norms, self._losses, context)
        return grads.sum(dim=0), torch.ones_like(applied)  # the engine reports ones × w

    def _update(self, norms: Tensor, losses: Tensor, context: BalanceContext) -> None:
        self.weights = self.weights.to(norms.device)
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
