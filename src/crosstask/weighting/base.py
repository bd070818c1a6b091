"""The loss-balancing contract: named losses in, gradients out, the applied weights returned.

A weighting balances *any* set of named losses: a multi-task model's task losses, or a transfer method's
``source`` and ``transfer`` losses. It owns its state explicitly (``state_dict``; learnable parts in
``self.params``, optimized with the model) and reads nothing the trainer happens to set.

Two families share all the mechanics here, so a method file only holds its formula:

- :class:`LossWeighting` combines the loss *values* (static, equal, uncertainty, DWA, RLW, GLS, FAMO, STCH):
  ``combine(losses) -> (objective, weights)``; one backward pass of the objective.
- :class:`GradientWeighting` combines per-loss *gradients* (PCGrad, MGDA, CAGrad, Nash-MTL, ...):
  ``aggregate(G, losses) -> (direction, weights)`` on the Jacobian ``G`` (one row per loss), taken either on
  the shared parameters or, much cheaper, on the shared representation (config ``on: representation``).
  The shared part receives the direction; every other parameter (heads, gates, a method's own modules)
  receives the plain gradient of the losses it serves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError, SolverError
from crosstask.registry import ComponentConfig

log = logging.getLogger(__name__)


@dataclass
class BalanceContext:
    """What a weighting may use besides the losses.

    ``shared_parameters`` are the parameters every loss depends on (the model's shared part);
    ``other_parameters`` the remaining trainable ones (heads, gates, a method's modules). ``shared`` is
    the shared representation of this step, when the model has one and the data is single-input. With
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

    def __init__(self, config: ComponentConfig, loss_names: Sequence[str]):
        self.config = config
        self.loss_names = list(loss_names)
        self.params = nn.ParameterDict()  # learnable weighting parameters, optimized with the model

    @property
    def name(self) -> str:
        return self.config.name

    def backward(self, losses: dict[str, Tensor], context: BalanceContext) -> dict[str, Tensor | float]:
        raise NotImplementedError

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

    def backward(self, losses: dict[str, Tensor], context: BalanceContext) -> dict[str, Tensor]:
        objective, weights = self.combine(self.stack(losses), context)
        objective.backward()
        return self.named(weights)


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

    def backward(self, losses: dict[str, Tensor], context: BalanceContext) -> dict[str, Tensor]:
        separate = [losses[n] for n in self.loss_names]
        values = torch.stack(separate)
        others = [p for p in context.other_parameters if p.requires_grad]
        found = per_loss_gradients(separate, context, self.config.on, others, self.name)
        if found is None:  # nothing shared (towers, a frozen body): no conflict to balance
            values.sum().backward()
            return self.named(torch.ones_like(values))
        grads, targets = found
        direction, weights = self.aggregate(grads, values.detach().float(), context)
        if not bool(torch.isfinite(direction).all()):
            raise SolverError(
                f"weighting '{self.name}' produced a non-finite direction at step {context.step + 1} "
                f"(losses {values.detach().tolist()}); check the losses, or lower the learning rate"
            )
        apply_direction(direction, targets, context)
        return self.named(weights)


def per_loss_gradients(
    losses: Sequence[Tensor],
    context: BalanceContext,
    on: str,
    others: Sequence[nn.Parameter] = (),
    what: str = "weighting",
) -> tuple[Tensor, list[Tensor]] | None:
    """The float32 Jacobian of the losses (one row per loss) on the shared parameters (``on: parameters``) or on
    the shared representation (``on: representation``), and the tensors it is taken on; ``None`` when the
    model shares nothing trainable. The plain gradient of the summed losses goes to ``others`` on the way.

    With a shared representation ``z`` the work is split as in Jacobian descent (Quinton & Rey 2024): one
    backward pass per loss through its own head only gives ``∂L_i/∂z`` (and the heads' gradients), then on
    parameters one batched backward pass from ``z`` through the shared encoder. Without one, one batched
    backward pass per loss through the whole graph. The losses are passed separately, not stacked: a pass
    from one element of a stacked vector would walk every loss's graph with zero gradients.
    """
    shared_params = [p for p in context.shared_parameters if p.requires_grad]
    shared = context.shared
    if on == "representation" and shared is None:
        raise ConfigError(
            f"weighting '{what}' with on: representation needs the shared representation, which this step does "
            "not have (an architecture without one, or multi-input data): use on: parameters"
        )
    if not shared_params or (shared is not None and not shared.requires_grad):
        return None
    if shared is None:
        values = torch.stack(list(losses))
        rows = jacobian(values, shared_params)
        if others:
            torch.autograd.backward(values.sum(), inputs=list(others), retain_graph=True)
        return rows, shared_params
    heads = _through_representation(losses, shared, others)
    if on == "representation":
        return heads.flatten(1).float(), [shared]
    return _encoder_jacobian(shared, shared_params, heads), shared_params


def _through_representation(
    losses: Sequence[Tensor], shared: Tensor, others: Sequence[nn.Parameter]
) -> Tensor:
    """``∂L_i/∂z`` for every loss (stacked) by one pass per loss through its own head; the others' gradients are
    summed over the losses and added to their ``.grad``."""
    rows, sums = [], [None] * len(others)
    for loss in losses:
        grads = torch.autograd.grad(loss, [shared, *others], retain_graph=True, allow_unused=True)
        rows.append(grads[0] if grads[0] is not None else torch.zeros_like(shared))
        for j, g in enumerate(grads[1:]):
            if g is not None:
                sums[j] = g if sums[j] is None else sums[j] + g
    for p, g in zip(others, sums, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return torch.stack(rows)


def _encoder_jacobian(shared: Tensor, params: Sequence[nn.Parameter], cotangents: Tensor) -> Tensor:
    """Rows ``(∂z/∂θ)ᵀ c_i`` for every cotangent ``c_i``: one batched backward pass through the encoder."""
    k = cotangents.shape[0]
    try:
        grads = torch.autograd.grad(
            shared,
            params,
            grad_outputs=cotangents,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        return torch.cat([g.reshape(k, -1) for g in grads], dim=1).float()
    except RuntimeError as exc:  # an op without a batching rule: one pass per loss
        log.debug("batched encoder Jacobian unavailable (%s); one backward pass per loss", exc)
    rows = []
    for i in range(k):
        grads = torch.autograd.grad(
            shared,
            params,
            grad_outputs=cotangents[i],
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).float()


def apply_direction(direction: Tensor, targets: Sequence[Tensor], context: BalanceContext) -> None:
    """Put the aggregated direction on the shared part: directly on the parameters, or backpropagated from the
    shared representation through the encoder."""
    if len(targets) == 1 and targets[0] is context.shared:
        shared = context.shared
        torch.autograd.backward(
            shared,
            direction.view_as(shared).to(shared.dtype),
            inputs=[p for p in context.shared_parameters if p.requires_grad],
        )
    else:
        write_gradient(targets, direction)


def jacobian(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """The gradient of every loss with respect to ``inputs``, flattened: a (losses × dimensions) matrix.

    One batched backward pass (``is_grads_batched``) when autograd supports it for the graph, else one
    pass per loss. The graph is kept for the backward passes that follow.
    """
    k = losses.numel()
    eye = torch.eye(k, device=losses.device, dtype=losses.dtype)
    try:
        grads = torch.autograd.grad(
            losses,
            inputs,
            grad_outputs=eye,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        return torch.cat([g.reshape(k, -1) for g in grads], dim=1)
    except RuntimeError as exc:  # an op without a batching rule: fall back to one pass per loss
        log.debug("batched Jacobian unavailable (%s); one backward pass per loss", exc)
    rows = []
    for i in range(k):
        grads = torch.autograd.grad(
            losses[i], inputs, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def write_gradient(params: Sequence[nn.Parameter], direction: Tensor) -> None:
    """Add the flat ``direction`` to the parameters' gradients (adding: gradient accumulation)."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = direction[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = piece.clone() if p.grad is None else p.grad + piece
        offset += n
