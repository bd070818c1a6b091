"""Soft parameter sharing: one tower per task, with a penalty that keeps corresponding parameters close.

Duong, Cohn, Bird & Cook (2015), "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a
Neural Network Parser", ACL: the towers are tied by "regularization that encourages similar parameters", an
L2 distance between corresponding weights. (Yang & Hospedales 2017 tie them by a trace norm instead; the
L2 penalty is the one implemented here.)

The penalty is ``λ · Σ_w Σ_k ‖w_k − w̄‖²`` over every parameter ``w`` of the tower, where ``w_k`` is task
``k``'s copy and ``w̄`` the mean of the copies; it equals ``λ / K · Σ_{i<j} ‖w_i − w_j‖²``, the pairwise
distances. The trainer adds it to every step's objective outside the loss balancing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class SoftSharingConfig(ComponentConfig):
    """Keys of soft sharing."""

    weight: float = Field(
        default=1e-3,
        ge=0.0,
        description="λ, the weight of the squared L2 distance between corresponding parameters of the towers "
        "(0: independent towers)",
    )
    identical_init: bool = Field(
        default=False,
        description="start every tower from the same weights (copies of the first tower) instead of "
        "independent initialisations",
    )


@ARCHITECTURES.register("soft_sharing", config=SoftSharingConfig)
class SoftSharing(Architecture):
    """One tower per task, pulled together by an L2 penalty between corresponding parameters.

    Every parameter belongs to one task (``shared_parameters()`` is empty) and there is no shared
    representation; the towers interact only through :meth:`regularization`.
    """

    config: SoftSharingConfig

    def __init__(self, config: SoftSharingConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        self.towers = nn.ModuleList(make_trunk() for _ in self.task_names)
        if config.identical_init:
            state = self.towers[0].state_dict()
            for tower in self.towers[1:]:
                tower.load_state_dict(state)

    def tower(self, task: str) -> Trunk:
        """The tower of ``task``."""
        return self.towers[self.task_names.index(task)]

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], None]:
        return {name: tower(x) for name, tower in zip(self.task_names, self.towers, strict=True)}, None

    def out_features(self, task: str) -> int:
        return self.tower(task).num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.tower(task).parameters()

    def regularization(self) -> Tensor | None:
        """``λ · Σ_w Σ_k ‖w_k − w̄‖²`` over the trainable parameters; ``None`` when it is always zero."""
        if self.config.weight == 0 or len(self.towers) < 2:
            return None
        total: Tensor | None = None
        for copies in zip(*(tower.parameters() for tower in self.towers), strict=True):
            if not all(p.requires_grad for p in copies):  # frozen layers: a constant, and nothing to pull
                continue
            stacked = torch.stack(copies)
            distance = (stacked - stacked.mean(0)).pow(2).sum()
            total = distance if total is None else total + distance
        return None if total is None else self.config.weight * total
