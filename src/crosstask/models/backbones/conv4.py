"""The four-block convolutional network of the few-shot literature (Vinyals et al. 2016; Finn et al. 2017;
Snell et al. 2017).

Four blocks of 3x3 convolution (``channels``, 64 by default) -> batch norm -> ReLU -> 2x2 max-pool; the
flattened output is the feature vector (64 features for 28x28 Omniglot images, 1600 for 84x84). MAML's
networks normalize every batch with its own statistics, in training and at test time (``norm: batch``, no
running statistics: nothing but parameters carries state between episodes); ``norm: running`` is the usual
batch norm, ``norm: none`` leaves it out.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError
from crosstask.models.backbones.base import (
    Backbone,
    BackboneConfig,
    SampleShape,
    require_built_shape,
    require_shape,
)
from crosstask.registry import BACKBONES


class Conv4Config(BackboneConfig):
    channels: int = Field(default=64, ge=1, description="filters of every convolution")
    blocks: int = Field(default=4, ge=1, le=8, description="number of conv-norm-ReLU-pool blocks")
    norm: Literal["batch", "running", "none"] = Field(
        default="batch",
        description="batch norm with each batch's statistics only (MAML), the usual one, or none",
    )


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if norm != "none":
        layers.append(nn.BatchNorm2d(cout, track_running_stats=norm == "running"))
    return nn.Sequential(*layers, nn.ReLU(), nn.MaxPool2d(2))


class Conv4(Backbone):
    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        channels: int = 64,
        blocks: int = 4,
        norm: str = "batch",
    ):
        super().__init__()
        self.input_shape = (in_channels, height, width)
        self.blocks = nn.Sequential(
            *(_block(in_channels if i == 0 else channels, channels, norm) for i in range(blocks))
        )
        with torch.no_grad():
            self.num_features = self.blocks(torch.zeros(2, in_channels, height, width)).numel() // 2

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)

    def validate_input(self, shape: SampleShape) -> None:
        """Samples must have the shape conv4 was built for: its feature count (and the heads) follow the size."""
        require_built_shape(
            shape, self.input_shape, "conv4", "its feature count, and the heads, follow the size"
        )

    def _container(self) -> nn.Module:
        return self.blocks  # layers "0".."3" for freeze_until

    def stages(self) -> list[nn.Module]:
        *first, last = self.blocks
        return [*first, nn.Sequential(last, nn.Flatten())]


@BACKBONES.register("conv4", config=Conv4Config)
def build_conv4(config: Conv4Config, input_shape: tuple[int, ...] | None) -> Conv4:
    """The few-shot conv-4 (64 filters, batch norm, ReLU, max-pool per block); blocks are its layers."""
    shape = require_shape(input_shape, "conv4", rank=3)
    if min(shape[1:]) < 2**config.blocks:
        raise ConfigError(
            f"conv4 with {config.blocks} blocks halves the image {config.blocks} times and needs at least "
            f"{2**config.blocks}x{2**config.blocks} pixels, got shape {tuple(shape)}; resize the images or use fewer blocks"
        )
    return Conv4(shape[0], shape[1], shape[2], config.channels, config.blocks, config.norm)
