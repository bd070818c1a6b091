"""Multi-gate Mixture-of-Experts (MMoE).

Ma, Zhao, Yi, Chen, Hong & Chi (2018), "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD. ``E`` experts (here, copies of the trunk) are shared by all tasks; task ``k`` has
its own gate ``g_k(x) = softmax(W_k x)`` on the (flattened) input, and its features are
``f_k(x) = Σ_e g_k(x)_e · expert_e(x)``.

The experts are shared parameters, the gates belong to their task. The shared representation is the
stacked expert outputs ``(n, E, d)``: every path from a task's output to the experts passes through it.
The gates are lazy linear layers (the architecture does not know the input width), sized on the first
forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.architectures._blocks import Gate, mix
from crosstask.architectures.base import Architecture
from crosstask.data.tasks import Task
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class MMoEConfig(ComponentConfig):
    """Keys of MMoE."""

    experts: int = Field(
        default=4, ge=1, description="number of experts (copies of the trunk) shared by all tasks"
    )


@ARCHITECTURES.register("mmoe", config=MMoEConfig)
class MMoE(Architecture):
    """Experts shared by all tasks, mixed by one softmax gate per task computed from the input."""

    config: MMoEConfig

    def __init__(self, config: MMoEConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        self.experts = nn.ModuleList(make_trunk() for _ in range(config.experts))
        self.task_gates = nn.ModuleList(Gate(config.experts) for _ in self.task_names)
        self._gates: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        shared = torch.stack([expert(x) for expert in self.experts], dim=1)  # (n, E, d)
        features, gates = {}, {}
        for name, gate in zip(self.task_names, self.task_gates, strict=True):
            weights = gate(x)
            features[name] = mix(weights, shared)
            gates[name] = weights.detach()
        self._gates = gates
        return features, shared

    def out_features(self, task: str) -> int:
        return self.experts[0].num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.experts.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.task_gates[self.task_names.index(task)].parameters()

    def gates(self) -> dict[str, Tensor]:
        """Each task's weights over the experts in the last forward pass, ``(n, E)``."""
        return dict(self._gates)
