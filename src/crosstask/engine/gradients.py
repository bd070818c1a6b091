"""The gradient engine: the one place where a step's objectives and penalties become gradients.

A step returns **objectives** (what the weighting balances) and **penalties** (terms that carry their
method's own coefficient and are added unweighted). Per backward pass (one per micro-batch):

- a **loss weighting** (static, uncertainty, DWA, FAMO, ...) combines the objective values; one backward pass
  of ``combine(objectives) + Σ penalties``;
- a **gradient weighting** (MGDA, PCGrad, Nash-MTL, ...) needs each objective's gradient on the shared part
  (the Jacobian ``G``, one row per objective). The engine computes ``G`` once, on the **shared
  representation** ``z`` when every objective reaches the shared parameters only through ``z`` (checked on
  the autograd graph at every step, not assumed), else on the **shared parameters**. The weighting is then a
  pure aggregator ``G -> (direction, weights)``; the direction goes to the shared parameters, every other
  parameter (heads, a method's discriminator) gets the plain gradient of the objectives it serves, and the
  penalties' gradient is added to every parameter they reach.

The check is what keeps a loss from being cut off: an objective that reaches the shared parameters without
passing through ``z`` (a regularizer on the weights, a second forward pass, a concatenation of features
that the losses never used) would get a zero row on ``z``; the engine takes the exact Jacobian on the
parameters instead (and says so once in the log). An objective that reaches no shared parameter at all has
an exact zero row.

``on: parameters`` with a valid ``z`` takes the rows on ``z`` through each objective's own head, then one
batched backward pass from ``z`` through the encoder (Jacobian descent's split, Quinton & Rey 2024): the same
numbers as a Jacobian on the parameters, at a fraction of the cost. Readers of a step (a gradient-conflict
monitor, task affinity) get the Jacobian through :class:`StepGradients`; with a loss weighting it is computed
only when a reader asks (``Callback.wants_gradients``).

With gradient accumulation each micro-batch's backward pass adds its share (the Trainer divides the
objectives and penalties by the number of micro-batches); a gradient weighting aggregates each micro-batch's
Jacobian. Under distributed data parallel training the reduction will go here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from crosstask.errors import ConfigError, SolverError
from crosstask.weighting.base import BalanceContext, GradientWeighting, LossWeighting, Weighting

log = logging.getLogger(__name__)

Representation = Tensor | Sequence[Tensor] | None


@dataclass
class StepGradients:
    """What one backward pass computed, for the weighting's log and for any reader of the step.

    ``values`` are the objectives' values (detached, float32, in ``names`` order) and ``penalties`` the
    penalties' values. ``jacobian`` (objectives × dimensions) is set when it was computed: always for a
    gradient weighting with shared parameters, for a loss weighting only when a reader asked. ``space`` says
    what its columns are: ``"representation"`` (the shared representation, flattened) or ``"parameters"``
    (``parameters``, the trainable shared parameters, flattened in order); ``reason`` why the parameters were
    used when the representation was asked for. ``parameter_jacobian`` is the Jacobian on ``parameters``
    whenever it is known: when ``space`` is ``"parameters"``, or when a reader asked for it (a lookahead step
    on one objective needs it). Both are the objectives' own gradients, also under a weighting that prescales
    the objectives (GradNorm, IMTL's hybrid) before taking them.
    """

    names: list[str]
    values: Tensor
    weights: dict[str, Tensor | float]
    penalties: dict[str, Tensor] = field(default_factory=dict)
    space: str | None = None
    jacobian: Tensor | None = None
    reason: str | None = None
    parameter_jacobian: Tensor | None = None
    parameters: list[nn.Parameter] = field(default_factory=list)


class GradientEngine:
    """Turns objectives and penalties into ``.grad`` of the parameters, with one weighting.

    Args:
        weighting: the loss balancing (its ``loss_names`` are the objectives' names, in order).
        shared_parameters: the parameters every objective may depend on (the model's shared part).
        other_parameters: the other trainable parameters (heads, gates, a method's own modules).
    """

    def __init__(
        self,
        weighting: Weighting,
        shared_parameters: Sequence[nn.Parameter],
        other_parameters: Sequence[nn.Parameter] = (),
    ):
        self.weighting = weighting
        self.shared_parameters = list(shared_parameters)
        self.other_parameters = list(other_parameters)
        self._reported: set[str] = set()

    def backward(
        self,
        objectives: Mapping[str, Tensor],
        penalties: Mapping[str, Tensor] | None = None,
        representation: Representation = None,
        *,
        step: int = 0,
        micro_step: int = 0,
        accumulate: int = 1,
        keep_jacobian: bool | str = False,
    ) -> StepGradients:
        """Put the gradients of one backward pass on the parameters; returns what was computed.

        ``keep_jacobian``: a reader wants every objective's gradient, ``"representation"`` (or True: on the
        shared representation where valid) or ``"parameters"`` (on the shared parameters, also when the
        weighting works on the representation)."""
        keep = (
            "parameters" if keep_jacobian == "parameters" else ("representation" if keep_jacobian else None)
        )
        names = self.weighting.loss_names
        losses = [objectives[n] for n in names]
        penalties = dict(penalties or {})
        penalty = _total(penalties.values())
        shared = [p for p in self.shared_parameters if p.requires_grad]
        pieces = _pieces(representation)
        context = BalanceContext(
            step,
            shared,
            _joined(pieces),
            micro_step,
            accumulate,
            [p for p in self.other_parameters if p.requires_grad],
        )
        values = torch.stack([loss.detach().float() for loss in losses]) if losses else torch.zeros(0)
        record = StepGradients(
            list(names), values, {}, {k: v.detach().float() for k, v in penalties.items()}, parameters=shared
        )
        if not losses:
            if penalty is not None and penalty.requires_grad:
                penalty.backward()
            return record
        weighting = self.weighting
        gradient_weighting = isinstance(weighting, GradientWeighting)
        if gradient_weighting:
            scale = weighting.prescale(context)
            if scale is not None:
                scale = scale.to(losses[0].device)
                losses = [loss * scale[i].to(loss.dtype) for i, loss in enumerate(losses)]
        else:
            scale = None
        differentiable = [loss for loss in losses if loss.requires_grad]
        if not shared or not differentiable or not (gradient_weighting or keep):
            self._plain_backward(losses, penalty, context, record, scale)
            return record

        asked = weighting.config.on if gradient_weighting else keep
        space, reason = self._space(names, losses, pieces, shared, asked)
        others = context.other_parameters if gradient_weighting else []
        if space == "representation" or (space == "parameters" and reason is None and pieces):
            rows = _rows_on_representation(losses, pieces, others)
            if space != "representation":
                jacobian = _encoder_jacobian(pieces, shared, rows)
            elif len(rows) == 1:  # one piece: a view, no copy of the (objectives × batch × features) rows
                jacobian = rows[0].flatten(1).float()
            else:
                jacobian = torch.cat([r.flatten(1) for r in rows], dim=1).float()
            if keep == "parameters":
                record.parameter_jacobian = (
                    jacobian if space == "parameters" else _encoder_jacobian(pieces, shared, rows)
                )
        else:
            jacobian = _parameter_jacobian(losses, shared, others)
            record.parameter_jacobian = jacobian
        record.space, record.jacobian, record.reason = space, jacobian, reason
        if scale is not None:  # readers get the objectives' own gradients, not the prescaled ones
            unscale = scale.to(jacobian).clamp_min(1e-12).unsqueeze(1)
            record.jacobian = jacobian / unscale
            if record.parameter_jacobian is not None:
                record.parameter_jacobian = record.parameter_jacobian / unscale

        if not gradient_weighting:
            self._plain_backward(losses, penalty, context, record, scale)
            return record
        direction, weights = weighting.aggregate(jacobian, values, context)
        if not bool(torch.isfinite(direction).all()):
            raise SolverError(
                f"weighting '{weighting.name}' produced a non-finite direction at step {step + 1} "
                f"(objectives {dict(zip(names, values.tolist(), strict=True))}); check the losses, or lower "
                "the learning rate"
            )
        record.weights = weighting.named(weights * scale if scale is not None else weights)
        own = weighting.own_loss(values, context)
        if penalty is not None and penalty.requires_grad:
            penalty.backward(retain_graph=True)
        if own is not None:
            own.backward(inputs=list(weighting.params.parameters()))
        if space == "representation":
            parts = direction.split([p.numel() for p in pieces])
            torch.autograd.backward(
                list(pieces),
                [d.view_as(p).to(p.dtype) for d, p in zip(parts, pieces, strict=True)],
                inputs=shared,
            )
        else:
            _add_to_gradients(shared, direction)
        return record

    # ------------------------------------------------------------------ pieces

    def _plain_backward(
        self,
        losses: list[Tensor],
        penalty: Tensor | None,
        context: BalanceContext,
        record: StepGradients,
        scale: Tensor | None,
    ) -> None:
        """One backward pass: the loss weighting's combination (a gradient weighting with nothing shared to
        balance: the plain sum) plus the penalties."""
        stacked = torch.stack([loss.float() for loss in losses])
        if isinstance(self.weighting, LossWeighting):
            total, weights = self.weighting.combine(stacked, context)
        else:
            total, weights = stacked.sum(), torch.ones_like(stacked.detach())
            if scale is not None:
                weights = weights * scale
        record.weights = self.weighting.named(weights)
        if penalty is not None:
            total = total + penalty
        if isinstance(
            self.weighting, GradientWeighting
        ):  # nothing shared to balance: its own loss still trains
            own = self.weighting.own_loss(stacked.detach(), context)
            if own is not None:
                total = total + own
        if total.requires_grad:
            total.backward()

    def _space(
        self,
        names: Sequence[str],
        losses: Sequence[Tensor],
        pieces: Sequence[Tensor],
        shared: Sequence[nn.Parameter],
        asked: str,
    ) -> tuple[str, str | None]:
        """Where the Jacobian is taken: the representation when asked for and valid, else the parameters;
        and why not the representation (``None`` when it is valid or was not asked for)."""
        reason = None
        if not pieces:
            reason = "the step returned no shared representation"
        else:
            stops = {(p.grad_fn, p.output_nr) for p in pieces if p.grad_fn is not None}
            targets = {id(p) for p in shared}
            for name, loss in zip(names, losses, strict=True):
                if bypasses(loss, stops, targets):
                    reason = (
                        f"objective '{name}' reaches the shared parameters without passing through the shared "
                        "representation"
                    )
                    break
        if asked == "representation" and reason is not None and not self.weighting.supports_parameters:
            raise ConfigError(
                f"weighting '{self.weighting.name}' works on the shared representation only, but {reason}; "
                "choose a weighting that works on: parameters"
            )
        gradient_weighting = isinstance(self.weighting, GradientWeighting)
        if (
            gradient_weighting
            and asked == "representation"
            and reason is not None
            and reason not in self._reported
        ):
            self._reported.add(reason)
            log.warning(
                "weighting '%s', on: representation: per-objective gradients on the shared parameters instead "
                "(exact, slower): %s",
                self.weighting.name,
                reason,
            )
        if asked == "representation":
            return ("representation", None) if reason is None else ("parameters", reason)
        return "parameters", reason


def bypasses(loss: Tensor, stops: set[tuple[object, int]], targets: set[int]) -> bool:
    """Whether ``loss``'s autograd graph reaches a parameter in ``targets`` (by id) on a path that avoids every
    ``stops`` edge (a ``(grad_fn, output_nr)`` pair: the representation tensors)."""
    root = loss.grad_fn
    if root is None:
        return False
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if variable is not None:  # an AccumulateGrad node: a leaf
            if id(variable) in targets:
                return True
            continue
        for child, output_nr in node.next_functions:
            if child is None or child in seen or (child, output_nr) in stops:
                continue
            seen.add(child)
            stack.append(child)
    return False


def _pieces(representation: Representation) -> list[Tensor]:
    if representation is None:
        return []
    pieces = [representation] if isinstance(representation, Tensor) else list(representation)
    return [p for p in pieces if p is not None and p.requires_grad]


def _joined(pieces: Sequence[Tensor]) -> Tensor | None:
    """The representation as one tensor for weightings that read its values (GradDrop's activations)."""
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    if all(p.shape[1:] == pieces[0].shape[1:] for p in pieces):
        return torch.cat([p.detach() for p in pieces])
    return torch.cat([p.detach().flatten() for p in pieces])


def _total(values: Sequence[Tensor] | object) -> Tensor | None:
    total = None
    for value in values:
        total = value if total is None else total + value
    return total


def _rows_on_representation(
    losses: Sequence[Tensor], pieces: Sequence[Tensor], others: Sequence[nn.Parameter]
) -> list[Tensor]:
    """``∂L_i/∂z`` for every objective (one tensor per representation piece, stacked over the objectives), by
    one pass per objective through its own head; the ``others``' gradients are summed over the objectives
    and added to their ``.grad`` on the way. The objectives are passed separately, not stacked: a pass from
    one element of a stacked vector would walk every objective's graph with zero gradients."""
    rows: list[list[Tensor]] = [[] for _ in pieces]
    sums: list[Tensor | None] = [None] * len(others)
    for loss in losses:
        if not loss.requires_grad:
            for j, piece in enumerate(pieces):
                rows[j].append(torch.zeros_like(piece))
            continue
        grads = torch.autograd.grad(loss, [*pieces, *others], retain_graph=True, allow_unused=True)
        for j, piece in enumerate(pieces):
            g = grads[j]
            rows[j].append(g if g is not None else torch.zeros_like(piece))
        for j, g in enumerate(grads[len(pieces) :]):
            if g is not None:
                sums[j] = g if sums[j] is None else sums[j] + g
    for p, g in zip(others, sums, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return [torch.stack(r) for r in rows]


def _encoder_jacobian(
    pieces: Sequence[Tensor], params: Sequence[nn.Parameter], rows: Sequence[Tensor]
) -> Tensor:
    """Rows ``Σ_pieces (∂z/∂θ)ᵀ c_i`` for the cotangents ``rows``: one batched backward pass through the
    encoder (one pass per objective where an operation has no batching rule)."""
    k = rows[0].shape[0]
    try:
        grads = torch.autograd.grad(
            list(pieces),
            list(params),
            grad_outputs=list(rows),
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        return torch.cat([g.reshape(k, -1) for g in grads], dim=1).float()
    except RuntimeError as exc:  # an op without a batching rule
        log.debug("batched encoder Jacobian unavailable (%s); one backward pass per objective", exc)
    out = []
    for i in range(k):
        grads = torch.autograd.grad(
            list(pieces),
            list(params),
            grad_outputs=[r[i] for r in rows],
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out).float()


def _parameter_jacobian(
    losses: Sequence[Tensor], params: Sequence[nn.Parameter], others: Sequence[nn.Parameter]
) -> Tensor:
    """The Jacobian of the objectives on the shared parameters (through the whole graph), and the plain
    gradient of their sum on ``others``."""
    rows = jacobian([loss.float() for loss in losses], params)
    live = [loss for loss in losses if loss.requires_grad]
    if others and live:
        total = _total(live)
        torch.autograd.backward(total, inputs=list(others), retain_graph=True)
    return rows


def jacobian(losses: Sequence[Tensor], inputs: Sequence[Tensor]) -> Tensor:
    """The gradient of every loss with respect to ``inputs``, flattened: a (losses × dimensions) float32 matrix.

    One batched backward pass (``is_grads_batched``) when autograd supports it for the graph, else one pass
    per loss. The graph is kept for the backward passes that follow.
    """
    k = len(losses)
    width = sum(p.numel() for p in inputs)
    live = [i for i, loss in enumerate(losses) if loss.requires_grad]
    out = torch.zeros(k, width, device=inputs[0].device if inputs else None)
    if not live or not inputs:
        return out
    stacked = torch.stack([losses[i] for i in live])
    eye = torch.eye(len(live), device=stacked.device, dtype=stacked.dtype)
    try:
        grads = torch.autograd.grad(
            stacked,
            list(inputs),
            grad_outputs=eye,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        out[live] = torch.cat([g.reshape(len(live), -1) for g in grads], dim=1).float()
        return out
    except RuntimeError as exc:  # an op without a batching rule: one pass per loss
        log.debug("batched Jacobian unavailable (%s); one backward pass per loss", exc)
    for i in live:
        grads = torch.autograd.grad(
            losses[i], list(inputs), retain_graph=True, allow_unused=True, materialize_grads=True
        )
        out[i] = torch.cat([g.reshape(-1) for g in grads]).float()
    return out


def unflatten(params: Sequence[Tensor], flat: Tensor) -> list[Tensor]:
    """A flat vector over ``params`` (a Jacobian row, a direction) cut into one view per parameter, in the
    parameters' shapes and dtypes."""
    pieces, offset = [], 0
    for p in params:
        n = p.numel()
        pieces.append(flat[offset : offset + n].view_as(p).to(p.dtype))
        offset += n
    return pieces


def _add_to_gradients(params: Sequence[nn.Parameter], direction: Tensor) -> None:
    """Add the flat ``direction`` to the parameters' gradients (adding: gradient accumulation)."""
    for p, piece in zip(params, unflatten(params, direction), strict=True):
        p.grad = piece.clone() if p.grad is None else p.grad + piece
