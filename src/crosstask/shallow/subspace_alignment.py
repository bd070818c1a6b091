"""Subspace alignment: map the source PCA basis onto the target PCA basis with a linear map.

Fernando, Habrard, Sebban and Tuytelaars, 2013, "Unsupervised Visual Domain Adaptation Using Subspace
Alignment", ICCV. With X_S, X_T the d leading principal directions (columns) of each domain, the alignment
M* = X_Sᵀ X_T (their Eq. 3) minimizes ||X_S M - X_T||_F; source samples are projected with
X_a = X_S X_Sᵀ X_T ("target aligned source coordinate system") and target samples with X_T. The final
classifier works in those d coordinates. Each domain is centered by its own mean before projecting (the
paper z-scores each domain first, which also centers it).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from crosstask.errors import ConfigError
from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter


class SubspaceAlignmentConfig(ComponentConfig):
    n_components: int = Field(default=100, ge=1, description="d, the dimension of both PCA subspaces")


def principal_directions(X: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the leading ``n_components`` principal directions (as columns) of ``X``."""
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    return mean, vt[:n_components].T


@SHALLOW.register("subspace_alignment", config=SubspaceAlignmentConfig)
class SubspaceAlignment(ShallowAdapter):
    """Subspace alignment (Fernando et al. 2013): align the source PCA basis to the target's."""

    registry_name = "subspace_alignment"
    config_model = SubspaceAlignmentConfig

    def __init__(self, n_components: int = 100, estimator=None):
        self.n_components = n_components
        self.estimator = estimator

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        largest = min(len(Xs), len(Xt), Xs.shape[1])
        if self.n_components > largest:
            raise ConfigError(
                f"subspace_alignment.fit: n_components={self.n_components} exceeds {largest}, the most principal "
                f"directions both domains have (min of n_source={len(Xs)}, n_target={len(Xt)}, "
                f"n_features={Xs.shape[1]}); use at most {largest}"
            )
        self.source_mean_, self.source_basis_ = principal_directions(Xs, self.n_components)
        self.target_mean_, self.target_basis_ = principal_directions(Xt, self.n_components)
        self.alignment_ = self.source_basis_.T @ self.target_basis_  # M* of Eq. 3
        return self._map(Xs, "source")

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        if domain == "source":
            return (X - self.source_mean_) @ self.source_basis_ @ self.alignment_
        return (X - self.target_mean_) @ self.target_basis_
