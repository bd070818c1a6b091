"""Losses (with missing labels masked) and metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crosstask.evaluation.losses import binary_cross_entropy, cross_entropy, mean_squared_error
from crosstask.registry import LOSSES, METRICS


def test_missing_class_labels_are_masked() -> None:
    logits = torch.randn(6, 4)
    target = torch.tensor([0, -1, 2, 3, -1, 1])
    keep = target >= 0
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits[keep], target[keep]))
    assert cross_entropy(logits, torch.full((6,), -1)).item() == 0.0  # an all-missing batch adds nothing


def test_missing_real_targets_are_masked() -> None:
    out = torch.randn(5, 3)
    target = torch.randn(5, 3)
    target[1, 2] = target[3, 0] = float("nan")
    keep = ~torch.isnan(target)
    assert torch.allclose(mean_squared_error(out, target), ((out - target)[keep] ** 2).mean())
    labels = (torch.rand(5, 3) > 0.5).float()
    labels[0, 0] = float("nan")
    keep = ~torch.isnan(labels)
    expected = F.binary_cross_entropy_with_logits(out[keep], labels[keep])
    assert torch.allclose(binary_cross_entropy(out, labels), expected)
    loss = mean_squared_error(out.requires_grad_(), target)
    loss.backward()
    assert torch.isfinite(out.grad).all()


def metric(name: str, output: torch.Tensor, target: torch.Tensor) -> float:
    return METRICS.get(name).obj(output, target)


def test_classification_metrics() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1, 1, -1])
    assert metric("accuracy", logits, target) == 75.0
    assert metric("balanced_accuracy", logits, target) == 100 * (1.0 + 2 / 3) / 2
    assert metric("auc", logits, target) == pytest.approx(5 / 6)


def test_regression_and_multilabel_metrics() -> None:
    pred, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])
    assert metric("mse", pred, target) == pytest.approx(4 / 3)
    assert metric("mae", pred, target) == pytest.approx(2 / 3)
    assert metric("rmse", pred, target) == pytest.approx(math.sqrt(4 / 3))
    scores = torch.tensor([[3.0, -3.0], [3.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert metric("subset_accuracy", scores, labels) == 50.0
    assert metric("f1_micro", scores, labels) == pytest.approx(100 * 2 * 2 / (2 * 2 + 1))


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse", "l1", "huber"])
def test_losses_keep_double_precision_and_widen_half(loss: str) -> None:
    """The meta-gradient checks run in float64: a loss must not round them to float32 (bf16 is widened)."""
    output = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 0]) if loss == "cross_entropy" else torch.rand(4, 3, dtype=torch.float64)
    for masked in (True, False):
        assert LOSSES.get(loss).obj(output, target, masked).dtype == torch.float64
        assert LOSSES.get(loss).obj(output.bfloat16(), target, masked).dtype == torch.float32
