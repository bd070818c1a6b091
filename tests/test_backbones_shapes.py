"""Input shapes: every backbone's validate_input, and ResNets whose stem follows the input (1-channel, 8x8)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crosstask as ct
from crosstask.errors import ConfigError, DataError
from crosstask.models.backbones.base import ModuleBackbone, build_backbone
from crosstask.models.backbones.resnet import adapt_first_conv
from crosstask.registry import BACKBONES
from tests.text_helpers import save_tiny_bert

TOKENS = {"input_ids": (16,), "attention_mask": (16,)}
# name -> (the shape it is built for, a shape it must refuse)
CASES: dict[str, tuple[Any, Any]] = {
    "mlp": ((1, 8, 8), (1, 28, 28)),
    "lenet": ((1, 28, 28), (3, 28, 28)),
    "conv4": ((1, 28, 28), (1, 32, 32)),
    "resnet18": ((1, 28, 28), (3, 28, 28)),
    "resnet34": ((3, 8, 8), (3, 4, 4)),
    "resnet50": ((3, 64, 64), (64,)),
    "transformer": (TOKENS, (1, 28, 28)),
}


def config_of(name: str, tmp_path: Path) -> Any:
    """What builds backbone ``name`` here: its name, or for text encoders a tiny BERT saved in the test."""
    if name == "transformer":
        return {"name": name, "model": str(save_tiny_bert(tmp_path / "bert"))}
    return name


@pytest.mark.parametrize("name", BACKBONES.names())
def test_validate_input_accepts_the_built_shape_and_refuses_another(name: str, tmp_path: Path) -> None:
    assert name in CASES, f"add a good and a bad input shape for the backbone '{name}' to CASES"
    good, bad = CASES[name]
    backbone = build_backbone(config_of(name, tmp_path), good)
    backbone.validate_input(good)
    if not isinstance(good, dict):
        backbone.validate_input(list(good))  # any sequence
    with pytest.raises(DataError, match=name):
        backbone.validate_input(bad)
    if not isinstance(good, dict):
        with pytest.raises(DataError, match="dict"):
            backbone.validate_input(TOKENS)


def test_validate_input_messages_say_what_to_change() -> None:
    with pytest.raises(DataError, match=r"mlp.*\(64,\).*\(1, 8, 8\)"):
        build_backbone("mlp", (64,)).validate_input((1, 8, 8))
    with pytest.raises(DataError, match=r"lenet.*\(1, 28, 28\).*\(1, 16, 16\)"):
        build_backbone("lenet", (1, 28, 28)).validate_input((1, 16, 16))
    resnet = build_backbone("resnet18", (1, 28, 28))
    with pytest.raises(DataError, match="in_channels: 1.*set in_channels: 3"):
        resnet.validate_input((3, 28, 28))
    with pytest.raises(DataError, match="at least 8x8"):
        resnet.validate_input((1, 4, 4))
    resnet.validate_input((1, 8, 8))  # any size the stem takes
    resnet.validate_input((1, 224, 224))
    imagenet = build_backbone({"name": "resnet18", "small_input": False}, (3, 224, 224))
    with pytest.raises(DataError, match="small_input: true"):
        imagenet.validate_input((3, 28, 28))


def test_custom_modules_accept_any_shape() -> None:
    module = nn.Linear(3, 4)
    module.num_features = 4
    backbone = ModuleBackbone(module)
    backbone.validate_input((3,))
    backbone.validate_input({"x": (7, 2)})


@pytest.mark.parametrize(
    ("shape", "channels", "small"),
    [((1, 8, 8), 1, True), ((1, 28, 28), 1, True), ((3, 32, 32), 3, True), ((3, 64, 64), 3, False)],
)
def test_resnet_stem_follows_the_input_shape(shape: tuple[int, ...], channels: int, small: bool) -> None:
    model = ct.TransferModel("resnet18", [ct.Task("d", num_classes=10)], input_shape=shape)
    backbone = model.backbones()[0]
    assert (backbone.in_channels, backbone.small_input) == (channels, small)
    assert isinstance(backbone.maxpool, nn.Identity) == small
    assert backbone.conv1.kernel_size == ((3, 3) if small else (7, 7))
    model.train()
    assert model(torch.randn(2, *shape))["d"].shape == (2, 10)


def test_resnet_config_that_cannot_take_the_data_fails_at_build_time() -> None:
    task = [ct.Task("d", num_classes=10)]
    with pytest.raises(ConfigError, match="in_channels: 3.*have 1"):
        ct.TransferModel({"name": "resnet18", "in_channels": 3}, task, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="small_input: false.*at least 32x32.*set small_input: true"):
        ct.TransferModel({"name": "resnet18", "small_input": False}, task, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match=r"\(channels, height, width\).*\(64,\)"):
        ct.TransferModel("resnet18", task, input_shape=(64,))
    with pytest.raises(ConfigError, match="dict"):
        build_backbone("resnet18", {"image": (3, 32, 32)})
    # explicit values that fit are kept
    big = build_backbone({"name": "resnet18", "small_input": False}, (1, 32, 32))
    assert not big.small_input and big.in_channels == 1


def test_first_conv_adaptation_sums_for_one_channel() -> None:
    weight = torch.randn(64, 3, 7, 7)
    gray = adapt_first_conv(weight, 1)
    assert torch.allclose(gray, weight.sum(1, keepdim=True))
    # a gray image copied to RGB gets the same response from the adapted filters
    image = torch.randn(1, 1, 9, 9)
    rgb = torch.nn.functional.conv2d(image.expand(1, 3, 9, 9), weight)
    assert torch.allclose(torch.nn.functional.conv2d(image, gray), rgb, atol=1e-4)
    five = adapt_first_conv(weight, 5)
    assert five.shape == (64, 5, 7, 7)
    assert torch.allclose(five[:, 3], weight[:, 0] * 3 / 5)
    assert adapt_first_conv(weight, 3) is weight


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = build_backbone({"name": "resnet18", "small_input": False}, (3, 224, 224)).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save({**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    return path, state


def test_pretrained_rgb_weights_on_gray_images(rgb_weights, caplog: pytest.LogCaptureFixture) -> None:
    path, state = rgb_weights
    caplog.set_level(logging.INFO, logger="crosstask")
    # 1x96x96: ImageNet stem, the first convolution summed over the RGB channels
    big = build_backbone({"name": "resnet18", "weights": str(path)}, (1, 96, 96))
    assert torch.allclose(big.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(big.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert "adapted from 3 to 1 input channels" in caplog.text
    # 1x28x28: small stem from scratch, every other layer pretrained
    small = build_backbone({"name": "resnet18", "weights": str(path)}, (1, 28, 28))
    assert small.conv1.weight.shape == (64, 1, 3, 3)
    assert torch.equal(small.bn1.weight, state["bn1.weight"])
    assert torch.equal(small.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert "conv1 starts from scratch" in caplog.text
    small.eval()
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 512)


def test_weights_saved_with_the_small_stem(tmp_path: Path, rgb_weights) -> None:
    trained = build_backbone("resnet18", (1, 28, 28))
    path = tmp_path / "small.pt"
    torch.save(trained.state_dict(), path)
    again = build_backbone({"name": "resnet18", "weights": str(path)}, (1, 28, 28))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.state_dict().items())
    # three channels: the 3x3 filters are adapted too
    rgb = build_backbone({"name": "resnet18", "weights": str(path)}, (3, 32, 32))
    assert rgb.conv1.weight.shape == (64, 3, 3, 3)
    with pytest.raises(DataError, match="small_input: true"):
        build_backbone({"name": "resnet18", "weights": str(path)}, (1, 96, 96))


def test_resnet_on_digits_trains(tmp_path: Path) -> None:
    """The README's override: a digits config with model.backbone=resnet18 (8x8, one channel)."""
    from crosstask.config import load_config
    from crosstask.experiment import run

    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "digits_source_only.yaml",
        [
            "model.backbone=resnet18",
            "train.steps=2",
            "train.eval_every=2",
            "train.batch_size=8",
            f"output_dir={tmp_path}",
        ],
    )
    result = run(config)
    assert "source_test/digit/accuracy" in result.metrics
