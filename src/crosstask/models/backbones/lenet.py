"""LeNet as used by the Transfer-Learning-Library for digits (LeCun et al. 1998, widths 20/50/500).

conv 5x5 (20) -> max-pool -> ReLU -> conv 5x5 (50) -> Dropout2d -> max-pool -> ReLU -> flatten ->
Linear (500) -> ReLU -> Dropout. 500 features; any channel count and input size (28x28 in the digits
benchmarks).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError
from crosstask.models.backbones.base import Backbone, BackboneConfig, require_shape
from crosstask.registry import BACKBONES


class LeNetConfig(BackboneConfig):
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    features: int = Field(default=500, ge=1, description="width of the fully connected feature layer")


class LeNet(Backbone):
    def __init__(self, in_channels: int, height: int, width: int, dropout: float = 0.5, features: int = 500):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(20, 50, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU())
        with torch.no_grad():
            flat = self.conv2(self.conv1(torch.zeros(1, in_channels, height, width))).numel()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, features), nn.ReLU(), nn.Dropout(dropout))
        self.num_features = features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.conv1(x)))

    def stages(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc]


@BACKBONES.register("lenet", config=LeNetConfig)
def build_lenet(config: LeNetConfig, input_shape: tuple[int, ...] | None) -> LeNet:
    """LeNet (20-50-500) for small images such as MNIST and USPS; layers conv1, conv2, fc."""
    shape = require_shape(input_shape, "lenet", rank=3)
    if min(shape[1:]) < 16:
        raise ConfigError(
            f"lenet needs images of at least 16x16 pixels, got shape {tuple(shape)}; resize them (size: 28)"
        )
    return LeNet(shape[0], shape[1], shape[2], config.dropout, config.features)
