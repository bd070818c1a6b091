"""ResNet-18/34/50 (He et al. 2016) from torchvision, without the classifier: 512 or 2048 features.

The input channels and the stem follow the input shape unless the config sets them: ``in_channels``
defaults to the channels of one sample, and ``small_input`` (a 3x3 stride-1 first convolution without the
max-pool, as CIFAR ResNets use) defaults to true for images under 64 pixels on a side, so MNIST (1x28x28)
and scikit-learn's digits (1x8x8) work as they are. The ImageNet stem (7x7 stride 2 + max-pool) needs at
least 32x32 pixels, the small stem 8x8.

Pretrained weights come from a local file (``weights: /path/resnet18.pth``) or a torchvision weights name
(``weights: DEFAULT`` or ``IMAGENET1K_V1``), which torchvision downloads into ``$TORCH_HOME`` once. Offline,
a name that is not cached yet fails with a message saying where to get the file and how to pass it. RGB
weights of the first convolution are adapted to other channel counts (summed over the three input
channels for one channel, the usual trick); with the small stem the first convolution, whose kernel
differs, starts from scratch and everything after it is pretrained.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError, DataError
from crosstask.models.backbones.base import (
    Backbone,
    BackboneConfig,
    SampleShape,
    describe_shape,
    read_state_file,
    require_shape,
    tensor_shape,
)
from crosstask.registry import BACKBONES

log = logging.getLogger(__name__)

SMALL_INPUT_BELOW = 64  # images smaller than this (pixels on the shorter side) get the small stem by default
MIN_SIZE = {True: 8, False: 32}  # the smallest image side each stem takes: its total stride (8 or 32)


class ResNetConfig(BackboneConfig):
    in_channels: int | None = Field(
        default=None,
        ge=1,
        description="input channels (default: those of the data, 3 when unknown); pretrained RGB weights of "
        "the first convolution are adapted (summed over channels for 1 channel)",
    )
    small_input: bool | None = Field(
        default=None,
        description="3x3 stride-1 first convolution and no max-pool, for small images (CIFAR-style); default: "
        f"true for images under {SMALL_INPUT_BELOW}x{SMALL_INPUT_BELOW}. The ImageNet stem needs at least "
        f"{MIN_SIZE[False]}x{MIN_SIZE[False]}, the small one {MIN_SIZE[True]}x{MIN_SIZE[True]}",
    )


def resnet_problem(arch: str, in_channels: int, small_input: bool, shape: tuple[int, ...]) -> str | None:
    """Why a ResNet with this stem cannot take samples of ``shape``, or None when it can."""
    if len(shape) != 3:
        return (
            f"{arch} takes images of shape (channels, height, width), got samples of shape "
            f"{describe_shape(shape)}; use the mlp backbone for vectors"
        )
    channels, height, width = shape
    if channels != in_channels:
        return (
            f"{arch} takes {in_channels}-channel images (in_channels: {in_channels}) but the samples "
            f"have {channels} (shape {describe_shape(shape)}); set in_channels: {channels}, or leave it out to "
            "take the channels of the data"
        )
    least = MIN_SIZE[small_input]
    if min(height, width) < least:
        stem = "small-input stem (small_input: true)" if small_input else "ImageNet stem (small_input: false)"
        hint = (
            "set small_input: true (a 3x3 stride-1 first convolution without max-pool) or resize the images"
            if not small_input
            else "resize the images"
        )
        return (
            f"{arch} with the {stem} needs images of at least {least}x{least} pixels, got {height}x{width} "
            f"(shape {describe_shape(shape)}); {hint}"
        )
    return None


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Pretrained first-convolution weights ``(out, c, k, k)`` for ``in_channels`` input channels.

    One channel: the sum over the channels, so a gray image gets the response its RGB copy would. More
    channels: the channels repeated in turn and scaled by ``c / in_channels`` (as timm does).
    """
    channels = weight.shape[1]
    if in_channels == channels:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(in_channels / channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (channels / in_channels)


class ResNet(Backbone):
    """A torchvision ResNet up to global average pooling."""

    def __init__(
        self,
        arch: str,
        in_channels: int = 3,
        small_input: bool = False,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.in_channels = in_channels
        self.small_input = small_input
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if self.conv1 is not net.conv1:
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        self.num_features = net.fc.in_features

    def validate_input(self, shape: SampleShape) -> None:
        """Samples must be images with ``in_channels`` channels and at least the stem's minimum size."""
        problem = resnet_problem(
            self.arch, self.in_channels, self.small_input, tensor_shape(shape, self.arch)
        )
        if problem:
            raise DataError(problem)

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
        own = self.conv1.weight
        if conv is not None and conv.shape != own.shape:
            if conv.dim() == 4 and conv.shape[2:] == own.shape[2:] and conv.shape[0] == own.shape[0]:
                state["conv1.weight"] = adapt_first_conv(conv, self.in_channels)
                log.info(
                    "%s: first convolution adapted from %d to %d input channels",
                    self.arch,
                    conv.shape[1],
                    self.in_channels,
                )
            elif self.small_input and tuple(conv.shape[2:]) == (7, 7):
                del state["conv1.weight"]  # a different stem: it starts from scratch, the rest is pretrained
                log.info("%s: small-input stem: conv1 starts from scratch, the rest is pretrained", self.arch)
            else:
                saved_small = tuple(conv.shape[2:]) == (3, 3)
                raise DataError(
                    f"{self.arch}: the weights' first convolution has shape {tuple(conv.shape)} but this "
                    f"backbone's has {tuple(own.shape)}; build it with the stem they were saved with "
                    f"(small_input: {str(saved_small).lower()})"
                )
        missing, unexpected = self.load_state_dict(state, strict=False)
        allowed = {"conv1.weight"} if "conv1.weight" not in state and self.small_input else set()
        if set(missing) - allowed or unexpected:
            raise DataError(
                f"{self.arch}: the weights do not fit (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                f"were they saved from a {self.arch}?"
            )


def resnet_options(arch: str, config: ResNetConfig, input_shape: tuple[int, ...] | None) -> tuple[int, bool]:
    """``(in_channels, small_input)``: the config's values, else inferred from the input shape; a
    :class:`ConfigError` naming the key when the configured values cannot take that shape."""
    if input_shape is None:
        return config.in_channels or 3, bool(config.small_input)
    shape = require_shape(input_shape, arch)
    if len(shape) != 3:
        raise ConfigError(resnet_problem(arch, 3, False, shape))
    in_channels = config.in_channels if config.in_channels is not None else shape[0]
    small = config.small_input if config.small_input is not None else min(shape[1:]) < SMALL_INPUT_BELOW
    problem = resnet_problem(arch, in_channels, small, shape)
    if problem:
        raise ConfigError(problem)
    return in_channels, small


def _register(arch: str, features: int) -> None:
    @BACKBONES.register(
        arch,
        config=ResNetConfig,
        description=f"torchvision {arch}, {features} features; channels and stem follow the input "
        "(in_channels, small_input); layers conv1, bn1, layer1-4",
    )
    def build(config: ResNetConfig, input_shape: tuple[int, ...] | None) -> ResNet:
        in_channels, small = resnet_options(arch, config, input_shape)
        return ResNet(arch, in_channels, small, input_shape)


for _arch, _features in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
    _register(_arch, _features)
