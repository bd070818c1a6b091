"""Extra classifier heads of adaptation methods (MDD's adversary, MCD's second classifier).

Both papers take the extra head from the same hypothesis class as the task head (MDD: ``f′ ∈ F``; MCD:
two classifiers of one architecture, initialized differently), so it is a copy of the model's head with
freshly drawn weights.
"""

from __future__ import annotations

import copy

from torch import nn


def fresh_copy(head: nn.Module) -> nn.Module:
    """A deep copy of ``head`` with every layer's parameters drawn anew (``reset_parameters``)."""
    clone = copy.deepcopy(head)
    for layer in clone.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone
