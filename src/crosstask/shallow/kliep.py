"""KLIEP: the Kullback-Leibler importance estimation procedure, a direct model of p_target / p_source.

Sugiyama, Nakajima, Kashima, von Bünau and Kawanabe, 2008, "Direct Importance Estimation with Model
Selection and Its Application to Covariate Shift Adaptation", NeurIPS 20. The ratio is modeled as
w(x) = Σ_l α_l k(x, c_l) with Gaussian kernels centered on b target samples c_l, and α maximizes the
target log-likelihood under the normalization of the source mean (their Eq. 3-4)::

    max_α  Σ_j log (Σ_l α_l k(x'_j, c_l))   s.t.  (1/n_s) Σ_i w(x_i) = 1,  α ≥ 0,

by the paper's projected gradient ascent (Figure 1: ascend, project onto the normalization, clip at 0,
renormalize), run with decreasing step sizes 10³ … 10⁻³ while the objective improves. The kernel width
is chosen by the paper's likelihood cross-validation: the target samples are split into ``cv`` folds and
the width with the highest held-out mean log w(x') wins, which uses no labels. Source weights are
``sample_weight_`` (mean 1 over the source); ``density_ratio(X)`` evaluates w anywhere.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator
from sklearn.utils.validation import check_is_fitted

from crosstask.errors import DataError
from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter, as_matrix
from crosstask.shallow.kernels import kernel_matrix, median_gamma

STEP_SIZES = 10.0 ** np.arange(3, -4, -1)
GAMMA_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)  # the default width grid, times the median heuristic


class KLIEPConfig(ComponentConfig):
    n_centers: int = Field(
        default=100, ge=1, description="b, number of target samples used as kernel centers"
    )
    gamma: float | list[float] | None = Field(
        default=None,
        description="rbf width, or a list chosen by likelihood cross-validation; None: the median "
        "heuristic times 0.1, 0.3, 1, 3, 10",
    )
    cv: int = Field(default=5, ge=2, description="folds of the likelihood cross-validation")
    max_iter: int = Field(default=1000, ge=1, description="ascent steps per step size")
    tol: float = Field(default=1e-6, gt=0.0, description="stop a step size when the objective gains less")
    random_state: int = Field(default=0, description="seed of the center choice and the folds")

    @field_validator("gamma")
    @classmethod
    def _positive_widths(cls, value: float | list[float] | None) -> float | list[float] | None:
        widths = [] if value is None else np.atleast_1d(value).tolist()
        if value is not None and (not widths or min(widths) <= 0):
            raise ValueError("gamma must be a positive number or a non-empty list of positive numbers")
        return value


def _normalize(alpha: np.ndarray, source_mean: np.ndarray) -> np.ndarray:
    """Project onto bᵀα = 1, clip at zero, rescale so that bᵀα = 1 (the paper's constraint step)."""
    alpha = alpha + (1.0 - source_mean @ alpha) * source_mean / (source_mean @ source_mean)
    alpha = np.maximum(alpha, 0.0)
    total = source_mean @ alpha
    return alpha / total if total > 0 else np.full_like(alpha, 1.0 / source_mean.sum())


def fit_alpha(target_kernel: np.ndarray, source_mean: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Maximize mean_j log (target_kernel @ α)_j subject to source_mean·α = 1, α ≥ 0."""
    alpha = _normalize(np.ones(target_kernel.shape[1]), source_mean)
    score = np.mean(np.log(target_kernel @ alpha))
    for step in STEP_SIZES:
        for _ in range(max_iter):
            gradient = target_kernel.T @ (1.0 / (target_kernel @ alpha)) / len(target_kernel)
            candidate = _normalize(alpha + step * gradient, source_mean)
            candidate_score = np.mean(np.log(target_kernel @ candidate))
            if not candidate_score > score + tol:
                break
            alpha, score = candidate, candidate_score
    return alpha


@SHALLOW.register("kliep", config=KLIEPConfig)
class KLIEP(ShallowAdapter):
    """KLIEP (Sugiyama et al. 2008): source weights w = p_t/p_s from a kernel model, width by likelihood CV."""

    registry_name = "kliep"
    config_model = KLIEPConfig

    def __init__(
        self,
        n_centers: int = 100,
        gamma: float | list[float] | None = None,
        cv: int = 5,
        max_iter: int = 1000,
        tol: float = 1e-6,
        random_state: int = 0,
        estimator=None,
    ):
        self.n_centers = n_centers
        self.gamma = gamma
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.estimator = estimator

    def _candidates(self, Xt: np.ndarray) -> list[float]:
        if self.gamma is None:
            return [factor * median_gamma(Xt) for factor in GAMMA_FACTORS]
        return [float(g) for g in np.atleast_1d(self.gamma)]

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        self.centers_ = Xt[rng.choice(len(Xt), min(self.n_centers, len(Xt)), replace=False)]
        folds = np.array_split(rng.permutation(len(Xt)), min(self.cv, len(Xt)))
        self.cv_scores_: dict[float, float] = {}
        candidates = self._candidates(Xt)
        for gamma in candidates if len(candidates) > 1 else []:
            target_kernel = kernel_matrix(Xt, self.centers_, "rbf", gamma)
            source_mean = kernel_matrix(Xs, self.centers_, "rbf", gamma).mean(axis=0)
            held_out = []
            for fold in folds:
                train = np.setdiff1d(np.arange(len(Xt)), fold)
                alpha = fit_alpha(target_kernel[train], source_mean, self.max_iter, self.tol)
                held_out.append(np.mean(np.log(np.maximum(target_kernel[fold] @ alpha, 1e-300))))
            self.cv_scores_[gamma] = float(np.mean(held_out))
        self.gamma_ = max(self.cv_scores_, key=self.cv_scores_.get) if self.cv_scores_ else candidates[0]
        target_kernel = kernel_matrix(Xt, self.centers_, "rbf", self.gamma_)
        source_kernel = kernel_matrix(Xs, self.centers_, "rbf", self.gamma_)
        self.alpha_ = fit_alpha(target_kernel, source_kernel.mean(axis=0), self.max_iter, self.tol)
        self.sample_weight_ = source_kernel @ self.alpha_
        return Xs

    def density_ratio(self, X) -> np.ndarray:
        """The estimated importance w(x) = p_target(x) / p_source(x) at the samples ``X``."""
        check_is_fitted(self, "alpha_")
        X = as_matrix(X, "X", "kliep.density_ratio")
        if X.shape[1] != self.centers_.shape[1]:
            raise DataError(
                f"kliep.density_ratio: X has {X.shape[1]} features but the adapter was fitted on "
                f"{self.centers_.shape[1]}"
            )
        return kernel_matrix(X, self.centers_, "rbf", self.gamma_) @ self.alpha_

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        return X
