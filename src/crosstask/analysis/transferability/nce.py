"""NCE, the Negative Conditional Entropy (Tran, Nguyen & Hassner 2019, "Transferability and Hardness of
Supervised Classification Tasks", ICCV).

With ``z_i = argmax_z θ(x_i)_z`` the source model's hard prediction on the target sample ``x_i`` (the
paper's source label, here the model's dummy labels as in LEEP's NCE baseline), the empirical joint
``P(y, z) = (1/n) #{i : y_i = y, z_i = z}`` gives

    NCE = −H(Y | Z) = Σ_{y,z} P(y, z) log P(y | z),

in nats. It is 0 when the target label is a function of the source prediction and ``−log C`` for target
labels independent of it and uniform over ``C`` classes; higher is better.
"""

from __future__ import annotations

import numpy as np

from crosstask.analysis.transferability.base import TransferabilityScore, TransferData
from crosstask.registry import TRANSFERABILITY, ComponentConfig


def negative_conditional_entropy(source: np.ndarray, target: np.ndarray) -> float:
    """``−H(target | source)`` of two integer label vectors of the same length, in nats."""
    _, z = np.unique(source, return_inverse=True)
    _, y = np.unique(target, return_inverse=True)
    joint = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(joint, (y.reshape(-1), z.reshape(-1)), 1.0)
    joint /= len(y)
    marginal = joint.sum(axis=0, keepdims=True)
    seen = joint > 0
    return float((joint[seen] * np.log((joint / marginal)[seen])).sum())


@TRANSFERABILITY.register("nce", config=ComponentConfig)
class NCE(TransferabilityScore):
    """NCE: minus the conditional entropy of the target labels given the source model's hard predictions."""

    needs = "source_probabilities"

    def score(self, data: TransferData) -> float:
        return negative_conditional_entropy(data.source_probabilities.argmax(axis=1), data.labels)
