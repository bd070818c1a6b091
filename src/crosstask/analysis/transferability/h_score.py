"""H-score (Bao, Li, Huang, Zheng, Tan, Wang & Zhao 2019, "An Information-theoretic Approach to
Transferability in Task Transfer Learning", ICIP), optionally regularized by shrinkage (Ibrahim, Ponomareva
& Mazumder 2022, "Newer is not always better: Rethinking transferability metrics, their peculiarities,
stability and performance", ECML-PKDD).

    H(f) = tr( cov(f)⁺ cov(E[f | y]) ),

with ``cov(f)`` the covariance of the features over the target samples, ``E[f | y]`` each sample's feature
replaced by the mean feature of its class, and ``⁺`` the Moore-Penrose pseudo-inverse (the original uses
it, as ``cov(f)`` is often singular). It is the Fisher-like ratio of between-class to total feature
variance, summed over the feature directions: large when the classes are separated relative to the
spread of the features; higher is better. It is invariant to any invertible linear map of the features
(rotations, scalings), and lies in ``[0, min(d, C - 1)]``.

``shrinkage = a`` replaces ``cov(f)`` by ``(1 − a) cov(f) + a (tr cov(f) / d) I`` and ``cov(E[f|y])`` by
``(1 − a) cov(E[f|y])`` (Ibrahim et al.'s ``H_α``), which stabilizes the inverse of a poorly estimated
``cov(f)`` (high dimension, few samples); ``a = 0`` is the original H-score and ``"auto"`` takes the
Ledoit-Wolf shrinkage of the features, as they do.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from crosstask.analysis.transferability.base import TransferabilityScore, TransferData
from crosstask.registry import TRANSFERABILITY, ComponentConfig


class HScoreConfig(ComponentConfig):
    shrinkage: float | Literal["auto"] = Field(
        0.0, description="0 = the original H-score; in (0, 1] or 'auto' (Ledoit-Wolf): regularized H-score"
    )

    @field_validator("shrinkage")
    @classmethod
    def _in_unit_interval(cls, value: float | str) -> float | str:
        if value != "auto" and not 0.0 <= value <= 1.0:
            raise ValueError("must lie in [0, 1] (0: the original H-score) or be 'auto' (Ledoit-Wolf)")
        return value


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: float | str = 0.0) -> float:
    """H-score of ``features`` (n, d) for integer ``labels`` 0..C-1 (n,), with optional ``shrinkage``."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    n, d = f.shape
    classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    means = np.zeros((classes, d))
    np.add.at(means, labels, f)
    means /= np.maximum(counts, 1.0)[:, None]
    cov_f = f.T @ f / n
    cov_g = (means.T * counts) @ means / n  # cov of E[f | y] (the rows of means[labels] are centered)
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage

        shrinkage = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    a = float(shrinkage)
    if a > 0:
        cov_f = (1 - a) * cov_f + a * np.trace(cov_f) / d * np.eye(d)
        cov_g = (1 - a) * cov_g
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


@TRANSFERABILITY.register("h_score", config=HScoreConfig)
class HScore(TransferabilityScore):
    """H-score: between-class feature covariance relative to the total, tr(cov(f)⁺ cov(E(f | y)))."""

    needs = "features"

    def score(self, data: TransferData) -> float:
        return h_score(data.features, data.labels, self.config.shrinkage)
