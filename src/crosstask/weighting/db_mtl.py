"""DB-MTL: dual-balancing multi-task learning (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang & Kwok 2023,
"Dual-Balancing for Multi-Task Learning", arXiv:2308.12029).

Two balancings, of the loss scales and of the gradient magnitudes:

1. each loss is replaced by its logarithm: the per-loss gradient becomes ``∇ log L_i = g_i / L_i``
   (computed from the one Jacobian, with ``L_i + 1e-8`` in the denominator as in the authors' code);
2. an exponential moving average of those gradients, ``ĝ_i ← β_t ĝ_i + (1 − β_t) ∇ log L_i`` with
   ``β_t = β / t^σ`` (``ĝ`` starts at 0), is rescaled to the largest norm among the losses:
   ``d = Σ_i (max_j ‖ĝ_j‖ / ‖ĝ_i‖) · ĝ_i``.

Defaults are the paper's: ``β = 0.9``, ``σ = 0`` (a constant ``β``). The moving average ``ĝ`` (K × D) and
the step count are checkpointed. With gradient accumulation every micro-batch gets the direction of the
average updated with its own gradients (divided by the number of micro-batches), and the average itself
moves once per optimizer step, with the mean of the micro-batches' gradients. Works on the shared
parameters only: a moving average of gradients with respect to the shared representation would average
the gradients of different samples (the authors' library refuses it too). The logged weights are the
magnitude factors ``max_j ‖ĝ_j‖ / ‖ĝ_i‖`` (the direction combines the averages ``ĝ_i``, not this step's
rows). All losses must be non-negative (their logarithm is taken). When the trainable shared parameters
change (gradual unfreezing), the average starts again over the new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig

LOG_EPS = 1e-8

log = logging.getLogger(__name__)


class DBMTLConfig(GradientWeightingConfig):
    beta: float = Field(
        default=0.9,
        ge=0.0,
        lt=1.0,
        description="moving-average factor of the log-loss gradients (paper: 0.9)",
    )
    beta_sigma: float = Field(
        default=0.0, ge=0.0, description="decay of the factor, beta_t = beta / t^beta_sigma (paper: 0)"
    )


@WEIGHTINGS.register("db_mtl", config=DBMTLConfig)
class DBMTL(GradientWeighting):
    """Log losses, then moving-average gradients rescaled to the largest norm (Lin et al. 2023)."""

    supports_representation = False
    config: DBMTLConfig

    def __init__(self, config: DBMTLConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        self.average: Tensor | None = None  # ĝ, K × D
        self.steps = 0  # optimizer steps that updated ĝ
        self._next: Tensor | None = None  # ĝ of the next step, built over the micro-batches

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        if bool((losses < 0).any()):
            negative = [n for n, v in zip(self.loss_names, losses.tolist(), strict=True) if v < 0]
            raise SolverError(
                f"weighting 'db_mtl' at step {context.step + 1}: it takes the logarithm of every loss, but "
                f"{', '.join(negative)} is negative; shift that loss to be >= 0 or use another weighting"
            )
        log_grads = grads / (losses + LOG_EPS)[:, None]
        if self.average is None:
            self.average = torch.zeros_like(log_grads)
        elif self.average.shape != log_grads.shape:  # the trainable shared parameters changed (gradual
            # unfreezing): the old average is over other coordinates, so it starts again
            log.info(
                "db_mtl: the shared gradients changed shape %s -> %s; the moving average starts again",
                tuple(self.average.shape),
                tuple(log_grads.shape),
            )
            self.average, self.steps, self._next = torch.zeros_like(log_grads), 0, None
        average = self.average.to(log_grads.device)
        beta = self.config.beta / (self.steps + 1) ** self.config.beta_sigma
        current = beta * average + (1 - beta) * log_grads
        if context.accumulate > 1:
            if context.micro_step == 0 or self._next is None:
                self._next = beta * average
            self._next = self._next + (1 - beta) / context.accumulate * log_grads
        norms = current.norm(dim=1)
        factors = torch.where(norms > 0, norms.max() / norms.clamp_min(1e-30), torch.zeros_like(norms))
        direction = (factors @ current) / context.accumulate
        if context.last_micro_step:
            self.average = current if context.accumulate == 1 else self._next
            self._next = None
            self.steps += 1
        return direction, factors

    def extra_state(self) -> dict[str, Any]:
        return {"average": self.average, "steps": self.steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.average = state["average"]
        self.steps = int(state["steps"])
        self._next = None
