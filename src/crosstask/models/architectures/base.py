"""The architecture contract: how tasks share a network.

An architecture maps an input to one feature tensor per task (the model adds the heads) and says which of
its parameters are shared and which belong to one task::

    @ARCHITECTURES.register("hard_sharing", config=HardSharingConfig)
    class HardSharing(Architecture): ...

It is built with a ``make_trunk`` factory, so that architectures with several towers or experts can
create as many backbones as they need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.backbones.base import Backbone
from crosstask.models.trunk import Trunk
from crosstask.registry import ComponentConfig


class Architecture(nn.Module):
    """Base class. ``forward(x)`` returns ``(features by task, shared representation or None)``."""

    def __init__(self, config: ComponentConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__()
        self.config = config
        self.task_names = [t.name for t in tasks]

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        raise NotImplementedError

    def out_features(self, task: str) -> int:
        """Width of the features handed to ``task``'s head."""
        raise NotImplementedError

    def backbones(self) -> list[Backbone]:
        """Every backbone inside (for freezing and backbone learning rates)."""
        return [m for m in self.modules() if isinstance(m, Backbone)]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return iter(())

    def gates(self) -> dict[str, Tensor]:
        """Gate weights per task from the last forward pass, for gated architectures (empty otherwise)."""
        return {}

    def regularization(self) -> Tensor | None:
        """A penalty added to every step's objective outside the loss balancing (soft sharing's distance
        between towers, say); ``None`` for none."""
        return None
