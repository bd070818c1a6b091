"""Cross-stitch networks: one tower per task, their activations mixed after every stage.

Misra, Shrivastava, Gupta & Hebert (2016), "Cross-stitch Networks for Multi-task Learning", CVPR. After
stage ``s`` every task's activation is replaced by a learned linear combination of all tasks' activations,
``x̃_i = Σ_j α^s_ij x_j`` (a K×K cross-stitch unit per stage). The units start at ``α_ii = alpha_same`` and
``α_ij = (1 − alpha_same) / (K − 1)``; the paper's best start for two tasks is (0.9, 0.1). Units follow every
stage of the trunk, including the last (the paper stitches after every pooling and fully connected layer
up to the task classifiers, which are our heads).

Which parameters are shared: each tower is built for one task, but through the units every task's loss
reaches every tower, so for loss balancing (which must balance every parameter that more than one loss
updates) the towers are shared parameters, like the units; only the heads belong to one task.
:meth:`CrossStitch.tower` gives the tower built for a task. There is no shared representation: the last
unit hands each task its own slice, so per-task gradients with respect to it would never overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.architectures._blocks import checked_stages
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class CrossStitchConfig(ComponentConfig):
    """Keys of cross-stitch networks."""

    alpha_same: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="initial weight of a task's own activations in every cross-stitch unit; the rest, "
        "1 - alpha_same, is spread evenly over the other tasks",
    )


def stitch_init(tasks: int, alpha_same: float) -> Tensor:
    """The initial K×K unit: ``alpha_same`` on the diagonal, the rest of each row spread evenly."""
    if tasks == 1:
        return torch.ones(1, 1)
    unit = torch.full((tasks, tasks), (1.0 - alpha_same) / (tasks - 1))
    unit.fill_diagonal_(alpha_same)
    return unit


@ARCHITECTURES.register("cross_stitch", config=CrossStitchConfig)
class CrossStitch(Architecture):
    """One tower per task; after every stage a learnable K×K cross-stitch unit mixes the tasks' activations."""

    config: CrossStitchConfig

    def __init__(self, config: CrossStitchConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        self.towers = nn.ModuleList(make_trunk() for _ in self.task_names)
        # views of the towers' modules: a plain list, so that nothing is registered twice
        self._stages = [checked_stages(tower, "cross_stitch") for tower in self.towers]
        unit = stitch_init(len(self.task_names), config.alpha_same)
        self.units = nn.Parameter(unit.repeat(len(self._stages[0]), 1, 1))  # one K×K unit per stage

    def tower(self, task: str) -> Trunk:
        """The tower built for ``task`` (its parameters reach every task through the units)."""
        return self.towers[self.task_names.index(task)]

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], None]:
        hs = [x] * len(self.towers)
        for s, unit in enumerate(self.units):
            stacked = torch.stack([stages[s](h) for stages, h in zip(self._stages, hs, strict=True)])
            hs = list(torch.einsum("ij,j...->i...", unit.to(stacked.dtype), stacked).unbind(0))
        return dict(zip(self.task_names, hs, strict=True)), None

    def out_features(self, task: str) -> int:
        return self.tower(task).num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()
