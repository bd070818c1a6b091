"""The shared trunk of a model: a backbone and an optional bottleneck layer."""

from __future__ import annotations

from torch import Tensor, nn

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

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, then the bottleneck (if any): see ``Backbone.stages``."""
        extra = [] if isinstance(self.bottleneck, nn.Identity) else [self.bottleneck]
        return [*self.backbone.stages(), *extra]
