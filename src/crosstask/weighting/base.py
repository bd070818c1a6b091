"""The loss-balancing contract: named losses in, gradients out, the applied weights returned.

A weighting balances *any* set of named losses: a multi-task model's task losses, or a transfer method's
``source`` and ``target`` losses. It owns its state explicitly (``state_dict``) and reads nothing the
trainer happens to set. It declares whether it needs per-task gradients and whether it can work on the
shared representation instead of the shared parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from crosstask.registry import ComponentConfig


@dataclass
class BalanceContext:
    """What a weighting may use besides the losses.

    With gradient accumulation, ``backward`` is called once per micro-batch: ``micro_step`` counts them
    (0 .. ``accumulate`` - 1) within optimizer step ``step``, so a stateful weighting can update its state
    once per optimizer step.
    """

    step: int
    shared_parameters: Sequence[nn.Parameter]
    shared: Tensor | None = None
    micro_step: int = 0
    accumulate: int = 1


class Weighting:
    """Base class. :meth:`backward` calls ``backward()`` on the combination and returns the weights used."""

    needs_task_gradients: ClassVar[bool] = False
    supports_representation: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, loss_names: Sequence[str]):
        self.config = config
        self.loss_names = list(loss_names)

    def backward(self, losses: dict[str, Tensor], context: BalanceContext) -> dict[str, Tensor | float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (nothing for stateless weightings)."""
