"""A multi-layer perceptron over flattened inputs (tabular data, features, small images)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import DataError
from crosstask.models.backbones.base import (
    Backbone,
    BackboneConfig,
    SampleShape,
    describe_shape,
    require_shape,
    tensor_shape,
)
from crosstask.registry import BACKBONES

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLPConfig(BackboneConfig):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 256], description="widths of the hidden layers"
    )
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    batch_norm: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MLP(Backbone):
    """Flatten, then Linear -> (BatchNorm) -> activation -> (Dropout) per hidden layer."""

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        width = self.in_features = in_features
        for i, out in enumerate(hidden):
            block = [nn.Linear(width, out)]
            block += [nn.BatchNorm1d(out)] if batch_norm else []
            block += [ACTIVATIONS[activation]()]
            block += [nn.Dropout(dropout)] if dropout else []
            self.add_module(f"layer{i + 1}", nn.Sequential(*block))
            width = out
        self.num_features = width

    def forward_features(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.children():
            x = layer(x)
        return x

    def validate_input(self, shape: SampleShape) -> None:
        """Samples must have the shape the MLP was built for (or, built without one, as many elements)."""
        given = tensor_shape(shape, "mlp")
        if self.input_shape is not None:
            ok = given == self.input_shape
            expected = f"samples of shape {self.input_shape}"
        else:
            ok = math.prod(given) == self.in_features
            expected = f"samples of {self.in_features} elements"
        if not ok:
            raise DataError(
                f"backbone 'mlp' was built for {expected} but got samples of shape {describe_shape(given)}; "
                "give every training stream and evaluation set the same input shape (resize or reshape the data)"
            )

    def stages(self) -> list[nn.Module]:
        layers = list(self.children())
        if not layers:
            return [nn.Flatten()]
        return [nn.Sequential(nn.Flatten(), layers[0]), *layers[1:]]


@BACKBONES.register("mlp", config=MLPConfig)
def build_mlp(config: MLPConfig, input_shape: tuple[int, ...] | None) -> MLP:
    """Multi-layer perceptron over flattened inputs; layers layer1, layer2, ..."""
    shape = require_shape(input_shape, "mlp")
    return MLP(
        math.prod(shape),
        config.hidden,
        config.activation,
        config.batch_norm,
        config.dropout,
        input_shape=shape,
    )
