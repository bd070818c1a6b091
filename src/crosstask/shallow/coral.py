"""CORAL: correlation alignment by whitening the source and re-colouring it with the target covariance.

Sun, Feng and Saenko, 2016, "Return of Frustratingly Easy Domain Adaptation", AAAI, Algorithm 1::

    C_S = cov(D_S) + λ I,   C_T = cov(D_T) + λ I
    D_S* = D_S · C_S^{-1/2} · C_T^{1/2}

The paper uses λ = 1 ("eye(size(D_S, 2))"). Target samples are left as they are; the final estimator is
trained on D_S*. With λ → 0 (and a full-rank source covariance) the covariance of the mapped source equals
the target covariance exactly; with λ > 0 it equals C_T^{1/2} (I - λ C_S^{-1}) C_T^{1/2}.
``match_mean=True`` (not in the paper) also moves the source mean onto the target mean.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter


class CoralConfig(ComponentConfig):
    reg: float = Field(default=1.0, ge=0.0, description="λ added to both covariances (the paper uses 1)")
    match_mean: bool = Field(default=False, description="also shift the source mean onto the target mean")


def symmetric_power(matrix: np.ndarray, power: float, floor: float = 1e-12) -> np.ndarray:
    """``matrix ** power`` for a symmetric positive semi-definite matrix, eigenvalues floored at ``floor``."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, floor * max(values.max(), 1.0))
    return (vectors * values**power) @ vectors.T


@SHALLOW.register("coral", config=CoralConfig)
class CORAL(ShallowAdapter):
    """CORAL (Sun et al. 2016): whiten the source, recolour it with the target covariance (λ-regularized)."""

    registry_name = "coral"
    config_model = CoralConfig

    def __init__(self, reg: float = 1.0, match_mean: bool = False, estimator=None):
        self.reg = reg
        self.match_mean = match_mean
        self.estimator = estimator

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        eye = np.eye(Xs.shape[1])
        cov_source = np.cov(Xs, rowvar=False) + self.reg * eye
        cov_target = np.cov(Xt, rowvar=False) + self.reg * eye
        self.coloring_ = symmetric_power(cov_source, -0.5) @ symmetric_power(cov_target, 0.5)
        self.source_mean_ = Xs.mean(axis=0)
        self.target_mean_ = Xt.mean(axis=0)
        return self._map(Xs, "source")

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        if domain == "target":
            return X
        if self.match_mean:
            return (X - self.source_mean_) @ self.coloring_ + self.target_mean_
        return X @ self.coloring_
