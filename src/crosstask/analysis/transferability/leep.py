"""LEEP, the Log Expected Empirical Prediction (Nguyen, Hassner, Seeger & Archambeau 2020, "LEEP: A New
Measure to Evaluate Transferability of Learned Representations", ICML).

With ``θ(x_i)`` the source model's softmax over its classes ``z`` on the target sample ``x_i``, the empirical
joint distribution of target label and source label is ``P(y, z) = (1/n) Σ_i θ(x_i)_z 1[y_i = y]``, its
conditional ``P(y | z) = P(y, z) / Σ_y' P(y', z)``, and

    LEEP = (1/n) Σ_i log Σ_z P(y_i | z) θ(x_i)_z,

the average log likelihood of the "expected empirical predictor" that maps the source prediction to the
target label through ``P(y | z)``. Since ``Σ_z P(y_i | z) θ(x_i)_z ≤ Σ_z θ(x_i)_z = 1``, LEEP ≤ 0, with
equality when every sample's source prediction is one-hot on a source class seen only with its label.
Higher is better. A source class that no sample predicts (``P(z) = 0``) contributes nothing.
"""

from __future__ import annotations

import numpy as np

from crosstask.analysis.transferability.base import TransferabilityScore, TransferData
from crosstask.registry import TRANSFERABILITY, ComponentConfig


def leep(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LEEP of source softmax ``probabilities`` (n, C_s) for integer ``labels`` 0..C-1 (n,)."""
    n = len(labels)
    joint = np.eye(num_classes)[labels].T @ probabilities / n  # P(y, z): (C, C_s)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = np.einsum("iz,iz->i", probabilities, conditional[labels])  # Σ_z P(y_i | z) θ(x_i)_z
    return float(np.mean(np.log(np.maximum(expected, np.finfo(np.float64).tiny))))


@TRANSFERABILITY.register("leep", config=ComponentConfig)
class LEEP(TransferabilityScore):
    """LEEP: log likelihood of the target labels under the source predictions mapped through P(y | z)."""

    needs = "source_probabilities"

    def score(self, data: TransferData) -> float:
        return leep(data.source_probabilities, data.labels, data.num_classes)
