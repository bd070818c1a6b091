"""The loss-balancing contract: named objectives in, a combination out, the applied weights returned.

A weighting balances *any* set of named objectives: a multi-task model's task losses, or a transfer method's
``source`` and ``transfer`` objectives. It owns its state explicitly (``state_dict``; learnable parts in
``self.params``, optimized with the model) and reads nothing the trainer happens to set. It computes no
gradient itself: the gradient engine (:mod:`crosstask.engine.gradients`) does, once per step, for every
weighting, and hands a weighting what its family needs:

- :class:`LossWeighting` combines the objective *values* (static, equal, uncertainty, DWA, RLW, GLS, FAMO,
  STCH): ``combine(losses) -> (objective, weights)``; the engine takes one backward pass of the objective.
- :class:`GradientWeighting` is a pure aggregator of per-objective *gradients* (PCGrad, MGDA, CAGrad,
  Nash-MTL, ...): ``aggregate(G, losses) -> (direction, weights)`` on the Jacobian ``G`` (one row per
  objective), taken on the shared parameters or, much cheaper, on the shared representation (config ``on:
  representation``; the engine checks that every objective passes through it, else uses the parameters).
  The shared part receives the direction; every other parameter (heads, gates, a method's own modules)
  receives the plain gradient of the objectives it serves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError
from crosstask.registry import ComponentConfig

log = logging.getLogger(__name__)


@dataclass
class BalanceContext:
    """What a weighting may use besides the losses.

    ``shared_parameters`` are the parameters every loss depends on (the model's shared part);
    ``other_parameters`` the remaining trainable ones (heads, gates, a method's modules). ``shared`` is
    the shared representation of this step (its values: GradDrop reads the activations), when there is one. With
    gradient accumulation, ``backward`` runs once per micro-batch: ``micro_step`` counts them
    (0 .. ``accumulate`` - 1) within optimizer step ``step``, so stateful weightings update once per step.
    The losses a weighting receives are then already divided by ``accumulate`` (so that the micro-batches'
    gradients add up to the step's); a weighting that is not linear in the losses multiplies them back.
    """

    step: int
    shared_parameters: Sequence[nn.Parameter]
    shared: Tensor | None = None
    micro_step: int = 0
    accumulate: int = 1
    other_parameters: Sequence[nn.Parameter] = field(default_factory=list)

    @property
    def last_micro_step(self) -> bool:
        return self.micro_step == self.accumulate - 1


class Weighting:
    """Base class. :meth:`backward` puts gradients on the parameters and returns the weights it applied."""

    needs_task_gradients: ClassVar[bool] = False
    supports_parameters: ClassVar[bool] = True
    supports_representation: ClassVar[bool] = False
    # True: the update does not change when an objective is multiplied by a constant (Nash-MTL), so a method's
    # trade-off on an objective has no effect under it
    scale_invariant: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, loss_names: Sequence[str]):
        self.config = config
        self.loss_names = list(loss_names)
        self.params = nn.ParameterDict()  # learnable weighting parameters, optimized with the model

    @property
    def name(self) -> str:
        return self.config.name

    def stack(self, losses: dict[str, Tensor]) -> Tensor:
        """The losses as one float32 vector in ``loss_names`` order."""
        return torch.stack([losses[n].float() for n in self.loss_names])

    def named(self, weights: Tensor) -> dict[str, Tensor]:
        detached = weights.detach()
        return {n: detached[i] for i, n in enumerate(self.loss_names)}

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params.state_dict(), "state": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params.load_state_dict(state["params"])
        self.load_extra_state(state["state"])

    def extra_state(self) -> dict[str, Any]:
        """Tensors and numbers a stateful weighting keeps between steps (moving averages, histories)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""


# ----------------------------------------------------------------------------- loss weightings


class LossWeighting(Weighting):
    """Weightings of the loss values: one backward pass of ``combine``'s objective."""

    def combine(self, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        """``(objective, weights)`` for the float32 loss vector; weights are what is logged."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- gradient weightings


class GradientWeightingConfig(ComponentConfig):
    """Keys of every gradient weighting."""

    on: Literal["parameters", "representation"] = Field(
        default="parameters",
        description="take per-loss gradients on the shared parameters, or on the shared representation "
        "(much cheaper; needs a model with one shared representation and single-input data)",
    )


class GradientWeighting(Weighting):
    """Weightings of per-loss gradients. Subclasses implement :meth:`aggregate`."""

    needs_task_gradients = True
    supports_representation = True
    config: GradientWeightingConfig

    def __init__(self, config: GradientWeightingConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        if config.on == "representation" and not self.supports_representation:
            raise ConfigError(
                f"weighting.on: '{self.name}' cannot work on the shared representation; use on: parameters"
            )
        if config.on == "parameters" and not self.supports_parameters:
            raise ConfigError(
                f"weighting.on: '{self.name}' works on the shared representation only; use on: representation"
            )

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        """``(direction, weights)`` from the float32 Jacobian ``grads`` (losses × dimensions).

        ``direction`` replaces the summed gradient of the shared part; ``weights`` are what is logged
        (the coefficients of the rows when the direction is a combination of them).
        """
        raise NotImplementedError

    def prescale(self, context: BalanceContext) -> Tensor | None:
        """Weights known before the gradients (GradNorm's, from its last update), multiplied into the objectives
        themselves, so that every parameter, task-specific ones included, sees ``Σ w_i L_i``; ``None``: none."""
        return None

    def own_loss(self, losses: Tensor, context: BalanceContext) -> Tensor | None:
        """A loss that trains the weighting's own parameters (``self.params``) from this step's objective
        values, back-propagated into them alone (IMTL-L's loss scales); ``None``: none."""
        return None
