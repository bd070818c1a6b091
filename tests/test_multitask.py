"""Multi-task data and evaluation: missing labels, tasks of very different sizes, single-task baselines from
the same config, and Δm%."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.baselines import single_task_config
from crosstask.config import validate_config
from crosstask.errors import ConfigError
from crosstask.evaluation.delta_m import delta_m
from tests.conftest import tiny_config


def test_delta_m_is_the_mean_signed_relative_change() -> None:
    baselines = {"test/a/accuracy": 80.0, "test/b/mse": 2.0}
    assert delta_m({"test/a/accuracy": 88.0, "test/b/mse": 2.0}, baselines) == pytest.approx(
        -5.0
    )  # +10 % acc
    assert delta_m({"test/a/accuracy": 80.0, "test/b/mse": 3.0}, baselines) == pytest.approx(
        25.0
    )  # +50 % mse
    assert delta_m(baselines, baselines) == 0.0


def test_single_task_config_keeps_everything_but_the_other_tasks(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        weighting={"name": "static", "weights": {"t0": 2.0}},
        model={"backbone": {"name": "mlp", "hidden": [16]}, "architecture": "hard_sharing"},
        **{"train.select": "source_test/t1/accuracy"},
    )
    experiment = validate_config(config)
    single = single_task_config(experiment, "t0")
    assert [t.name for t in single.tasks] == ["t0"]
    assert single.weighting.name == "static" and single.weighting.weights == {}
    assert single.train.select == "source_test/t0/accuracy"
    assert single.model.backbone == experiment.model.backbone and single.optim == experiment.optim
    assert all(d.tasks == ["t0"] for d in single.data.train.values())
    with pytest.raises(ConfigError, match="no task 't9'"):
        single_task_config(experiment, "t9")


def test_run_with_baselines_reports_delta_m(tmp_path: Path) -> None:
    result = ct.run(tiny_config(tmp_path, **{"train.steps": 40}), baselines=True)
    assert set(result.baselines) == {"t0", "t1"}
    assert (result.run_dir / "baselines" / "t0" / "summary.json").exists()
    reference = {k: v for r in result.baselines.values() for k, v in r.metrics.items()}
    assert result.summary["delta_m"] == pytest.approx(delta_m(result.metrics, reference))


def test_missing_labels_are_ignored_by_the_loss_and_the_metrics(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    a = (x[:, 0] > 0).long()
    b = (x[:, 1] > 0).long()
    b_missing = b.clone()
    b_missing[::2] = -1  # half of the samples lack label b
    train = ct.ArrayDataset(x, {"a": a, "b": b_missing})
    test = ct.ArrayDataset(x, {"a": a, "b": b})
    model = ct.MultiTaskModel(
        "mlp", [ct.Task("a", num_classes=2), ct.Task("b", num_classes=2)], input_shape=(5,)
    )
    result = ct.fit(
        model,
        method="multitask",
        data=train,
        eval={"test": test},
        steps=150,
        output_dir=tmp_path,
        optim={"name": "adam", "lr": 0.01},
    )
    assert result.metrics["test/b/accuracy"] > 90


def test_tasks_of_very_different_sizes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    big_x, small_x = torch.randn(2000, 5, generator=g), torch.randn(20, 5, generator=g)
    big = ct.Domain("big", ct.ArrayDataset(big_x, (big_x[:, 0] > 0).long()), tasks=["big"])
    small = ct.Domain("small", ct.ArrayDataset(small_x, (small_x[:, 1] > 0).long()), tasks=["small"])
    test_x = torch.randn(300, 5, generator=g)
    model = ct.MultiTaskModel(
        "mlp", [ct.Task("big", num_classes=2), ct.Task("small", num_classes=2)], input_shape=(5,)
    )
    result = ct.fit(
        model,
        method="multitask",
        streams={"big": big, "small": small},
        batch_size=16,
        eval={
            "test": ct.ArrayDataset(
                test_x, {"big": (test_x[:, 0] > 0).long(), "small": (test_x[:, 1] > 0).long()}
            )
        },
        steps=200,
        output_dir=tmp_path,
    )
    assert result.metrics["test/big/accuracy"] > 90 and result.metrics["test/small/accuracy"] > 70
