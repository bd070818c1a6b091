"""DELTA: Li, Xiong, Wang, Rao, Liu, Chen & Huan 2019, "DELTA: DEep Learning Transfer using Feature Map with
Attention for Convolutional Networks", ICLR; the regularizer:

    Ω(w) = α · Σ_j W_j · ‖FM_j(w, x) − FM_j(w⁰, x)‖² + β/2 · ‖w_new‖²

a distance between the feature maps ``FM_j`` (channel ``j`` of the outputs of the chosen backbone layers)
of the model and of the starting point on the same training inputs, plus L2 on the new layers.

Implemented: the variant **without attention**, uniform channel weights ``W_j = 1/C`` (the attention weights
are a softmax over the channels, so they also sum to one per layer: α keeps its scale). The paper's
attention weights (the loss increase of the starting-point model when channel ``j`` is zeroed) are not
implemented. The squared distance sums over the positions of a channel and is averaged over the batch; with
several layers the layer distances add up. The starting point runs in eval mode, so the penalty is 0 at the
start only when the model has no dropout or batch normalization in train mode. The loss is named ``delta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import RunError
from crosstask.finetune.base import Regularizer, StreamForward, new_parameters, squared_norm
from crosstask.registry import REGULARIZERS, ComponentConfig


class DELTAConfig(ComponentConfig):
    alpha: float = Field(default=0.01, ge=0.0, description="α: weight of the feature-map distance")
    beta: float = Field(default=0.01, ge=0.0, description="β: plain L2 on the new layers (bottleneck, heads)")
    layers: list[str] | None = Field(
        default=None,
        description="backbone layers whose outputs are compared (default: every named layer; "
        "see crosstask list backbone)",
    )


@contextmanager
def recording(layers: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``layers`` (in call order) during the forward passes inside the block."""
    outputs: list[Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def channel_distance(current: Tensor, reference: Tensor) -> Tensor:
    """Mean over the batch and the channels of ``‖FM_j − FM⁰_j‖²`` (summed over a channel's positions); a
    (batch, units) output counts every unit as a channel of one position."""
    difference = current.float() - reference.float()
    if difference.dim() > 2:
        return difference.flatten(2).pow(2).sum(-1).mean()
    return difference.pow(2).mean()


@REGULARIZERS.register("delta", config=DELTAConfig)
class DELTA(Regularizer):
    """Feature maps kept close to the starting point's, uniform channel weights (Li et al. 2019, ICLR)."""

    config: DELTAConfig

    def __init__(self, config: DELTAConfig, model, start):
        super().__init__(config, model, start)
        self.layers = self._layers(model)
        self.start_layers = self._layers(start)
        self.new = new_parameters(model)
        self._maps: list[Tensor] = []

    def _layers(self, model) -> list[nn.Module]:
        layers = []
        for backbone in model.backbones():
            for name in self.config.layers or backbone.layer_names():
                layers.append(backbone.layers_until(name)[-1])  # a clear error for an unknown name
        return layers

    @contextmanager
    def watch(self) -> Iterator[None]:
        with recording(self.layers) as maps:
            yield
        self._maps = maps

    def penalty(self, forwards: Sequence[StreamForward]) -> Tensor:
        with torch.no_grad(), recording(self.start_layers) as reference:
            for forward in forwards:
                self.start.forward_all(forward.x)
        current, self._maps = self._maps, []
        if len(current) != len(reference):
            raise RunError(
                f"delta recorded {len(current)} feature maps for the model but {len(reference)} for the starting "
                "point; the model must call its layers the same way in every forward pass"
            )
        distance = sum((channel_distance(c, r) for c, r in zip(current, reference, strict=True)), 0.0)
        return self.config.alpha * distance / len(forwards) + self.config.beta / 2 * squared_norm(self.new)
