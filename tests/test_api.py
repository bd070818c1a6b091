"""The Python API a user's script calls: plain datasets, the two model kinds, fit, run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import crosstask as ct
from crosstask.errors import ConfigError


def blobs(n: int, shift: float = 0.0, seed: int = 0) -> TensorDataset:
    """Two Gaussian classes in 5-d; ``shift`` moves the whole domain."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 5, generator=g) + 2.0 * y.unsqueeze(1).float() + shift
    return TensorDataset(x, y)


class TwoLabels(Dataset):
    """Single-input multi-task data as a user writes it: (x, {task: y})."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.sign = (self.x[:, 0] > 0).long()
        self.size = self.x[:, 1] + self.x[:, 2]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {"sign": self.sign[i], "size": self.size[i]}


def test_transfer_model_fit_on_plain_datasets(tmp_path: Path) -> None:
    task = ct.Task("label", "classification", num_classes=2)
    model = ct.TransferModel("mlp", [task], input_shape=(5,))
    result = ct.fit(
        model,
        source=blobs(400),
        target=blobs(400, shift=0.5, seed=1),  # unlabeled: erm does not draw from it
        eval={"target_test": blobs(200, shift=0.5, seed=2)},
        steps=150,
        batch_size=32,
        optim={"name": "sgd", "lr": 0.05},
        output_dir=tmp_path,
        name="transfer",
    )
    assert result.metrics["target_test/label/accuracy"] > 80
    assert (result.run_dir / "checkpoints" / "last.pt").exists()
    # the trained body with a new head for a new task, trained as a linear probe
    tuned = ct.TransferModel.from_run(result.run_dir, tasks=[ct.Task("shifted", num_classes=2)])
    trained = ct.MultiTaskModel.from_checkpoint(result.run_dir)
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.backbone_parameters(), tuned.backbone_parameters(), strict=True)
    )
    before = [p.clone() for p in tuned.backbone_parameters()]
    again = ct.fit(
        tuned,
        method={"name": "erm", "finetune": "linear_probe"},
        data=blobs(64, shift=0.5, seed=3),
        eval={"test": blobs(200, shift=0.5, seed=2)},
        steps=30,
        output_dir=tmp_path,
        name="probe",
    )
    assert all(torch.equal(a, b) for a, b in zip(before, tuned.backbone_parameters(), strict=True))
    assert again.metrics["test/shifted/accuracy"] > 80


def test_multitask_model_single_input(tmp_path: Path) -> None:
    tasks = [ct.Task("sign", num_classes=2), ct.Task("size", "regression")]
    model = ct.MultiTaskModel({"name": "mlp", "hidden": [32]}, tasks, input_shape=(6,))
    result = ct.fit(
        model,
        method="multitask",
        data=TwoLabels(512),
        eval={"test": TwoLabels(256, seed=1)},
        weighting={"name": "static", "weights": {"sign": 1.0, "size": 0.5}},
        steps=200,
        optim={"name": "adam", "lr": 3e-3},
        output_dir=tmp_path,
    )
    assert result.metrics["test/sign/accuracy"] > 85
    assert result.metrics["test/size/mse"] < 0.5  # the target's variance is 2


def test_multitask_model_multi_input(tmp_path: Path) -> None:
    """One dataset per task (streams of different lengths), each domain naming its task."""
    tasks = [ct.Task("a", num_classes=2), ct.Task("b", num_classes=2)]
    model = ct.MultiTaskModel("mlp", tasks, input_shape=(5,))
    streams = {
        "a": ct.Domain("a", blobs(300), tasks=["a"]),
        "b": ct.Domain("b", blobs(90, seed=4), tasks=["b"]),
    }
    result = ct.fit(
        model,
        method="multitask",
        streams=streams,
        eval={
            "a_test": ct.Domain("a_test", blobs(200, seed=5), tasks=["a"]),
            "b_test": ct.Domain("b_test", blobs(200, seed=6), tasks=["b"]),
        },
        steps=120,
        output_dir=tmp_path,
    )
    assert set(result.metrics) == {"a_test/a/accuracy", "b_test/b/accuracy"}
    assert min(result.metrics.values()) > 80


def test_fit_rejects_bad_arguments_clearly(tmp_path: Path) -> None:
    model = ct.TransferModel("mlp", [ct.Task("label", num_classes=2)], input_shape=(5,))
    with pytest.raises(ConfigError, match="needs training data"):
        ct.fit(model, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.steps = 0"):
        ct.fit(model, data=blobs(10), steps=0, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown method 'dnn'"):
        ct.fit(model, data=blobs(10), method="dnn", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="method 'dan' needs one unlabeled target stream"):
        ct.fit(model, data=blobs(10), method="dan", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="labeled training domain"):
        ct.fit(model, target=blobs(10), output_dir=tmp_path)


def test_run_from_a_mapping_with_overrides(tmp_path: Path) -> None:
    from tests.conftest import tiny_config

    result = ct.run(tiny_config(tmp_path), ["train.steps=10", "name=mapped"])
    assert result.summary["step"] == 10 and result.run_dir.name == "mapped"
