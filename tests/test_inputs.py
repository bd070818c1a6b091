"""Inputs that are not one tensor: every method trains a model whose forward takes a dict of tensors, and
every stream and evaluation set is checked against the model before the first step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crosstask as ct
from crosstask.data.inputs import batch_size, can_concat, concat, split
from crosstask.errors import ConfigError, DataError
from crosstask.methods.adaptation import Adaptation
from crosstask.methods.coral import CORAL
from crosstask.methods.generalization import Generalization
from crosstask.registry import METHODS


class TwoInputs(nn.Module):
    """A body whose forward takes ``{"ids": LongTensor (n, 5), "extra": FloatTensor (n, 3)}``."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(10, 8)
        self.extra = nn.Linear(3, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.relu(self.norm(self.embed(x["ids"]) + self.extra(x["extra"])))


def dict_data(n: int, seed: int, shift: float = 0.0, labeled: bool = True) -> ct.ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (n, 5), generator=g)
    extra = torch.randn(n, 3, generator=g) + shift
    y = ((ids < 5).sum(1) > 2).long()
    return ct.ArrayDataset({"ids": ids, "extra": extra}, {"y": y} if labeled else None)


# what a method needs beyond its defaults here
OPTIONS: dict[str, dict[str, Any]] = {
    "mixstyle": {"layers": ["extra"], "vectors": True},
    "dann": {"hidden": 8},
    "cdan": {"hidden": 8},
    "bsp": {"hidden": 8},
}


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_trains_a_model_that_takes_a_dict(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = ct.MultiTaskModel(TwoInputs(), [ct.Task("y", num_classes=2)])
    entry = METHODS.get(name).obj
    streams: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if issubclass(entry, Adaptation) or entry is CORAL:
        if getattr(entry, "needs_source", True):
            options["source"] = dict_data(64, 1)
        options["target"] = dict_data(64, 2, shift=1.0, labeled=False)
    elif issubclass(entry, Generalization):
        streams = {f"d{i}": dict_data(64, i, shift=0.5 * i) for i in range(3)}
    else:
        options["data"] = dict_data(64, 1)
    if entry.reads_episodes:
        options["episodes"] = {"ways": 2, "shots": 2, "queries": 3, "tasks": 2}
    method = {"name": name, **OPTIONS.get(name, {})}
    run = lambda: ct.fit(  # noqa: E731
        model,
        method=method,
        streams=streams or None,
        eval={"test": dict_data(32, 9)},
        steps=3,
        batch_size=16,
        output_dir=tmp_path,
        **options,
    )
    if name == "fixmatch":  # augmentations need image or vector tensors: one clear message
        with pytest.raises(ConfigError, match="dict inputs"):
            run()
        return
    if name in (
        "mldg",
        "maml",
        "metasgd",
    ):  # an embedding bag has no second derivative: one clear message, then first order
        with pytest.raises(ConfigError, match="first_order: true"):
            run()
        method["first_order"] = True
    result = run()
    assert result.summary["status"] == "completed"
    assert 0 <= result.metrics["test/y/accuracy"] <= 100


def test_the_helpers_concatenate_and_split_dicts() -> None:
    a = {"ids": torch.zeros(2, 5, dtype=torch.long), "mask": torch.ones(2, 5)}
    b = {"ids": torch.ones(3, 5, dtype=torch.long), "mask": torch.zeros(3, 5)}
    joint = concat([a, b])
    assert batch_size(joint) == 5 and can_concat([a, b])
    first, second = split(joint, [2, 3])
    assert torch.equal(first["ids"], a["ids"]) and torch.equal(second["mask"], b["mask"])
    assert not can_concat([a, {"ids": torch.zeros(2, 4, dtype=torch.long), "mask": torch.ones(2, 4)}])


# ----------------------------------------------------------------------------- checked before training


def images(n: int, size: int, seed: int = 0) -> ct.ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ct.ArrayDataset(torch.rand(n, 1, size, size, generator=g), {"y": torch.arange(n) % 10})


def test_an_evaluation_set_of_another_input_size_is_a_data_error_before_training(tmp_path: Path) -> None:
    model = ct.TransferModel("lenet", [ct.Task("y", num_classes=10)], input_shape=(1, 28, 28))
    with pytest.raises(DataError, match=r"usps_16.*\(1, 16, 16\).*\(1, 28, 28\)"):
        ct.fit(model, data=images(32, 28), eval={"usps_16": images(32, 16)}, steps=2, output_dir=tmp_path)
    assert not list((tmp_path / "fit").glob("metrics.jsonl"))  # nothing trained


def test_a_training_stream_of_another_input_size_names_the_stream(tmp_path: Path) -> None:
    config = {
        "name": "shapes",
        "output_dir": str(tmp_path),
        "tasks": [{"name": "t0", "num_classes": 2}],
        "data": {
            "train": {
                "source": {"dataset": {"name": "synthetic", "n": 64, "dim": 8, "num_tasks": 1}},
                "target": {
                    "dataset": {"name": "synthetic", "n": 64, "dim": 6, "num_tasks": 1},
                    "labeled": False,
                },
            }
        },
        "model": {"backbone": "mlp"},
        "method": "dann",
        "train": {"steps": 2},
    }
    with pytest.raises(DataError, match=r"data\.train\.target.*\(6,\).*\(8,\)"):
        ct.run(config)
    assert not (tmp_path / "shapes").exists()  # a run that fails while building keeps no directory
