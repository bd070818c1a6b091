"""Test helper: one backward pass of a weighting through the gradient engine, from a BalanceContext."""

from __future__ import annotations

from torch import Tensor

from crosstask.engine.gradients import GradientEngine
from crosstask.weighting.base import BalanceContext, Weighting


def balance(weighting: Weighting, losses: dict[str, Tensor], context: BalanceContext, penalties=None) -> dict:
    """What ``weighting.backward(losses, context)`` did before the engine: the gradients of one backward pass
    on the parameters, and the applied weights returned."""
    engine = GradientEngine(weighting, context.shared_parameters, context.other_parameters)
    record = engine.backward(
        losses,
        penalties,
        context.shared,
        step=context.step,
        micro_step=context.micro_step,
        accumulate=context.accumulate,
    )
    return record.weights
