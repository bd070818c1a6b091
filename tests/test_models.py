"""Backbones, heads, the two model kinds, freezing, and loading weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crosstask as ct
from crosstask.errors import ConfigError, DataError
from crosstask.models.backbones.base import build_backbone
from crosstask.registry import BACKBONES
from tests.text_helpers import save_tiny_bert

SHAPES = {
    "mlp": (1, 8, 8),
    "lenet": (1, 28, 28),
    "resnet18": (3, 32, 32),
    "resnet34": (3, 32, 32),
    "resnet50": (3, 32, 32),
}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_honours_the_contract(name: str, tmp_path: Path) -> None:
    if name == "transformer":  # token ids, on a tiny BERT saved here
        config: Any = {"name": name, "model": str(save_tiny_bert(tmp_path / "bert"))}
        x: Any = {
            "input_ids": torch.randint(4, 300, (2, 12)),
            "attention_mask": torch.ones(2, 12, dtype=torch.long),
        }
        shape: Any = {k: tuple(v.shape[1:]) for k, v in x.items()}
    else:
        config, shape = name, SHAPES.get(name, (3, 32, 32))
        x = torch.randn(2, *shape)
    backbone = build_backbone(config, shape).eval()
    features = backbone.forward_features(x)
    assert features.shape == (2, backbone.num_features)
    assert backbone.layer_names(), "freeze_until needs named layers"


def test_heads_follow_their_tasks() -> None:
    tasks = [
        ct.Task("c", "classification", num_classes=7),
        ct.Task("m", "multilabel", outputs=4),
        ct.Task("r", "regression"),
        ct.Task("r3", "regression", outputs=3),
    ]
    model = ct.MultiTaskModel("mlp", tasks, input_shape=(5,), head={"name": "mlp", "hidden": [16]})
    out = model(torch.randn(6, 5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"c": (6, 7), "m": (6, 4), "r": (6,), "r3": (6, 3)}


def test_task_validation() -> None:
    with pytest.raises(ValueError, match="needs num_classes"):
        ct.Task("a", "classification")
    with pytest.raises(ValueError, match="does not apply to regression"):
        ct.Task("a", "regression", metrics=["accuracy"])
    with pytest.raises(ValueError, match="unknown loss 'crossentropy'.*cross_entropy"):
        ct.Task("a", "classification", num_classes=3, loss="crossentropy")
    assert ct.Task("a", "regression").higher_is_better is False
    assert ct.Task("a", num_classes=2).higher_is_better is True


def test_shared_and_task_parameters_partition_the_model() -> None:
    model = ct.MultiTaskModel(
        "mlp", [ct.Task("a", num_classes=2), ct.Task("b", num_classes=3)], input_shape=(4,), bottleneck=8
    )
    shared = {id(p) for p in model.shared_parameters()}
    per_task = {t: {id(p) for p in model.task_parameters(t)} for t in ("a", "b")}
    every = {id(p) for p in model.parameters()}
    assert shared | per_task["a"] | per_task["b"] == every
    assert not shared & per_task["a"] and not per_task["a"] & per_task["b"]
    assert model.forward_all(torch.randn(3, 4)).shared.shape == (3, 8)


def test_linear_probe_and_partial_freezing() -> None:
    model = ct.TransferModel("lenet", [ct.Task("d", num_classes=10)], input_shape=(1, 28, 28))
    assert model.freeze_backbone("conv2") == ["conv1", "conv2"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".conv1." in n or ".conv2." in n for n in frozen)
    model.train()
    backbone = model.backbones()[0]
    assert not backbone.conv2.training and backbone.fc.training  # frozen layers keep eval-mode statistics
    with pytest.raises(ConfigError, match="no layer 'conv3'.*conv1, conv2, fc"):
        model.freeze_backbone("conv3")
    probe = ct.TransferModel("mlp", [ct.Task("d", num_classes=10)], input_shape=(4,))
    probe.freeze_backbone()
    assert all(not p.requires_grad for p in probe.backbone_parameters())
    assert all(p.requires_grad for p in probe.heads.parameters())


def test_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    source = build_backbone({"name": "resnet18"})
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {**source.state_dict(), "fc.weight": torch.zeros(1000, 512)}}, path)
    model = ct.TransferModel("resnet18", [ct.Task("d", num_classes=3)], weights=path)
    loaded = model.backbones()[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    # a one-channel stem is adapted from the pretrained filters
    gray = ct.TransferModel(
        {"name": "resnet18", "in_channels": 1}, [ct.Task("d", num_classes=3)], weights=path
    )
    assert gray(torch.randn(2, 1, 32, 32))["d"].shape == (2, 3)


def test_weight_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="not found"):
        build_backbone({"name": "mlp", "weights": str(tmp_path / "none.pt")}, (4,))
    wrong = tmp_path / "wrong.pt"
    torch.save(build_backbone({"name": "mlp", "hidden": [3]}, (4,)).state_dict(), wrong)
    with pytest.raises(DataError, match="shape"):
        build_backbone({"name": "mlp", "hidden": [5], "weights": str(wrong)}, (4,))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not torch")
    with pytest.raises(DataError, match="cannot load it as a PyTorch state dict"):
        build_backbone({"name": "mlp", "weights": str(garbage)}, (4,))

    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(DataError) as info:
        build_backbone({"name": "resnet18", "weights": "IMAGENET1K_V1"})
    message = str(info.value)
    assert "download.pytorch.org" in message and "weights:" in message and "hub/checkpoints" in message
    with pytest.raises(DataError, match="neither an existing file nor a torchvision weights name"):
        build_backbone({"name": "resnet18", "weights": "IMAGENET_V7"})


def test_needs_input_shape_message() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        ct.MultiTaskModel("mlp", [ct.Task("a", num_classes=2)])


def test_custom_module_backbone() -> None:
    class Net(nn.Module):
        num_features = 6

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = ct.MultiTaskModel(Net(), [ct.Task("a", num_classes=2)])
    assert model(torch.randn(4, 3))["a"].shape == (4, 2)
    with pytest.raises(ConfigError, match="num_features"):
        ct.MultiTaskModel(nn.Linear(3, 4), [ct.Task("a", num_classes=2)])


def test_checkpoint_round_trip_and_transfer_to_new_tasks(tmp_path: Path) -> None:
    from crosstask.checkpoint import save_checkpoint

    model = ct.MultiTaskModel({"name": "mlp", "hidden": [8]}, [ct.Task("a", num_classes=2)], input_shape=(4,))
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": model.spec()})
    same = ct.MultiTaskModel.from_checkpoint(path)
    x = torch.randn(5, 4)
    model.eval(), same.eval()
    assert torch.equal(model(x)["a"], same(x)["a"])
    moved = ct.TransferModel.from_run(
        path, tasks=[ct.Task("a", num_classes=2), ct.Task("new", num_classes=5)]
    )
    moved.eval()
    assert torch.equal(moved(x)["a"], model(x)["a"]) and moved(x)["new"].shape == (5, 5)
