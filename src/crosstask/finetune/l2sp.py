"""L2-SP: Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML; the L2-SP penalty:

    Ω(w) = α/2 · ‖w_S − w_S⁰‖² + β/2 · ‖w_S̄‖²

``w_S`` are the parameters transferred from the source (here: the backbone), ``w_S⁰`` their values at the
starting point, ``w_S̄`` the new ones (bottleneck, heads). L2-SP replaces weight decay: set
``optim.weight_decay: 0`` with it. The loss is named ``l2sp``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field
from torch import Tensor

from crosstask.finetune.base import Regularizer, StreamForward, new_parameters, squared_norm
from crosstask.registry import REGULARIZERS, ComponentConfig


class L2SPConfig(ComponentConfig):
    alpha: float = Field(default=0.1, ge=0.0, description="α: pull of the backbone toward the starting point")
    beta: float = Field(default=0.01, ge=0.0, description="β: plain L2 on the new layers (bottleneck, heads)")


@REGULARIZERS.register("l2sp", config=L2SPConfig)
class L2SP(Regularizer):
    """α/2·‖w_backbone − w⁰‖² + β/2·‖w_new‖² (Li et al. 2018, ICML)."""

    config: L2SPConfig

    def __init__(self, config: L2SPConfig, model, start):
        super().__init__(config, model, start)
        backbone = {id(p) for p in model.backbone_parameters()}
        reference = dict(start.named_parameters())
        pairs = [(p, reference[name]) for name, p in model.named_parameters() if id(p) in backbone]
        self.anchored = [p for p, _ in pairs]
        self.reference = [p0 for _, p0 in pairs]
        self.new = new_parameters(model)

    def penalty(self, forwards: Sequence[StreamForward]) -> Tensor:
        alpha, beta = self.config.alpha, self.config.beta
        return alpha / 2 * squared_norm(self.anchored, self.reference) + beta / 2 * squared_norm(self.new)
