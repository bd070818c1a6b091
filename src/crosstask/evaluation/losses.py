"""Per-task losses. Missing labels (class -1, target NaN) are masked out without a host synchronisation; when
the labels are known to be complete (``masked=False``), the plain loss is computed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crosstask.registry import LOSSES

LossFn = Callable[[Tensor, Tensor], Tensor]


def _wide(output: Tensor) -> Tensor:
    """``output`` in at least float32 (half-precision outputs of bf16 autocast are widened; float64 stays)."""
    return output if output.dtype in (torch.float32, torch.float64) else output.float()


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _real_targets(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Targets shaped like ``output`` as floats, with NaN (missing) replaced by 0, and the mask of present ones."""
    target = target.reshape(output.shape).to(output.dtype)
    mask = ~torch.isnan(target)
    return torch.nan_to_num(target), mask


@LOSSES.register("cross_entropy")
def cross_entropy(output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """Softmax cross-entropy over class logits; class index -1 marks a missing label."""
    if not masked:
        return F.cross_entropy(_wide(output), target.long())
    mask = target >= 0
    per_sample = F.cross_entropy(_wide(output), target.clamp_min(0).long(), reduction="none")
    return _masked_mean(per_sample, mask)


@LOSSES.register("bce")
def binary_cross_entropy(output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """Sigmoid binary cross-entropy per label (multilabel); NaN marks a missing label."""
    if not masked:
        return F.binary_cross_entropy_with_logits(
            _wide(output), target.reshape(output.shape).to(_wide(output).dtype)
        )
    target, mask = _real_targets(_wide(output), target)
    per_label = F.binary_cross_entropy_with_logits(_wide(output), target, reduction="none")
    return _masked_mean(per_label, mask)


@LOSSES.register("mse")
def mean_squared_error(output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """Mean squared error; NaN marks a missing target."""
    if not masked:
        return F.mse_loss(_wide(output), target.reshape(output.shape).to(_wide(output).dtype))
    target, mask = _real_targets(_wide(output), target)
    return _masked_mean((_wide(output) - target) ** 2, mask)


@LOSSES.register("l1")
def mean_absolute_error(output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """Mean absolute error; NaN marks a missing target."""
    if not masked:
        return F.l1_loss(_wide(output), target.reshape(output.shape).to(_wide(output).dtype))
    target, mask = _real_targets(_wide(output), target)
    return _masked_mean((_wide(output) - target).abs(), mask)


@LOSSES.register("huber")
def huber(output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """Huber loss with delta 1 (smooth L1); NaN marks a missing target."""
    if not masked:
        return F.huber_loss(_wide(output), target.reshape(output.shape).to(_wide(output).dtype), delta=1.0)
    target, mask = _real_targets(_wide(output), target)
    return _masked_mean(F.huber_loss(_wide(output), target, reduction="none", delta=1.0), mask)


def task_loss(task: Any, output: Tensor, target: Tensor, masked: bool = True) -> Tensor:
    """The loss of ``task`` (its ``loss`` or the default for its kind) on one batch; ``masked=False`` when the
    labels are known to be complete (skips the masking of missing labels)."""
    return LOSSES.get(task.loss_name).obj(output, target, masked)
