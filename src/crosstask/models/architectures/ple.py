"""Progressive Layered Extraction (PLE): stacked Customized Gate Control levels.

Tang, Liu, Zhao & Gong (2020), "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys. Every level (extraction network) has ``shared_experts``
experts and ``task_experts`` experts per task. Task ``k``'s gate mixes its own experts and the shared ones;
below the top level a shared gate mixes *all* experts of the level into the input of the next level's
shared experts. Each task's branch feeds its own experts and gate at the next level.

Levels on the trunk's stages: there are ``shared_experts + K · task_experts`` copies of the trunk, one per
expert slot, and the trunk's stages are split into ``levels`` consecutive groups (default: one level per
stage); the expert of a slot at level ``l`` is that copy's ``l``-th group of stages. Gates read the
flattened input at the first level and, above it, their branch's features (channel means of feature
maps, so that gates on convolutional features stay small); they are lazy linear layers sized on the first
forward pass.

Which parameters are shared (every parameter that more than one task's loss reaches): all shared experts
and shared gates, and the task experts below the top level, since the shared gate passes their output to
every task; the gates of a task below the top two levels feed its experts, hence the shared gate, too.
A task owns its top-level experts and its gates at the top two levels (with ``task_experts: 0``, all its
gates). With one level (= CGC) the shared representation is the stacked shared-expert outputs; with more
there is none, as shared parameters reach the tasks through the shared experts of the top level *and*
through each task's own top-level experts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.models.architectures._blocks import (
    Gate,
    checked_stages,
    gate_input,
    group_stages,
    mix,
    run,
    unique_parameters,
)
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class ExpertsConfig(ComponentConfig):
    """Expert counts of CGC and PLE."""

    shared_experts: int = Field(
        default=2, ge=1, description="experts shared by all tasks (per level), each a copy of the trunk"
    )
    task_experts: int = Field(
        default=1, ge=0, description="experts of each task (per level), each a copy of the trunk"
    )


class PLEConfig(ExpertsConfig):
    """Keys of PLE."""

    levels: int | None = Field(
        default=None,
        ge=1,
        description="extraction levels: the trunk's stages are split into this many consecutive groups "
        "(at most the number of stages); default: one level per stage",
    )


@ARCHITECTURES.register("ple", config=PLEConfig)
class PLE(Architecture):
    """Progressive Layered Extraction: CGC levels on the trunk's stages, linked by shared-expert gates."""

    config: ExpertsConfig

    def __init__(self, config: ExpertsConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        k, s, t = len(self.task_names), config.shared_experts, config.task_experts
        # expert slots: the shared ones first, then task 0's, task 1's, ...
        self.experts = nn.ModuleList(make_trunk() for _ in range(s + k * t))
        stages = [checked_stages(trunk, config.name) for trunk in self.experts]
        levels = self.level_count(len(stages[0]))
        groups = group_stages(len(stages[0]), levels)
        # views of the experts' modules, [slot][level] -> stages: plain lists, nothing registered twice
        self._slots = [[[slot[i] for i in group] for group in groups] for slot in stages]
        self.levels = levels
        # gates above the first level read feature maps by their channel means
        self.task_gates = nn.ModuleList(
            nn.ModuleList(Gate(t + s, pool_maps=level > 0) for _ in self.task_names)
            for level in range(levels)
        )
        self.shared_gates = nn.ModuleList(Gate(k * t + s, pool_maps=level > 0) for level in range(levels - 1))
        self._gates: dict[str, Tensor] = {}

    def level_count(self, n_stages: int) -> int:
        """How many levels the trunk's ``n_stages`` stages are split into."""
        levels = getattr(self.config, "levels", None) or n_stages
        if levels > n_stages:
            raise ConfigError(
                f"architecture.levels: {self.config.name} with levels={levels} needs a trunk of at least "
                f"{levels} stages, but this one has {n_stages}; use levels <= {n_stages}, a deeper backbone, "
                "or leave levels unset (one level per stage)"
            )
        return levels

    def _task_slots(self, task: int) -> range:
        s, t = self.config.shared_experts, self.config.task_experts
        return range(s + task * t, s + (task + 1) * t)

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        s = self.config.shared_experts
        task_h, shared_h = [x] * len(self.task_names), x
        summary = gate_input(x, self.experts)  # what the first level's gates read
        shared_out: Tensor | None = None
        gates: dict[str, Tensor] = {}
        for level in range(self.levels):
            shared_out = torch.stack([run(self._slots[i][level], shared_h) for i in range(s)], dim=1)
            task_out = [
                [run(self._slots[i][level], task_h[k]) for i in self._task_slots(k)]
                for k in range(len(self.task_names))
            ]
            next_h = []
            for k, name in enumerate(self.task_names):
                own = torch.stack(task_out[k], dim=1) if task_out[k] else shared_out[:, :0]
                weights = self.task_gates[level][k](summary if level == 0 else task_h[k])
                next_h.append(mix(weights, torch.cat([own, shared_out], dim=1)))
                gates[name] = weights.detach()
            if level < self.levels - 1:
                everything = (
                    torch.stack([o for outs in task_out for o in outs], dim=1) if any(task_out) else None
                )
                pool = shared_out if everything is None else torch.cat([everything, shared_out], dim=1)
                shared_h = mix(self.shared_gates[level](summary if level == 0 else shared_h), pool)
            task_h = next_h
        self._gates = gates
        return dict(zip(self.task_names, task_h, strict=True)), shared_out if self.levels == 1 else None

    def out_features(self, task: str) -> int:
        return self.experts[0].num_features

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        k = self.task_names.index(task)
        top = self.levels - 1
        experts = [stage for i in self._task_slots(k) for stage in self._slots[i][top]]
        # a task's gates feed only its own branch; below the top two levels that branch feeds its experts,
        # whose outputs the shared gate hands to every task
        lowest = 0 if self.config.task_experts == 0 else max(0, top - 1)
        gates = [self.task_gates[level][k] for level in range(lowest, top + 1)]
        return iter(unique_parameters([*experts, *gates]))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        owned = {id(p) for task in self.task_names for p in self.task_parameters(task)}
        return (p for p in self.parameters() if id(p) not in owned)

    def gates(self) -> dict[str, Tensor]:
        """Each task's top-level gate weights in the last forward pass, ``(n, task_experts + shared_experts)``:
        its own experts first, then the shared ones."""
        return dict(self._gates)
