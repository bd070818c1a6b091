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

from collections.abc import Callable

from pydantic import Field

from crosstask.data.tasks import Task
from crosstask.models.architectures._blocks import ExpertMixture, Gate
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class MMoEConfig(ComponentConfig):
    """Keys of MMoE."""

    experts: int = Field(
        default=4, ge=1, description="number of experts (copies of the trunk) shared by all tasks"
    )


@ARCHITECTURES.register("mmoe", config=MMoEConfig)
class MMoE(ExpertMixture):
    """Experts shared by all tasks, mixed by one softmax gate per task computed from the input."""

    config: MMoEConfig
    legacy_gating = "task_gates"

    def __init__(self, config: MMoEConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks, config.experts)
        self.gating.extend(Gate(config.experts) for _ in self.task_names)
