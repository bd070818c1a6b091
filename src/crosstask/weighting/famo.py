"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS).

FAMO decreases every loss at about the same *relative* rate with one backward pass per step. With logits
``ξ`` (one per loss, starting at 0), ``z = softmax(ξ)`` and ``D_i = L_i − l_i^min + ε``, the model follows the
gradient of

    Σ_i c·z_i·log D_i,    c = (Σ_j z_j / D_j)^(-1)  (a constant in the backward pass)

i.e. ``Σ_i w_i ∇L_i`` with ``w_i = c·z_i / D_i`` (the logged weights; they sum to 1). The logits are not
trained by the model's optimizer but by FAMO's own rule, from the change of the log losses
``δ_i = log D_i(before) − log D_i(after)``: their gradient is ``J_zᵀ δ + γ ξ`` (``J_z`` the softmax Jacobian, so
``(J_zᵀ δ)_i = z_i (δ_i − Σ_j z_j δ_j)``): a loss that fell faster than the others loses weight.
``logit_optimizer: sgd`` is the paper's Algorithm 1, ``ξ ← ξ − β (J_zᵀ δ + γ ξ)``; ``adam`` (the default) takes
an Adam step with learning rate β on that gradient instead, as the paper's practical version (Algorithm 2)
and its experiments do. ``β = 0.025``, ``γ = 0.001`` and ``l^min = 0`` are the paper's defaults.

**Deviation, documented.** The paper measures ``δ`` on the *same* batch before and after the model update,
with a second forward pass. Here every step is one forward and one backward pass: ``δ`` compares the
previous step's losses with this step's (consecutive batches), so it is noisier, and the logits update as
soon as this step's losses are known, before its backward pass. With gradient accumulation the trainer
passes ``L_i / accumulate`` per micro-batch; the weights use the unscaled losses, ``δ`` uses the step's
mean losses, and the logits move after the step's last micro-batch (the weights then lag one step).

The losses must stay above ``l^min − ε``: otherwise ``log D`` is undefined and FAMO raises ``SolverError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from crosstask.errors import ConfigError, SolverError, suggest
from crosstask.registry import WEIGHTINGS, ComponentConfig
from crosstask.weighting.base import BalanceContext, LossWeighting

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as in the paper's experiments
ADAM_EPS = 1e-8


class FAMOConfig(ComponentConfig):
    lr: float = Field(default=0.025, gt=0.0, description="step size β of the logits (the paper's 0.025)")
    weight_decay: float = Field(
        default=0.001, ge=0.0, description="regularization γ of the logits towards 0 (the paper's 0.001)"
    )
    logit_optimizer: Literal["adam", "sgd"] = Field(
        default="adam",
        description="adam: an Adam step on the logits (the paper's practical Algorithm 2 and experiments); "
        "sgd: the plain rule of Algorithm 1, ξ ← ξ − β(J_zᵀδ + γξ)",
    )
    min_losses: dict[str, float] = Field(
        default_factory=dict, description="lower bound l^min per loss name (unlisted losses: 0)"
    )
    eps: float = Field(default=1e-8, gt=0.0, description="ε added to L − l^min before the logarithm")

    @field_validator("min_losses")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"min_losses must be finite; not for {', '.join(bad)}")
        return value


def softmax_vjp(z: Tensor, delta: Tensor) -> Tensor:
    """``J_zᵀ δ`` for ``z = softmax(ξ)``: ``z_i (δ_i − Σ_j z_j δ_j)``."""
    return z * (delta - (z * delta).sum())


@WEIGHTINGS.register("famo", config=FAMOConfig)
class FAMO(LossWeighting):
    """FAMO: weights c·z_i/L_i with logits z learned from the losses' relative decrease, O(1) per step (Liu et al. 2023)."""

    config: FAMOConfig

    def __init__(self, config: FAMOConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        for name in config.min_losses:
            if name not in self.loss_names:
                raise ConfigError(
                    f"weighting.min_losses.{name}: the method produces no loss '{name}'."
                    f"{suggest(name, self.loss_names)} Its losses: {', '.join(self.loss_names)}"
                )
        k = len(self.loss_names)
        self._min_losses = torch.tensor([float(config.min_losses.get(n, 0.0)) for n in self.loss_names])
        self.logits = torch.zeros(k)  # ξ: FAMO's own state, not a model parameter
        self._adam_m = torch.zeros(k)
        self._adam_v = torch.zeros(k)
        self._adam_t = 0
        self._previous: Tensor | None = None  # D of the previous step (its mean over micro-batches)
        self._pending: Tensor | None = None  # D of this step, summed over its micro-batches

    def _to(self, device: torch.device) -> None:
        if self.logits.device != device:
            self.logits = self.logits.to(device)
            self._adam_m = self._adam_m.to(device)
            self._adam_v = self._adam_v.to(device)
            self._min_losses = self._min_losses.to(device)
            if self._previous is not None:
                self._previous = self._previous.to(device)

    def update_logits(self, current: Tensor) -> None:
        """One FAMO step of the logits from the previous and the current ``D`` (no autograd involved)."""
        previous, self._previous = self._previous, current
        if previous is None:
            return
        delta = previous.log() - current.log()
        gradient = softmax_vjp(torch.softmax(self.logits, dim=0), delta)
        gradient = gradient + self.config.weight_decay * self.logits
        if self.config.logit_optimizer == "sgd":
            self.logits = self.logits - self.config.lr * gradient
            return
        beta1, beta2 = ADAM_BETAS
        self._adam_t += 1
        self._adam_m = beta1 * self._adam_m + (1 - beta1) * gradient
        self._adam_v = beta2 * self._adam_v + (1 - beta2) * gradient.square()
        m_hat = self._adam_m / (1 - beta1**self._adam_t)
        v_hat = self._adam_v / (1 - beta2**self._adam_t)
        self.logits = self.logits - self.config.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        self._to(losses.device)
        accumulate = context.accumulate
        shifted = losses * accumulate - self._min_losses + self.config.eps  # D_i, unscaled
        if not bool((shifted > 0).all()):
            values = (losses.detach() * accumulate).tolist()
            bad = ", ".join(
                f"{n}={v:.4g} (l^min {m:g})"
                for n, v, m, d in zip(
                    self.loss_names, values, self._min_losses.tolist(), shifted.tolist(), strict=True
                )
                if not d > 0
            )
            raise SolverError(
                f"weighting 'famo' at step {context.step + 1}: FAMO needs every loss above its lower bound "
                f"l^min, got {bad}. Set weighting.min_losses to a bound each loss stays above, or pick "
                "another weighting for this method"
            )
        detached = shifted.detach()
        if context.micro_step == 0 or self._pending is None:
            self._pending = detached / accumulate
        else:
            self._pending = self._pending + detached / accumulate
        if context.last_micro_step and accumulate == 1:
            self.update_logits(self._pending)
        z = torch.softmax(self.logits, dim=0)
        c = 1.0 / (z / detached).sum()
        objective = (c * z * torch.log(shifted)).sum() / accumulate
        weights = c * z / detached
        if context.last_micro_step and accumulate > 1:
            self.update_logits(self._pending)
        return objective, weights

    def extra_state(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().cpu().clone(),
            "adam_m": self._adam_m.cpu().clone(),
            "adam_v": self._adam_v.cpu().clone(),
            "adam_t": self._adam_t,
            "previous": None if self._previous is None else self._previous.cpu().clone(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = self.logits.device
        self.logits = state["logits"].to(device)
        self._adam_m = state["adam_m"].to(device)
        self._adam_v = state["adam_v"].to(device)
        self._adam_t = int(state["adam_t"])
        self._previous = None if state["previous"] is None else state["previous"].to(device)
        self._pending = None
