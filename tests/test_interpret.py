"""Interpretability: attributions satisfy their defining properties, gate usage is over the whole dataset,
per-class accuracy and its change, embeddings, and `crosstask interpret` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import crosstask as ct
from crosstask.analysis.interpret import (
    collect,
    embed,
    gate_usage,
    integrated_gradients,
    per_class_accuracy,
    per_class_change,
    saliency,
)
from crosstask.cli import app
from crosstask.data.datasets.base import ArrayDataset
from crosstask.data.domains import Domain
from crosstask.errors import ConfigError, DataError
from crosstask.registry import ARCHITECTURES
from tests.conftest import tiny_config


def mlp_model(architecture: str = "hard_sharing") -> ct.MultiTaskModel:
    torch.manual_seed(0)
    tasks = [ct.Task("a", num_classes=3), ct.Task("b", num_classes=2)]
    return ct.MultiTaskModel("mlp", tasks, input_shape=(6,), architecture=architecture)


def domain(n: int = 40) -> Domain:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator)
    labels = {
        "a": torch.randint(0, 3, (n,), generator=generator),
        "b": torch.randint(0, 2, (n,), generator=generator),
    }
    return Domain("d", ArrayDataset(x, labels))


def test_integrated_gradients_sum_to_the_change_of_the_target_logit() -> None:
    """Completeness (Sundararajan et al. 2017): Σ attributions = f(x) − f(baseline), for every task head."""
    model = mlp_model().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    for task in ("a", "b"):
        target = model(x)[task].argmax(1)
        attributions = integrated_gradients(model, x, task, target, steps=256)
        with torch.no_grad():
            change = model(x)[task].gather(1, target[:, None]) - model(torch.zeros_like(x))[task].gather(
                1, target[:, None]
            )
        assert torch.allclose(attributions.sum(1), change.squeeze(1), atol=2e-3)


def test_saliency_of_a_linear_head_is_its_weight_row() -> None:
    model = ct.MultiTaskModel({"name": "mlp", "hidden": []}, [ct.Task("a", num_classes=3)], input_shape=(4,))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2])
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    row = weights[-1].detach()  # the head's weight (the backbone has no hidden layer)
    assert torch.allclose(saliency(model, x, "a", target), row[target].abs(), atol=1e-6)


def test_gate_usage_is_the_mean_of_every_samples_gates() -> None:
    model = mlp_model("mmoe").eval()
    data = domain(70)
    usage = gate_usage(model, data, batch_size=16)  # several batches: the last one alone would differ
    with torch.no_grad():
        model(data.dataset.x)
        direct = {t: g.mean(0) for t, g in model.gates().items()}
    for task, row in usage.items():
        assert np.allclose(row["mean"], direct[task].numpy(), atol=1e-6)
        assert sum(row["mean"]) == pytest.approx(1.0)
        assert 0.0 <= row["entropy"] <= np.log(len(row["mean"])) + 1e-9
    with pytest.raises(ConfigError, match="has no gates"):
        gate_usage(mlp_model(), data)


def test_collect_leaves_the_model_in_its_mode_and_reads_labels_by_task() -> None:
    model = mlp_model().train()
    collected = collect(model, domain(), limit=25, batch_size=10)
    assert model.training
    assert collected.features.shape[0] == 25 and set(collected.labels) == {"a", "b"}


def test_per_class_accuracy_and_change() -> None:
    outputs = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert per_class_accuracy(outputs, labels) == {0: 100.0, 1: 50.0}
    assert per_class_change({0: 80.0, 1: 50.0}, {0: 90.0, 1: 40.0, 2: 1.0}) == {0: 10.0, 1: -10.0}


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_keeps_each_domains_points_and_separates_shifted_domains(method: str) -> None:
    rng = np.random.default_rng(0)
    coords = embed({"s": rng.normal(size=(40, 5)), "t": rng.normal(size=(30, 5)) + 8.0}, method=method)
    assert coords["s"].shape == (40, 2) and coords["t"].shape == (30, 2)
    gap = np.linalg.norm(coords["s"].mean(0) - coords["t"].mean(0))
    assert gap > 2 * max(coords["s"].std(0).max(), coords["t"].std(0).max())
    with pytest.raises(DataError, match="different widths"):
        embed({"s": np.ones((3, 2)), "t": np.ones((3, 4))})
    with pytest.raises(ConfigError, match="unknown embedding"):
        embed({"s": np.ones((3, 2))}, method="lda")


def test_crosstask_interpret_on_a_gated_run_and_against_another(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    config["model"]["architecture"] = {"name": "mmoe", "experts": 3}
    config["train"].update(steps=20, eval_every=None)
    gated = ct.run({**config, "name": "gated"})
    plain = ct.run({**config, "name": "plain", "model": {**config["model"], "architecture": "hard_sharing"}})
    result = CliRunner().invoke(
        app,
        [
            "interpret",
            str(gated.run_dir),
            "--against",
            str(plain.run_dir),
            "--limit",
            "60",
            "--embedding",
            "pca",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "gate usage on source_test" in result.output
    report = json.loads((gated.run_dir / "interpret.json").read_text())
    assert set(report["gate_usage"]) == {"source_test", "target_test"}
    assert set(report["per_class_change"]["target_test"]) == {"t0", "t1"}
    assert len(report["embedding"]["source_test"]["xy"]) == 60
    assert "attributions" not in report  # vectors, not images


def test_interpret_attributes_image_inputs_per_task_head(tmp_path: Path) -> None:
    config = ct.load_config(
        Path(__file__).resolve().parents[1] / "configs" / "digits_multitask.yaml",
        [f"output_dir={tmp_path}", "train.steps=10", "train.eval_every=10"],
    )
    result = ct.run(config)
    runner = CliRunner().invoke(
        app, ["interpret", str(result.run_dir), "--attributions", "3", "--limit", "50", "--embedding", "pca"]
    )
    assert runner.exit_code == 0, runner.output
    report = json.loads((result.run_dir / "interpret.json").read_text())
    attributions = report["attributions"]
    assert set(attributions["integrated_gradients"]) == {"digit", "parity", "ge5"}
    assert (
        np.asarray(attributions["integrated_gradients"]["digit"]).shape
        == np.asarray(attributions["inputs"]).shape
    )
    assert np.asarray(attributions["inputs"]).shape[0] == 3


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_gate_usage_on_every_architecture(architecture: str) -> None:
    """Gated architectures report each task's mean weights over the dataset; the others say they have none."""
    model = mlp_model(architecture).eval()
    data = domain(50)
    with torch.no_grad():
        model(data.dataset.x[:4])
    if not model.gates():
        with pytest.raises(ConfigError, match="has no gates"):
            gate_usage(model, data)
        return
    usage = gate_usage(model, data, batch_size=16)
    assert set(usage) == {"a", "b"}
    for row in usage.values():
        assert sum(row["mean"]) == pytest.approx(1.0, abs=1e-5)
