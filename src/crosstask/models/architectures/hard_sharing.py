"""Hard parameter sharing (Caruana 1997): one shared trunk, one head per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


@ARCHITECTURES.register("hard_sharing")
class HardSharing(Architecture):
    """One shared trunk for all tasks; only the heads are task-specific."""

    def __init__(self, config: ComponentConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        self.trunk = make_trunk()

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        shared = self.trunk(x)
        return dict.fromkeys(self.task_names, shared), shared

    def out_features(self, task: str) -> int:
        return self.trunk.num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()
