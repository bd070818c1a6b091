"""Per-task metrics, computed on a whole evaluation set at once. Missing labels are left out."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from torch import Tensor

from crosstask.registry import METRICS


@dataclass(frozen=True)
class Metric:
    """A score of model outputs against targets, the task kinds it applies to, and its direction."""

    fn: Callable[[Tensor, Tensor], float]
    kinds: tuple[str, ...]
    higher_is_better: bool

    def __call__(self, output: Tensor, target: Tensor) -> float:
        return float(self.fn(output, target))


def metric(name: str, kinds: tuple[str, ...], higher_is_better: bool) -> Callable:
    def decorator(fn: Callable[[Tensor, Tensor], float]) -> Callable:
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        METRICS.register(name, description=doc)(Metric(fn, kinds, higher_is_better))
        return fn

    return decorator


def _classes(output: Tensor, target: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true classes, predicted classes, probabilities) for samples whose label is present."""
    keep = target >= 0
    probs = torch.softmax(output[keep].float(), dim=1)
    return target[keep].numpy(), probs.argmax(1).numpy(), probs.numpy()


def _labels(output: Tensor, target: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(targets, outputs) as float arrays of shape (n, k) with rows holding a missing value dropped."""
    target = target.reshape(output.shape).float()
    flat_t, flat_o = target.reshape(len(target), -1), output.float().reshape(len(output), -1)
    keep = ~torch.isnan(flat_t).any(1)
    return flat_t[keep].numpy(), flat_o[keep].numpy()


@metric("accuracy", ("classification",), True)
def accuracy(output: Tensor, target: Tensor) -> float:
    """Fraction of samples whose top class is right (%)."""
    y, pred, _ = _classes(output, target)
    return 100.0 * float((y == pred).mean()) if len(y) else float("nan")


@metric("balanced_accuracy", ("classification",), True)
def balanced_accuracy(output: Tensor, target: Tensor) -> float:
    """Mean per-class recall (%)."""
    y, pred, _ = _classes(output, target)
    return 100.0 * skm.balanced_accuracy_score(y, pred)


@metric("f1_macro", ("classification",), True)
def f1_macro(output: Tensor, target: Tensor) -> float:
    """Unweighted mean of per-class F1 (%)."""
    y, pred, _ = _classes(output, target)
    return 100.0 * skm.f1_score(y, pred, average="macro", zero_division=0)


@metric("auc", ("classification", "multilabel"), True)
def auc(output: Tensor, target: Tensor) -> float:
    """Area under the ROC curve: binary, one-vs-rest macro for several classes, macro over labels.

    NaN where it is undefined (an evaluation set holding a single class).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        try:
            if output.shape[-1] >= 2 and target.dim() == 1:
                y, _, probs = _classes(output, target)
                if probs.shape[1] == 2:
                    return float(skm.roc_auc_score(y, probs[:, 1]))
                return float(skm.roc_auc_score(y, probs, multi_class="ovr", labels=np.arange(probs.shape[1])))
            y, scores = _labels(output, target)
            return float(skm.roc_auc_score(y, scores, average="macro"))
        except ValueError:
            return float("nan")


@metric("f1_micro", ("multilabel",), True)
def f1_micro(output: Tensor, target: Tensor) -> float:
    """F1 over all (sample, label) decisions at logit 0 (%)."""
    y, scores = _labels(output, target)
    return 100.0 * skm.f1_score(y.astype(int), (scores > 0).astype(int), average="micro", zero_division=0)


@metric("subset_accuracy", ("multilabel",), True)
def subset_accuracy(output: Tensor, target: Tensor) -> float:
    """Fraction of samples with every label right (%)."""
    y, scores = _labels(output, target)
    return 100.0 * float(((scores > 0) == (y > 0.5)).all(1).mean()) if len(y) else float("nan")


@metric("mse", ("regression",), False)
def mse(output: Tensor, target: Tensor) -> float:
    """Mean squared error."""
    y, pred = _labels(output, target)
    return float(((pred - y) ** 2).mean())


@metric("rmse", ("regression",), False)
def rmse(output: Tensor, target: Tensor) -> float:
    """Root mean squared error."""
    return float(np.sqrt(mse(output, target)))


@metric("mae", ("regression",), False)
def mae(output: Tensor, target: Tensor) -> float:
    """Mean absolute error."""
    y, pred = _labels(output, target)
    return float(np.abs(pred - y).mean())


@metric("r2", ("regression",), True)
def r2(output: Tensor, target: Tensor) -> float:
    """Coefficient of determination R² (averaged over outputs)."""
    y, pred = _labels(output, target)
    return float(skm.r2_score(y, pred))
