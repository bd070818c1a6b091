"""Inter-task affinity from one joint run (Fifty et al. 2021, "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS: TAG).

Every ``every`` steps, on the step's own batch, a lookahead: a gradient step on the shared parameters with
objective ``i``'s gradient alone, ``θ' = θ − η ∇θ L_i``, and the change it makes to every objective ``j``,

    Z_{i→j} = 1 − L_j(θ') / L_j(θ)        (positive: a step for i helps j; negative: it hurts j),

with the heads and everything else unchanged, then the parameters restored. ``η`` is each parameter's
learning rate in its optimizer (``lr`` overrides it); the paper's lookahead uses the optimizer's update, ours
is a plain gradient step at that rate (with Adam, set ``lr`` near the size of Adam's steps, e.g. 0.1, for
measurable changes). Averaged over the measurements (the paper's Ẑ), with its standard deviation. The
gradient-cosine affinity ``cos(∇θ L_i, ∇θ L_j)`` comes from the same Jacobian. The lookahead costs one
forward pass per objective per measurement (``Trainer.objectives_at``: nothing of the run changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import nn

from crosstask.analysis.monitors.base import Monitor, MonitorConfig, RunningMatrix, cosine_matrix
from crosstask.engine.gradients import unflatten
from crosstask.registry import MONITORS

if TYPE_CHECKING:
    from crosstask.engine.gradients import StepGradients
    from crosstask.engine.trainer import Trainer


class TaskAffinityConfig(MonitorConfig):
    lr: float | None = Field(
        default=None, gt=0, description="lookahead step size (default: each parameter's learning rate)"
    )


@MONITORS.register("task_affinity", config=TaskAffinityConfig)
class TaskAffinity(Monitor):
    """Lookahead inter-task affinity (TAG) and gradient-cosine affinity between the objectives."""

    def __init__(self, config: TaskAffinityConfig):
        super().__init__(config)
        self.lookahead = RunningMatrix()
        self.cosine = RunningMatrix()
        self.names: list[str] = []

    def wants_gradients(self, trainer: Trainer) -> bool | str:
        return "parameters" if self.due(trainer) else False

    def on_after_gradients(self, trainer: Trainer, gradients: StepGradients) -> None:
        if not self.due(trainer):
            return
        self.measured(trainer)
        jacobian = gradients.parameter_jacobian
        if jacobian is None or len(gradients.names) < 2 or trainer.batch is None:
            return
        self.names = list(gradients.names)
        rates = self.config.lr or _learning_rates(trainer, gradients.parameters)
        # the Jacobian holds one micro-batch's share of the objectives; a step uses the whole gradient
        affinity = lookahead_affinity(
            trainer, gradients.parameters, jacobian * trainer.config.accumulate, rates, self.names
        )
        self.lookahead.add(affinity)
        self.cosine.add(cosine_matrix(jacobian))
        if len(self.names) <= self.config.pairs_logged:
            self.log(
                trainer,
                {
                    f"affinity/{a}>{b}": float(affinity[i, j])
                    for i, a in enumerate(self.names)
                    for j, b in enumerate(self.names)
                    if i != j
                },
            )

    def report(self, trainer: Trainer) -> dict[str, Any] | None:
        if not self.lookahead.count:
            return None
        return {
            "names": self.names,
            "every": self.config.every,
            "lookahead": self.lookahead.summary(),
            "cosine": self.cosine.summary(),
            "meaning": "lookahead[i][j] = 1 - L_j(after a step on L_i) / L_j(before), averaged over steps",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "lookahead": self.lookahead.state_dict(),
            "cosine": self.cosine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names = list(state["names"])
        self.lookahead.load_state_dict(state["lookahead"])
        self.cosine.load_state_dict(state["cosine"])


def lookahead_affinity(
    trainer: Trainer,
    parameters: Sequence[nn.Parameter],
    jacobian: torch.Tensor,
    rates: float | Sequence[float],
    names: Sequence[str],
) -> torch.Tensor:
    """``Z[i, j] = 1 − L_j(θ − η ∇L_i) / L_j(θ)`` on the trainer's current batch; parameters restored."""
    batch = trainer.batch
    assert batch is not None
    rates = [rates] * len(parameters) if isinstance(rates, int | float) else list(rates)
    saved = [p.detach().clone() for p in parameters]
    before = trainer.objectives_at(batch)
    k = len(names)
    affinity = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        try:
            with torch.no_grad():
                for p, rate, step in zip(parameters, rates, unflatten(parameters, jacobian[i]), strict=True):
                    p.sub_(rate * step)
            after = trainer.objectives_at(batch)
        finally:
            with torch.no_grad():
                for p, original in zip(parameters, saved, strict=True):
                    p.copy_(original)
        for j, name in enumerate(names):  # a non-positive loss has no relative change: 0
            affinity[i, j] = 1.0 - after[name] / before[name] if before[name] > 0 else 0.0
    return affinity


def _learning_rates(trainer: Trainer, parameters: Sequence[nn.Parameter]) -> list[float]:
    """Each parameter's current learning rate in the optimizer that holds it."""
    rate: dict[int, float] = {}
    for optimizer in trainer.optimizers.values():
        for group in optimizer.param_groups:
            for p in group["params"]:
                rate[id(p)] = float(group["lr"])
    return [rate.get(id(p), 0.0) for p in parameters]
