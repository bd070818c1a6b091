"""Smooth Tchebycheff scalarization (Lin, Zhang, Yang, Liu, Wang & Zhang 2024, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML).

The Tchebycheff scalarization ``max_i λ_i (L_i − z_i)`` minimizes the worst weighted gap to an ideal point
``z``; its smooth version replaces the max by a log-sum-exp with smoothing ``μ``:

    g_μ(L) = μ · log Σ_i exp(λ_i (L_i − z_i) / μ)

which lies within ``[max_i λ_i (L_i − z_i), max + μ log K]`` and tends to the max as ``μ → 0``. Its gradient is
``Σ_i s_i λ_i ∇L_i`` with ``s = softmax(λ (L − z) / μ)``: the logged weights are these coefficients
``s_i λ_i`` (with uniform preferences they sum to 1, the loss furthest from its ideal value weighing most).

Defaults: preference ``λ_i = 1``, ideal point ``z = 0`` (``ideal: running_min`` takes the lowest step-mean
value each loss has reached so far, including this batch's), ``μ = 1`` (the authors' multi-task default).
``log: true`` scalarizes ``log L_i`` (and ``log z_i``) instead, as the authors' multi-task code does; that
code also divides the losses by their mean over warm-up epochs (a shift of ``log L`` only, which
``ideal: running_min`` stands in for here) and scales the objective by ``K`` (a constant). With gradient
accumulation the trainer passes ``L_i / accumulate`` per micro-batch: the scalarization is taken on the
unscaled losses and its gradient scaled by ``1/accumulate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from crosstask.errors import ConfigError, SolverError, suggest
from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting


class STCHConfig(ComponentConfig):
    mu: float = Field(
        default=1.0, gt=0.0, description="smoothing μ (the authors' multi-task default 1); → 0 is the max"
    )
    preference: dict[str, float] = Field(
        default_factory=dict, description="preference λ_i > 0 per loss name (unlisted losses: 1)"
    )
    ideal: Literal["zero", "running_min"] = Field(
        default="zero",
        description="ideal point z: 0, or the lowest value each loss has reached so far (step means)",
    )
    log: bool = Field(
        default=False, description="scalarize log L_i instead of L_i (the authors' multi-task code)"
    )

    @field_validator("preference")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not v > 0]
        if bad:
            raise ValueError(f"preferences must be > 0; not for {', '.join(bad)}")
        return value


@WEIGHTINGS.register("stch", config=STCHConfig)
class STCH(LossWeighting):
    """Smooth Tchebycheff: μ·log Σ exp(λ_i(L_i − z_i)/μ), a smooth max of the gaps to an ideal point (Lin et al. 2024)."""

    config: STCHConfig

    def __init__(self, config: STCHConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        for name in config.preference:
            if name not in self.loss_names:
                raise ConfigError(
                    f"weighting.preference.{name}: the method produces no loss '{name}'."
                    f"{suggest(name, self.loss_names)} Its losses: {', '.join(self.loss_names)}"
                )
        self._preference = torch.tensor([float(config.preference.get(n, 1.0)) for n in self.loss_names])
        self._minimum: Tensor | None = None  # running minimum of the step-mean losses (ideal: running_min)
        self._pending: Tensor | None = None  # this step's losses, summed over its micro-batches

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        accumulate = context.accumulate
        full = losses * accumulate
        if self.config.log and not bool((full > 0).all()):
            bad = ", ".join(
                f"{n}={v:.4g}"
                for n, v in zip(self.loss_names, full.detach().tolist(), strict=True)
                if not v > 0
            )
            raise SolverError(
                f"weighting 'stch' at step {context.step + 1}: log: true needs positive losses, got {bad}. "
                "Set weighting.log: false for losses that can reach 0 or go below"
            )
        if self._preference.device != losses.device:
            self._preference = self._preference.to(losses.device)
        values = torch.log(full) if self.config.log else full
        detached = full.detach()
        if self.config.ideal == "running_min":
            best = detached if self._minimum is None else torch.minimum(self._minimum.to(detached), detached)
            ideal = torch.log(best) if self.config.log else best
        else:
            ideal = torch.zeros_like(detached)
        scaled = self._preference * (values - ideal) / self.config.mu
        objective = self.config.mu * torch.logsumexp(scaled, dim=0) / accumulate
        weights = torch.softmax(scaled.detach(), dim=0) * self._preference
        if self.config.log:
            weights = weights / detached
        if self.config.ideal == "running_min":
            if context.micro_step == 0 or self._pending is None:
                self._pending = losses.detach().clone()
            else:
                self._pending = self._pending + losses.detach()
            if context.last_micro_step:
                step_mean = self._pending
                self._minimum = (
                    step_mean
                    if self._minimum is None
                    else torch.minimum(self._minimum.to(step_mean), step_mean)
                )
        return objective, weights

    def extra_state(self) -> dict[str, Any]:
        return {"minimum": None if self._minimum is None else self._minimum.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._minimum = state["minimum"]
        self._pending = None
