"""TCA: transfer component analysis, a projection that shrinks the MMD between domains and keeps variance.

Pan, Tsang, Kwok and Yang, 2011, "Domain Adaptation via Transfer Component Analysis", IEEE Transactions on
Neural Networks 22(2). TCA (their Eq. 8-10) keeps the m leading eigenvectors W of

    (K L K + μ I)^{-1} K H K,

with K the kernel matrix of source and target samples together, L = e eᵀ the MMD matrix
(e_i = 1/n_s on source samples, -1/n_t on target samples) and H = I - 11ᵀ/n the centering matrix; the
embedding of a sample x is Wᵀ k(X, x). We solve the equivalent symmetric-definite generalized eigenproblem
K H K w = φ (K L K + μ I) w with ``scipy.linalg.eigh`` and keep the m largest φ.

Conventions, all taken from the code behind the published Office-Caltech numbers (Long et al.'s JDA code,
ICCV 2013, and the TCA baseline reported with it), which our defaults reproduce to the second decimal:

- each eigenvector w has unit Euclidean norm, as MATLAB's ``eigs`` and ``scipy.linalg.eig`` return them.
  (Scaling to the paper's constraint wᵀ K H K w = 1 instead whitens the components, which gives the
  small-variance ones as much weight as the large and costs about 10 points of 1-NN accuracy there.)
- L is scaled to unit Frobenius norm, so μ does not depend on the sample sizes.
- ``kernel="primal"`` works on the features instead of a kernel: A = leading eigenvectors of
  Xᵀ H X a = φ (Xᵀ L X + μ I) a, embedding Aᵀ x; the cost is O(d³) instead of O(n³).
- ``normalize=True`` L2-normalizes every sample before and after the projection (JDA's code does; Pan et
  al.'s TCA does not, hence the default False here).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg
from pydantic import Field

from crosstask.errors import ConfigError
from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter
from crosstask.shallow.kernels import kernel_matrix, median_gamma

Kernel = Literal["primal", "linear", "rbf"]


class TCAConfig(ComponentConfig):
    n_components: int = Field(default=100, ge=1, description="number of transfer components (dimensions)")
    mu: float = Field(default=1.0, gt=0.0, description="μ, the trade-off of Eq. 10 (weight of ||W||²)")
    kernel: Kernel = Field(default="linear", description="linear or rbf (kernel form), or primal (features)")
    gamma: float | None = Field(default=None, gt=0.0, description="rbf width; None: median heuristic")
    normalize: bool = Field(default=False, description="L2-normalize samples before and after the projection")


def l2_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit Euclidean norm (zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


class MMDProjection:
    """The projection shared by TCA and JDA: Z = X A (primal) or Z = k(X, X_train) A (kernel).

    ``fit(P, mmd_vectors, reg, n_components)`` solves, with M = Σ_c e_c e_cᵀ / ||Σ_c e_c e_cᵀ||_F built from
    the columns e_c of ``mmd_vectors`` (n, m):  S a = φ (Pᵀ M P + reg I) a,  keeping the n_components
    largest φ (unit-norm a), where P is X (primal) or K (kernel) and S = Pᵀ H P its centered scatter.
    """

    def __init__(self, kernel: str, gamma: float | None, normalize: bool, where: str):
        self.kernel = kernel
        self.gamma = gamma
        self.normalize = normalize
        self.where = where

    def _features(self, X: np.ndarray) -> np.ndarray:
        X = l2_rows(X) if self.normalize else X
        if self.kernel == "primal":
            return X
        return kernel_matrix(X, self.train_, self.kernel, self.gamma_)

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Remember the training samples (kernel form) and return the matrix P the projection acts on."""
        X = l2_rows(X) if self.normalize else X
        self.gamma_ = self.gamma if self.gamma is not None or self.kernel != "rbf" else median_gamma(X)
        if self.kernel == "primal":
            return X
        self.train_ = X
        return kernel_matrix(X, X, self.kernel, self.gamma_)

    def fit(self, P: np.ndarray, mmd_vectors: np.ndarray, reg: float, n_components: int) -> MMDProjection:
        size = P.shape[1]
        if n_components > size:
            space = "features" if self.kernel == "primal" else "source + target samples"
            raise ConfigError(
                f"{self.where}: n_components={n_components} exceeds the {size} {space}; use at most {size}"
            )
        projected = P.T @ mmd_vectors  # Pᵀ e_c for every c: Pᵀ M P = F Fᵀ without an (n, n) M
        gram = mmd_vectors.T @ mmd_vectors
        norm = float(np.linalg.norm(gram)) or 1.0  # ||Σ e_c e_cᵀ||_F = ||Eᵀ E||_F
        discrepancy = projected @ projected.T / norm + reg * np.eye(size)
        centered = P - P.mean(axis=0)
        scatter = centered.T @ centered
        values, vectors = scipy.linalg.eigh(
            scatter, discrepancy, subset_by_index=[size - n_components, size - 1], driver="gvx"
        )
        order = np.argsort(values)[::-1]
        vectors = vectors[:, order]
        # unit-norm eigenvectors, as MATLAB's eigs and scipy.linalg.eig return them (see the module docstring)
        self.components_ = vectors / np.linalg.norm(vectors, axis=0)
        self.eigenvalues_ = values[order]
        return self

    def transform_prepared(self, P: np.ndarray) -> np.ndarray:
        Z = P @ self.components_
        return l2_rows(Z) if self.normalize else Z

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.transform_prepared(self._features(X))


def marginal_mmd_vector(ns: int, nt: int) -> np.ndarray:
    """e with 1/n_s on the source samples and -1/n_t on the target samples (L = e eᵀ)."""
    return np.concatenate([np.full(ns, 1.0 / ns), np.full(nt, -1.0 / nt)])


@SHALLOW.register("tca", config=TCAConfig)
class TCA(ShallowAdapter):
    """TCA (Pan et al. 2011): a shared projection minimizing the marginal MMD, keeping the data variance."""

    registry_name = "tca"
    config_model = TCAConfig

    def __init__(
        self,
        n_components: int = 100,
        mu: float = 1.0,
        kernel: str = "linear",
        gamma: float | None = None,
        normalize: bool = False,
        estimator=None,
    ):
        self.n_components = n_components
        self.mu = mu
        self.kernel = kernel
        self.gamma = gamma
        self.normalize = normalize
        self.estimator = estimator

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        self.projection_ = MMDProjection(self.kernel, self.gamma, self.normalize, "tca.fit")
        P = self.projection_.prepare(np.vstack([Xs, Xt]))
        e = marginal_mmd_vector(len(Xs), len(Xt))[:, None]
        self.projection_.fit(P, e, self.mu, self.n_components)
        return self.projection_.transform_prepared(P[: len(Xs)])

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        return self.projection_.transform(X)
