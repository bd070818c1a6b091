"""Pieces several architectures share: input gates, expert mixing, stage bookkeeping, shape-agnostic layers.

Architectures do not know the input shape (they get a ``make_trunk`` factory, not a sample), so layers whose
width depends on the input or on a stage's output are *lazy*: their parameters are registered at
construction (the optimizer holds them) and take their shape on the first forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ComponentConfig


def upcast(t: Tensor) -> Tensor:
    """``t`` in float32 when it is in a half-precision type (softmax and products of gates under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def summarize(h: Tensor, pool_maps: bool) -> Tensor:
    """One vector per sample: feature maps averaged over space when ``pool_maps``, else flattened."""
    if pool_maps and h.dim() > 2:
        return h.flatten(2).mean(-1)
    return h.flatten(1)


class Gate(nn.Module):
    """Softmax weights over ``choices`` from a linear map of its input (flattened, or channel means).

    Args:
        choices: how many weights (experts) the gate produces per sample.
        pool_maps: read feature maps by their channel means instead of flattening them (gates on
            intermediate convolutional features stay small).
    """

    def __init__(self, choices: int, pool_maps: bool = False):
        super().__init__()
        self.linear = nn.LazyLinear(choices)
        self.pool_maps = pool_maps

    def forward(self, h: Tensor) -> Tensor:
        return torch.softmax(upcast(self.linear(summarize(h, self.pool_maps))), dim=-1)


def gate_input(x: Any, experts: nn.ModuleList) -> Tensor:
    """What input gates read: the input itself, or for dict inputs (token ids) the experts' backbone's vector
    summary of it (``Backbone.summarize_input``, computed by the first expert)."""
    return x if isinstance(x, Tensor) else experts[0].backbone.summarize_input(x)


def mix(weights: Tensor, stacked: Tensor) -> Tensor:
    """``Σ_e weights[:, e] · stacked[:, e]`` for ``(n, E)`` weights and ``(n, E, ...)`` expert outputs."""
    return torch.einsum("ne,ne...->n...", weights.to(stacked.dtype), stacked)


class ExpertMixture(Architecture):
    """Experts (copies of the trunk) shared by all tasks, mixed per task by that task's gating module (MMoE,
    DSelect-k). Subclasses fill ``self.gating`` with one module per task (in task order) that maps the input
    to ``(n, E)`` weights. The shared representation is the stacked expert outputs ``(n, E, d)``."""

    legacy_gating: ClassVar[str | None] = None  # the gating's name in checkpoints written before this base

    def __init__(
        self, config: ComponentConfig, make_trunk: Callable[[], Trunk], tasks: list[Task], experts: int
    ):
        super().__init__(config, make_trunk, tasks)
        self.experts = nn.ModuleList(make_trunk() for _ in range(experts))
        self.gating = nn.ModuleList()
        self._gates: dict[str, Tensor] = {}

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if self.legacy_gating:  # older checkpoints keep loading
            old = f"{prefix}{self.legacy_gating}."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{prefix}gating.{key[len(old) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        shared = torch.stack([expert(x) for expert in self.experts], dim=1)  # (n, E, d)
        features, gates = {}, {}
        summary = gate_input(x, self.experts)
        for name, gating in zip(self.task_names, self.gating, strict=True):
            weights = gating(summary)
            features[name] = mix(weights, shared)
            gates[name] = weights.detach()
        self._gates = gates
        return features, shared

    def out_features(self, task: str) -> int:
        return self.experts[0].num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.experts.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.gating[self.task_names.index(task)].parameters()

    def gates(self) -> dict[str, Tensor]:
        """Each task's weights over the experts in the last forward pass, ``(n, E)``."""
        return dict(self._gates)


def run(stages: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Apply ``stages`` in turn."""
    for stage in stages:
        x = stage(x)
    return x


def _holders(stage: nn.Module) -> list[nn.Module]:
    """The modules whose parameters a stage uses: itself, and the module whose method a ``Lambda`` stage
    calls (the default stage of a backbone is ``Lambda(backbone.forward_features)``)."""
    owner = getattr(getattr(stage, "fn", None), "__self__", None)
    return [stage, owner] if isinstance(owner, nn.Module) else [stage]


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules`` (stages included), each once, in order."""
    seen: set[int] = set()
    out = []
    for module in (holder for m in modules for holder in _holders(m)):
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def checked_stages(trunk: Trunk, architecture: str) -> list[nn.Module]:
    """The trunk's stages, after checking that together they hold every parameter of the trunk (an
    architecture that works stage by stage would otherwise leave parameters untrained)."""
    stages = trunk.stages()
    covered = {id(p) for p in unique_parameters(stages)}
    missing = [name for name, p in trunk.named_parameters() if id(p) not in covered]
    if missing:
        raise ConfigError(
            f"architecture '{architecture}' works stage by stage, but the stages of backbone "
            f"{type(trunk.backbone).__name__} leave out parameters ({', '.join(missing[:3])}); "
            "its stages() must cover all of its layers"
        )
    return stages


def group_stages(n_stages: int, groups: int) -> list[list[int]]:
    """Split stage indices ``0..n_stages-1`` into ``groups`` consecutive runs, the first ones longer."""
    size, extra = divmod(n_stages, groups)
    out, start = [], 0
    for g in range(groups):
        stop = start + size + (1 if g < extra else 0)
        out.append(list(range(start, stop)))
        start = stop
    return out


# ----------------------------------------------------------------------------- shape-agnostic lazy layers


class LazyProjection(LazyModuleMixin, nn.Module):
    """A per-position linear map of the channels: a ``kernel_size`` convolution on feature maps
    ``(n, C, H, W)``, a linear layer on vectors ``(n, C)``. Input and output widths are set on the first call
    (``forward(h, out_channels)``), so it can be built before the shapes of a backbone's stages are known.
    """

    cls_to_become = None

    def __init__(self, kernel_size: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            # the default initialisation of nn.Linear and nn.Conv2d
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def initialize_parameters(self, h: Tensor, out_channels: int) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                if h.dim() == 4:
                    shape = (out_channels, h.shape[1], self.kernel_size, self.kernel_size)
                else:
                    shape = (out_channels, h.shape[1])
                self.weight.materialize(shape)
                self.bias.materialize((out_channels,))
                self.reset_parameters()

    def forward(self, h: Tensor, out_channels: int) -> Tensor:
        if h.dim() == 4:
            return F.conv2d(h, self.weight, self.bias, padding=self.weight.shape[-1] // 2)
        return F.linear(h, self.weight, self.bias)


class AnyRankBatchNorm(nn.BatchNorm1d):
    """Batch normalization over dimension 1 of inputs of any rank ≥ 2 (vectors and feature maps alike)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got rank {input.dim()}")


class LazyAnyRankBatchNorm(nn.LazyBatchNorm1d):
    """:class:`AnyRankBatchNorm` whose width is set by its first input."""

    cls_to_become = AnyRankBatchNorm  # type: ignore[assignment]

    def _check_input_dim(self, input: Tensor) -> None:
        AnyRankBatchNorm._check_input_dim(self, input)  # type: ignore[arg-type]
