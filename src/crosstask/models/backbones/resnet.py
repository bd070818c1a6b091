"""ResNet-18/34/50 (He et al. 2016) from torchvision, without the classifier: 512 or 2048 features.

Pretrained weights come from a local file (``weights: /path/resnet18.pth``) or a torchvision weights name
(``weights: DEFAULT`` or ``IMAGENET1K_V1``), which torchvision downloads into ``$TORCH_HOME`` once. Offline,
a name that is not cached yet fails with a message saying where to get the file and how to pass it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import DataError
from crosstask.models.backbones.base import Backbone, BackboneConfig, read_state_file
from crosstask.registry import BACKBONES

log = logging.getLogger(__name__)


class ResNetConfig(BackboneConfig):
    in_channels: int = Field(
        default=3, ge=1, description="input channels; pretrained conv1 weights are averaged"
    )
    small_input: bool = Field(
        default=False, description="3x3 stride-1 stem without max-pool, for 32x32 images"
    )


class ResNet(Backbone):
    """A torchvision ResNet up to global average pooling."""

    def __init__(self, arch: str, config: ResNetConfig):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        self.num_features = net.fc.in_features
        self._in_channels = config.in_channels
        self._small_input = config.small_input
        self._adapt_stem()

    def _adapt_stem(self, pretrained: Tensor | None = None) -> None:
        if self._small_input:
            self.conv1 = nn.Conv2d(self._in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        elif self._in_channels != 3:
            weight = self.conv1.weight.detach() if pretrained is None else pretrained
            self.conv1 = nn.Conv2d(self._in_channels, 64, 7, 2, 3, bias=False)
            if pretrained is not None:  # keep the pretrained filters' response to a gray image
                with torch.no_grad():
                    self.conv1.weight.copy_(weight.mean(1, keepdim=True).repeat(1, self._in_channels, 1, 1))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [
            stem,
            self.layer1,
            self.layer2,
            self.layer3,
            self.layer4,
            nn.Sequential(self.avgpool, nn.Flatten()),
        ]

    def load_pretrained(self, weights: str) -> None:
        import torchvision

        if (
            Path(weights).expanduser().suffix in (".pt", ".pth", ".bin", ".ckpt")
            or Path(weights).expanduser().exists()
        ):
            state = read_state_file(weights)
        else:
            options = torchvision.models.get_model_weights(self.arch)
            try:
                spec = options[weights]
            except KeyError:
                choices = [*options.__members__]
                raise DataError(
                    f"{self.arch}: '{weights}' is neither an existing file nor a torchvision weights name "
                    f"({', '.join(choices)})"
                ) from None
            try:
                state = spec.get_state_dict(progress=False)
            except Exception as exc:  # urllib/socket errors vary by platform
                raise DataError(
                    f"{self.arch}: could not download the torchvision weights {spec} ({exc}). Offline, download "
                    f"{spec.url} on a machine with internet and pass its local path as weights:, or place it in "
                    f"$TORCH_HOME/hub/checkpoints/ (torch.hub.get_dir() here: {torch.hub.get_dir()})."
                ) from None
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        conv = state.get("conv1.weight")
        if conv is not None and conv.shape[1] != self._in_channels and not self._small_input:
            state.pop("conv1.weight")
            self._adapt_stem(pretrained=conv)
        elif self._small_input:
            state.pop("conv1.weight", None)  # a different stem: keep it freshly initialised
        missing, unexpected = self.load_state_dict(state, strict=False)
        expected_missing = {"conv1.weight"} if "conv1.weight" not in state else set()
        if set(missing) - expected_missing or unexpected:
            raise DataError(
                f"{self.arch}: the weights do not fit (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                f"were they saved from a {self.arch}?"
            )


def _register(arch: str, features: int) -> None:
    @BACKBONES.register(
        arch,
        config=ResNetConfig,
        description=f"torchvision {arch}, {features} features; layers conv1, bn1, layer1-4",
    )
    def build(config: ResNetConfig, input_shape: tuple[int, ...] | None) -> ResNet:
        return ResNet(arch, config)


for _arch, _features in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
    _register(_arch, _features)
