"""Per-task heads built from Task specs, and the shared trunk (backbone + optional bottleneck)."""

from __future__ import annotations

from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.backbones.base import Backbone


class Trunk(nn.Module):
    """A backbone followed by an optional bottleneck layer: the shared feature extractor of a model."""

    def __init__(
        self,
        backbone: Backbone,
        bottleneck_dim: int | None = None,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.bottleneck: nn.Module = nn.Identity()
        self.num_features = backbone.num_features
        if bottleneck_dim:
            layers: list[nn.Module] = [nn.Linear(backbone.num_features, bottleneck_dim)]
            layers += [nn.BatchNorm1d(bottleneck_dim)] if batch_norm else []
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            self.bottleneck = nn.Sequential(*layers)
            self.num_features = bottleneck_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(self.backbone.forward_features(x))


class Head(nn.Module):
    """Optional hidden layers, then a linear layer with one output per class, label or target value."""

    def __init__(
        self, task: Task, in_features: int, hidden: list[int] | tuple[int, ...] = (), dropout: float = 0.0
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            width = h
        layers.append(nn.Linear(width, task.num_outputs))
        self.net = nn.Sequential(*layers)
        self.squeeze = task.kind == "regression" and task.num_outputs == 1

    def forward(self, features: Tensor) -> Tensor:
        out = self.net(features)
        return out.squeeze(-1) if self.squeeze else out
