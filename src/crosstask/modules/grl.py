"""Gradient reversal (Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation", ICML).

The identity on the forward pass; on the backward pass the gradient is multiplied by ``-coefficient``, so
that a feature extractor below it maximizes the loss that the layers above it minimize. The coefficient
warms up from 0 to ``high`` with training progress ``p`` as in the paper (section 5.2.2):

    λ_p = low + (high − low) · (2 / (1 + exp(−α·p)) − 1)        (α = 10, p from 0 to 1)

which keeps the noisy early discriminator from disturbing the features.

Two relatives for min-max games whose adversary sits *above* the features (MCD's classifiers):
:func:`scale_gradient` (identity, gradient times ``coefficient``) and :func:`call_with_reversed_parameters`
(a module whose own parameters get the reversed gradient).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.registry import ComponentConfig


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.coefficient, None


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.coefficient, None


def reverse_gradient(x: Tensor, coefficient: float = 1.0) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-coefficient`` on the way back."""
    return _Reverse.apply(x, float(coefficient))


def scale_gradient(x: Tensor, coefficient: float = 1.0) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``coefficient`` on the way back."""
    return _Scale.apply(x, float(coefficient))


def call_with_reversed_parameters(module: nn.Module, x: Tensor, coefficient: float = 1.0) -> Tensor:
    """``module(x)``, with the gradient reaching the module's parameters multiplied by ``-coefficient``.

    The module then maximizes the loss it feeds while the input's producer still minimizes it: the same
    gradients as a reversal layer below the module and the loss negated, but the loss keeps its sign (a
    discrepancy stays ≥ 0, which weightings that read loss values need). Buffers (batch-norm statistics)
    are the module's own and update as usual.
    """
    parameters = {name: reverse_gradient(p, coefficient) for name, p in module.named_parameters()}
    return torch.func.functional_call(module, parameters, (x,))


def warm_up(progress: float, high: float = 1.0, low: float = 0.0, alpha: float = 10.0) -> float:
    """The DANN schedule ``low + (high − low)(2 / (1 + exp(−α p)) − 1)`` at progress ``p`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return low + (high - low) * (2.0 / (1.0 + math.exp(-alpha * p)) - 1.0)


class ReversalConfig(ComponentConfig):
    """Keys of the methods with a gradient-reversal layer (combine with the method's own config class)."""

    reversal: float = Field(default=1.0, ge=0.0, description="the reversal coefficient reached after warm-up")
    warmup_alpha: float = Field(default=10.0, gt=0.0, description="α of the warm-up 2/(1+exp(-α p)) - 1")
    warmup_steps: int | None = Field(
        default=None,
        ge=1,
        description="steps over which p goes from 0 to 1 (default: the whole run, as in the DANN paper)",
    )

    def coefficient(self, step: int, total_steps: int) -> float:
        """The reversal coefficient at optimizer step ``step`` of ``total_steps``."""
        span = self.warmup_steps or total_steps
        return warm_up(step / max(1, span), self.reversal, 0.0, self.warmup_alpha)
