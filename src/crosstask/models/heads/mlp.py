"""Linear and MLP heads: optional hidden layers, then one output per class, label or target value."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from crosstask.data.tasks import Task
from crosstask.models.backbones.mlp import ACTIVATIONS
from crosstask.registry import HEADS, ComponentConfig


class MLPHeadConfig(ComponentConfig):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256], description="widths of the hidden layers"
    )
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def mlp(
    in_features: int, out_features: int, hidden: list[int], activation: str = "relu", dropout: float = 0.0
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()] + (
            [nn.Dropout(dropout)] if dropout else []
        )
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_features))


@HEADS.register("linear", config=ComponentConfig)
def build_linear_head(config: ComponentConfig, task: Task, in_features: int) -> nn.Module:
    """One linear layer from the features to the task's outputs."""
    return nn.Linear(in_features, task.num_outputs)


@HEADS.register("mlp", config=MLPHeadConfig)
def build_mlp_head(config: MLPHeadConfig, task: Task, in_features: int) -> nn.Module:
    """Hidden layers (Linear, activation, dropout), then a linear output layer."""
    return mlp(in_features, task.num_outputs, config.hidden, config.activation, config.dropout)
