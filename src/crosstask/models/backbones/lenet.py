"""LeNet (LeCun et al. 1998) as the digits benchmarks use it.

conv 5x5 (c1) -> max-pool -> ReLU -> conv 5x5 (c2) -> Dropout2d -> max-pool -> ReLU -> flatten ->
Linear (features) -> ReLU -> Dropout. The defaults (20/50/500, dropout 0.5) are the Transfer-Learning-Library's
digits LeNet; ``channels: [10, 20], features: 50, fc_dropout: 0`` is the MultiMNIST encoder of Sener &
Koltun (2018). Any channel count and input size of at least 16x16.
"""

from __future__ import annotations

from typing import Annotated

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


class LeNetConfig(BackboneConfig):
    channels: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        default=(20, 50), description="output channels of the two convolutions"
    )
    features: int = Field(default=500, ge=1, description="width of the fully connected feature layer")
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="Dropout2d after the second convolution")
    fc_dropout: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="after the features (default: dropout)"
    )


class LeNet(Backbone):
    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        dropout: float = 0.5,
        features: int = 500,
        channels: tuple[int, int] = (20, 50),
        fc_dropout: float | None = None,
    ):
        super().__init__()
        self.input_shape = (in_channels, height, width)
        c1, c2 = channels
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, c1, 5), nn.MaxPool2d(2), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU())
        with torch.no_grad():
            flat = self.conv2(self.conv1(torch.zeros(1, in_channels, height, width))).numel()
        last = dropout if fc_dropout is None else fc_dropout
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, features), nn.ReLU(), *([nn.Dropout(last)] if last else [])
        )
        self.num_features = features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.conv1(x)))

    def validate_input(self, shape: SampleShape) -> None:
        """Samples must be images of the shape LeNet was built for (its fully connected layer is sized by it)."""
        require_built_shape(shape, self.input_shape, "lenet", "its fully connected layer is sized by it")

    def stages(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc]


@BACKBONES.register("lenet", config=LeNetConfig)
def build_lenet(config: LeNetConfig, input_shape: tuple[int, ...] | None) -> LeNet:
    """LeNet for small images such as MNIST and USPS (default 20-50-500); layers conv1, conv2, fc."""
    shape = require_shape(input_shape, "lenet", rank=3)
    if min(shape[1:]) < 16:
        raise ConfigError(
            f"lenet needs images of at least 16x16 pixels, got shape {tuple(shape)}; resize them (size: 28)"
        )
    return LeNet(
        shape[0], shape[1], shape[2], config.dropout, config.features, config.channels, config.fc_dropout
    )
