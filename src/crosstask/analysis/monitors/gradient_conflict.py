"""Gradient conflict between a run's objectives (tasks in multi-task learning, source/target/alignment terms
in a domain adaptation method), read from the gradient engine's per-objective Jacobian.

Every ``every`` steps: the pairwise cosine similarity of the objectives' gradients on the shared part, the
fraction of pairs that conflict (cosine < 0, the "conflicting gradients" of Yu et al. 2020, PCGrad), and
each objective's gradient norm relative to their mean (the magnitude differences that PCGrad's authors call
the second cause of trouble). On the shared representation by default: the rows the engine already has,
cheap; ``on: parameters`` measures on the shared parameters instead (exact, slower).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from crosstask.analysis.monitors.base import Monitor, MonitorConfig, RunningMatrix, cosine_matrix
from crosstask.registry import MONITORS

if TYPE_CHECKING:
    from crosstask.engine.gradients import StepGradients
    from crosstask.engine.trainer import Trainer


class GradientConflictConfig(MonitorConfig):
    on: Literal["representation", "parameters"] = "representation"


@MONITORS.register("gradient_conflict", config=GradientConflictConfig)
class GradientConflict(Monitor):
    """Pairwise gradient cosine, conflicting-pair fraction and gradient-norm ratios of the objectives."""

    def __init__(self, config: GradientConflictConfig):
        super().__init__(config)
        self.cosine = RunningMatrix()
        self.norms = RunningMatrix()
        self.fraction = RunningMatrix()
        self.names: list[str] = []
        self.space: str | None = None

    def wants_gradients(self, trainer: Trainer) -> bool | str:
        return self.config.on if self.due(trainer) else False

    def on_after_gradients(self, trainer: Trainer, gradients: StepGradients) -> None:
        if not self.due(trainer):
            return
        self.measured(trainer)
        jacobian = gradients.parameter_jacobian if self.config.on == "parameters" else gradients.jacobian
        if jacobian is None or len(gradients.names) < 2:
            return  # nothing shared, or one objective: no pair to compare
        self.names, self.space = list(gradients.names), gradients.space
        if self.config.on == "parameters":
            self.space = "parameters"
        stats = conflict_statistics(jacobian)
        self.cosine.add(stats["cosine"])
        self.norms.add(stats["relative_norms"].unsqueeze(0))
        self.fraction.add(torch.tensor([[stats["conflict_fraction"]]]))
        values: dict[str, float] = {
            "conflict/fraction": stats["conflict_fraction"],
            "conflict/min_cosine": stats["min_cosine"],
            "conflict/mean_cosine": stats["mean_cosine"],
            "conflict/norm_ratio": stats["norm_ratio"],
        }
        k = len(self.names)
        for i, name in enumerate(self.names):
            values[f"conflict/norm/{name}"] = float(stats["relative_norms"][i])
        if k <= self.config.pairs_logged:
            for i in range(k):
                for j in range(i + 1, k):
                    values[f"conflict/cosine/{self.names[i]}|{self.names[j]}"] = float(stats["cosine"][i, j])
        self.log(trainer, values)

    def report(self, trainer: Trainer) -> dict[str, Any] | None:
        if not self.cosine.count:
            return None
        norms, fraction = self.norms.summary(), self.fraction.summary()
        return {
            "names": self.names,
            "space": self.space,
            "every": self.config.every,
            "cosine": self.cosine.summary(),
            "relative_norms": {"mean": norms["mean"][0], "std": norms["std"][0]},
            "conflict_fraction": {"mean": fraction["mean"][0][0], "std": fraction["std"][0][0]},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "space": self.space,
            "cosine": self.cosine.state_dict(),
            "norms": self.norms.state_dict(),
            "fraction": self.fraction.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names, self.space = list(state["names"]), state["space"]
        self.cosine.load_state_dict(state["cosine"])
        self.norms.load_state_dict(state["norms"])
        self.fraction.load_state_dict(state["fraction"])


def conflict_statistics(jacobian: torch.Tensor) -> dict[str, Any]:
    """Cosine matrix, conflicting-pair fraction, min and mean off-diagonal cosine, gradient norms relative
    to their mean and the largest-to-smallest norm ratio of the rows of ``jacobian`` (objectives × dims)."""
    k = jacobian.shape[0]
    cosine = cosine_matrix(jacobian)
    upper = torch.triu_indices(k, k, offset=1)
    pairs = cosine[upper[0], upper[1]]
    norms = jacobian.double().norm(dim=1)
    mean_norm = norms.mean()
    live = norms[norms > 0]
    return {
        "cosine": cosine,
        "conflict_fraction": float((pairs < 0).double().mean()) if pairs.numel() else 0.0,
        "min_cosine": float(pairs.min()) if pairs.numel() else 1.0,
        "mean_cosine": float(pairs.mean()) if pairs.numel() else 1.0,
        "relative_norms": norms / mean_norm if mean_norm > 0 else torch.zeros_like(norms),
        "norm_ratio": float(live.max() / live.min()) if live.numel() else float("nan"),
    }
