"""DELTA: Li, Xiong, Wang, Rao, Liu, Chen & Huan 2019, "DELTA: DEep Learning Transfer using Feature Map with
Attention for Convolutional Networks", ICLR; the regularizer:

    Ω(w) = α · Σ_j W_j · ‖FM_j(w, x) − FM_j(w⁰, x)‖² + β/2 · ‖w_new‖²

a distance between the feature maps ``FM_j`` (channel ``j`` of the outputs of the chosen backbone layers)
of the model and of the starting point on the same training inputs, plus L2 on the new layers.

**Attention** (``attention: true``, the default, the paper's Section 3.3): ``W_j`` is larger for the
channels the task needs. Before the first step (:meth:`DELTA.prepare`), a probe — the starting point with
fresh heads, only its layers outside the backbone training (heads, bottleneck; Adam, ``probe_steps``
steps) — learns the target task on the frozen backbone; then, on ``attention_batches`` training batches, each channel ``j`` of each chosen layer
is zeroed in turn (the paper zeroes the channel's filter) and the rise of the probe's loss is averaged:
``W = softmax(standardize(rise) / T)`` per layer. The paper's softmax over the raw rises depends on the loss's
scale; the Transfer-Learning-Library's ``delta.py`` standardizes the rises across the layer's channels (mean
0, population standard deviation 1) and divides by ``T = 5`` (``temperature``) before the softmax, and so do
we: the weights then do not depend on the loss's scale, and no handful of channels takes all the weight.
They sum to one per layer, like the uniform weights ``1/C`` of ``attention: false`` (the unweighted variant,
which skips the probe). The weights are fixed for the run and saved in its checkpoints, so a resumed run keeps
them. The cost is one forward pass per channel and attention batch, once.

The squared distance sums over the positions of a channel and is averaged over the batch; with several
layers the layer distances add up. The starting point runs in eval mode, so the penalty is 0 at the start only
when the model has no dropout or batch normalization in train mode. The loss is named ``delta``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.streams import Batch
from crosstask.engine.method import StreamSpec, labeled_losses
from crosstask.errors import RunError
from crosstask.finetune.base import Regularizer, StreamForward, new_parameters, squared_norm
from crosstask.modules.heads import fresh_copy
from crosstask.registry import REGULARIZERS, ComponentConfig

log = logging.getLogger(__name__)


class DELTAConfig(ComponentConfig):
    alpha: float = Field(default=0.01, ge=0.0, description="α: weight of the feature-map distance")
    beta: float = Field(default=0.01, ge=0.0, description="β: plain L2 on the new layers (bottleneck, heads)")
    layers: list[str] | None = Field(
        default=None,
        description="backbone layers whose outputs are compared (default: every named layer; "
        "see crosstask list backbone)",
    )
    attention: bool = Field(
        default=True, description="weight channels by how much the task needs them (the paper); false: 1/C"
    )
    probe_steps: int = Field(
        default=100, ge=1, description="attention: steps training the probe's new layers (heads, bottleneck)"
    )
    probe_lr: float = Field(default=0.01, gt=0.0, description="attention: Adam learning rate of the probe")
    attention_batches: int = Field(
        default=10, ge=1, description="attention: training batches the loss rise of a zeroed channel averages"
    )
    temperature: float = Field(
        default=5.0,
        gt=0.0,
        description="attention: softmax temperature over the standardized rises (TLlib: 5)",
    )


@contextmanager
def recording(layers: Sequence[nn.Module]) -> Iterator[list[tuple[int, Tensor]]]:
    """Collect ``(index in layers, output)`` of ``layers``, in call order, during the forward passes inside."""
    outputs: list[tuple[int, Tensor]] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: outputs.append((k, out)))
        for k, layer in enumerate(layers)
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def channel_distance(current: Tensor, reference: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Σ_j W_j ‖FM_j − FM⁰_j‖²`` (summed over a channel's positions) averaged over the batch, with ``W_j =
    1/C`` without ``weights``; a (batch, units) output counts every unit as a channel of one position."""
    difference = current.float() - reference.float()
    per_channel = difference.flatten(2).pow(2).sum(-1) if difference.dim() > 2 else difference.pow(2)
    if weights is None:
        return per_channel.mean()
    return (per_channel.mean(0) * weights).sum()


@contextmanager
def zeroed_channel(layer: nn.Module, channel: int) -> Iterator[None]:
    """Inside the block, channel ``channel`` (dimension 1) of ``layer``'s output is zero."""

    def zero(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        output = output.clone()
        output[:, channel] = 0
        return output

    handle = layer.register_forward_hook(zero)
    try:
        yield
    finally:
        handle.remove()


def loss_rise(
    loss: Callable[[dict[str, Batch]], Tensor],
    layers: Sequence[nn.Module],
    batches: Sequence[dict[str, Batch]],
) -> list[Tensor]:
    """Per layer, the mean over ``batches`` of ``loss(channel j zeroed) − loss`` for every channel ``j``."""
    rises: list[Tensor] = []
    with torch.no_grad():
        for batch in batches:
            with recording(layers) as outputs:
                base = float(loss(batch))
            if not rises:  # each layer's channel count, from its first output
                channels = {k: o.shape[1] for k, o in outputs}
                rises = [torch.zeros(channels[k]) for k in range(len(layers))]
            for layer, rise in zip(layers, rises, strict=True):
                for channel in range(len(rise)):
                    with zeroed_channel(layer, channel):
                        rise[channel] += (float(loss(batch)) - base) / len(batches)
    return rises


def attention_weights(rise: Tensor, temperature: float = 5.0) -> Tensor:
    """``softmax(standardize(rise) / temperature)``: sums to one; equal weights when every channel matters
    equally."""
    if not bool(torch.isfinite(rise).all()):
        raise RunError(
            "delta: the channel attention's loss rises are not finite (the probe diverged); lower "
            "probe_lr or set attention: false"
        )
    spread = rise.std(correction=0)
    if not bool(spread > 1e-12):
        return torch.full_like(rise, 1.0 / len(rise))
    return torch.softmax((rise - rise.mean()) / spread / temperature, dim=0)


@REGULARIZERS.register("delta", config=DELTAConfig)
class DELTA(Regularizer):
    """Feature maps kept close to the starting point's, channels weighted by attention (Li et al. 2019, ICLR)."""

    config: DELTAConfig

    def __init__(self, config: DELTAConfig, model, start):
        super().__init__(config, model, start)
        self.layers = self._layers(model)
        self.start_layers = self._layers(start)
        self.new = new_parameters(model)
        self._maps: list[tuple[int, Tensor]] = []
        self.channel_weights: list[Tensor] | None = None  # per layer (attention), set by prepare()

    def _layers(self, model) -> list[nn.Module]:
        layers = []
        for backbone in model.backbones():
            for name in self.config.layers or backbone.layer_names():
                layers.append(backbone.layers_until(name)[-1])  # a clear error for an unknown name
        return layers

    def prepare(self, draw: Callable[[], dict[str, Batch]], streams: Sequence[StreamSpec]) -> None:
        """Compute the channel attention (see the module docstring) from training batches."""
        if not self.config.attention:
            return
        probe = copy.deepcopy(self.start)  # frozen, eval mode; its new layers (fresh heads) train
        for name, head in list(probe.heads.items()):
            probe.heads[name] = fresh_copy(head)
        trained = new_parameters(probe)
        for param in trained:
            param.requires_grad_(True)

        def loss(batch: dict[str, Batch]) -> Tensor:
            return sum(labeled_losses(probe, batch, streams)[0].values())

        optimizer = torch.optim.Adam(trained, lr=self.config.probe_lr)
        for _ in range(self.config.probe_steps):
            optimizer.zero_grad(set_to_none=True)
            loss(draw()).backward()
            optimizer.step()
        layers = self._layers(probe)
        log.info(
            "delta: channel attention of %d layer(s) from %d batches",
            len(layers),
            self.config.attention_batches,
        )
        rises = loss_rise(loss, layers, [draw() for _ in range(self.config.attention_batches)])
        self._set_weights([attention_weights(rise, self.config.temperature) for rise in rises])

    def _set_weights(self, weights: list[Tensor] | None) -> None:
        device = next(self.start.parameters()).device
        self.channel_weights = None if weights is None else [w.to(device) for w in weights]

    def state_dict(self) -> dict[str, Any]:
        return {
            "channel_weights": None
            if self.channel_weights is None
            else [w.cpu() for w in self.channel_weights]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_weights(state.get("channel_weights"))

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
        if self.config.attention and self.channel_weights is None:
            raise RunError(
                "delta: the channel attention was not computed; the Trainer does it before the first step "
                "(erm's on_fit_start). Training steps by hand: call method.regularizers['delta'].prepare(draw, "
                "method.train_streams) first, or set attention: false"
            )
        weights = self.channel_weights or [None] * len(self.layers)
        distance = 0.0
        for (k, c), (k0, r) in zip(current, reference, strict=True):
            if k != k0:
                raise RunError(
                    "delta: the model and its starting point called the watched layers in different orders"
                )
            distance = distance + channel_distance(c, r, weights[k])
        return self.config.alpha * distance / len(forwards) + self.config.beta / 2 * squared_norm(self.new)
