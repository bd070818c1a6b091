"""The regularizer contract: a penalty toward the starting point, returned as one named loss of ``erm``.

Design: the regularizer's config holds the paper's coefficients (L2-SP's α and β, DELTA's α and β, BSS's η,
LwF's λ_o), and its penalty is returned already scaled, as a **penalty** of ``erm`` named after the
regularizer (``l2sp``, ``delta``, ``bss``, ``lwf``): the gradient engine adds it as it is, under every
weighting, so the objective is the paper's ``L_task + penalty`` whether the task losses are balanced by
``static``, ``uncertainty`` or ``mgda``.

The starting point is the model when training starts (after ``model.init_from`` or the backbone's
``weights``): ``erm`` keeps one frozen copy of it (``start``, in eval mode) for every regularizer that needs
it, and saves it in the method's checkpoint state, so a resumed run keeps the original reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from crosstask.data.streams import Batch
from crosstask.engine.method import StreamSpec
from crosstask.models.model import ModelOutput, MultiTaskModel
from crosstask.registry import ComponentConfig


@dataclass
class StreamForward:
    """One training stream's forward pass in a step: its inputs and the current model's outputs."""

    stream: str
    x: Tensor
    output: ModelOutput


class Regularizer:
    """A penalty toward the starting point. Subclasses implement :meth:`penalty`.

    ``model`` is the model being trained and ``start`` the frozen copy of it at the start of training
    (``None`` for regularizers with ``needs_start = False``).
    """

    needs_start: ClassVar[bool] = True

    def __init__(self, config: ComponentConfig, model: MultiTaskModel, start: MultiTaskModel | None):
        self.config = config
        self.model = model
        self.start = start

    @property
    def name(self) -> str:
        return self.config.name

    def setup(self, trained_tasks: Collection[str]) -> None:
        """Before training: ``trained_tasks`` are the tasks the run's training streams label (LwF keeps the
        others' outputs). Raise a ConfigError here for a setting that cannot work."""

    def prepare(self, draw: Callable[[], dict[str, Batch]], streams: Sequence[StreamSpec]) -> None:
        """Before the first step of a fresh run: what must be computed from training data first (DELTA's
        channel attention). ``draw()`` returns the next training batch of every stream in ``streams``."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep (computed in :meth:`prepare`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Wraps the current model's forward passes of a step (DELTA records feature maps there)."""
        yield

    def penalty(self, forwards: Sequence[StreamForward]) -> Tensor:
        """The scaled penalty of this step, from the forward passes of its training streams."""
        raise NotImplementedError


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that never trains: no gradients, eval mode (fixed normalization, no dropout)."""
    start = copy.deepcopy(model)
    start.requires_grad_(False)
    return start.eval()


def new_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
    """The parameters outside the backbone(s): bottleneck, gates, heads (the paper's ``w_new``)."""
    backbone = {id(p) for p in model.backbone_parameters()}
    return [p for p in model.parameters() if id(p) not in backbone]


def squared_norm(params: Sequence[Tensor], reference: Sequence[Tensor] | None = None) -> Tensor:
    """``Σ ‖p − p0‖²`` over the trainable ``params`` (``p0 = 0`` without ``reference``)."""
    total = None
    for i, p in enumerate(params):
        if not p.requires_grad:
            continue  # frozen: no gradient to give, skip the work
        term = (p - reference[i] if reference is not None else p).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        device = params[0].device if params else None
        return torch.zeros((), device=device)
    return total
