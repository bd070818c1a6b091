"""Kernels shared by the shallow adapters, and the median heuristic for the RBF width.

``rbf``: k(x, y) = exp(-γ ||x - y||²). With ``gamma=None`` the adapters use the median heuristic
γ = 1 / median ||x_i - x_j||² over pairs of the samples the kernel is fitted on (a subsample of at most
1000 of them, drawn with a fixed seed so that fitting twice gives the same γ).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist, pdist

KERNELS = ("linear", "rbf")
MEDIAN_SUBSAMPLE = 1000


def median_gamma(X: np.ndarray, seed: int = 0) -> float:
    """γ = 1 / median squared distance between distinct samples of ``X`` (median heuristic)."""
    if len(X) > MEDIAN_SUBSAMPLE:
        X = X[np.random.default_rng(seed).choice(len(X), MEDIAN_SUBSAMPLE, replace=False)]
    squared = pdist(X, "sqeuclidean")
    squared = squared[squared > 0]
    return 1.0 / float(np.median(squared)) if len(squared) else 1.0


def kernel_matrix(X: np.ndarray, Y: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    """The (len(X), len(Y)) kernel matrix for ``kernel`` in :data:`KERNELS`."""
    if kernel == "linear":
        return X @ Y.T
    if kernel == "rbf":
        return np.exp(-gamma * cdist(X, Y, "sqeuclidean"))
    raise ValueError(f"unknown kernel {kernel!r}; choices: {', '.join(KERNELS)}")
