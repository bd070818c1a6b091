"""Model inputs that are one tensor or a dict of tensors, handled by one set of helpers.

A batch's ``x`` is a tensor (images, table rows) or a mapping of tensors sharing the batch dimension (token
ids and an attention mask; several modalities). Every method base uses these helpers for a batch's size,
for concatenating the batches of several streams into one forward pass and for splitting the result, so a
model whose ``forward`` takes a dict works in every method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

Inputs = Union[Tensor, dict[str, Tensor]]  # noqa: UP007 (a runtime alias)
Shape = Union[tuple[int, ...], dict[str, tuple[int, ...]]]  # noqa: UP007


def as_inputs(x: Any) -> Inputs:
    """``x`` as a tensor (or a dict of tensors); floating point data in the default dtype (numpy and pandas
    data arrive as float64)."""
    if isinstance(x, Mapping):
        return {str(k): as_inputs(v) for k, v in x.items()}
    x = torch.as_tensor(x)
    if x.is_floating_point() and x.dtype != torch.get_default_dtype():
        x = x.to(torch.get_default_dtype())
    return x


def batch_size(x: Inputs) -> int:
    """The number of samples in a batch."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def sample_shape(x: Inputs) -> Shape:
    """The shape of one sample of a batch (without the batch dimension)."""
    if isinstance(x, Mapping):
        return {k: tuple(v.shape[1:]) for k, v in x.items()}
    return tuple(x.shape[1:])


def item_shape(sample: Any) -> Shape:
    """The shape of one unbatched sample (a dataset item's input)."""
    x = as_inputs(sample)
    if isinstance(x, Mapping):
        return {k: tuple(v.shape) for k, v in x.items()}
    return tuple(x.shape)


def describe(shape: Shape) -> str:
    """A shape for messages: ``(1, 28, 28)`` or ``{input_ids: (64,), attention_mask: (64,)}``."""
    if isinstance(shape, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    return str(tuple(shape))


def can_concat(batches: Sequence[Inputs]) -> bool:
    """Whether the batches can go through the model as one batch (same keys, same sample shapes)."""
    first = sample_shape(batches[0])
    return all(sample_shape(b) == first for b in batches[1:])


def concat(batches: Sequence[Inputs]) -> Inputs:
    """One batch holding ``batches`` one after the other."""
    if isinstance(batches[0], Mapping):
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    return torch.cat(list(batches))


def stack(items: Sequence[Inputs]) -> Inputs:
    """Batches of equal size stacked along a new leading dimension (a meta-batch of episodes)."""
    if isinstance(items[0], Mapping):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}
    return torch.stack(list(items))


def select(x: Inputs, i: int) -> Inputs:
    """Element ``i`` of the leading dimension (one episode of a meta-batch)."""
    return {k: v[i] for k, v in x.items()} if isinstance(x, Mapping) else x[i]


def split(x: Inputs, sizes: Sequence[int]) -> list[Inputs]:
    """The inverse of :func:`concat`: batches of ``sizes`` samples."""
    if isinstance(x, Mapping):
        parts = {k: v.split(list(sizes)) for k, v in x.items()}
        return [{k: parts[k][i] for k in x} for i in range(len(sizes))]
    return list(x.split(list(sizes)))


def to_device(x: Inputs, device: torch.device, non_blocking: bool = False) -> Inputs:
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
    return x.to(device, non_blocking=non_blocking)


def repeat(sample: Any, batch: int, device: torch.device | str = "cpu") -> Inputs:
    """A batch of ``batch`` copies of one unbatched sample (dry forward passes that size or check a model)."""
    x = as_inputs(sample)
    if isinstance(x, Mapping):
        return {k: v.unsqueeze(0).expand(batch, *v.shape).to(device) for k, v in x.items()}
    return x.unsqueeze(0).expand(batch, *x.shape).to(device)


def is_tensor(x: Inputs) -> bool:
    return isinstance(x, Tensor)
