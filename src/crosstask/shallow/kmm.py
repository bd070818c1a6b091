"""KMM: kernel mean matching, source sample weights whose weighted kernel mean matches the target's.

Huang, Smola, Gretton, Borgwardt and Schölkopf, 2007, "Correcting Sample Selection Bias by Unlabeled Data",
NeurIPS. The weights β solve the quadratic program of their Eq. 7 (n_s source, n_t target samples)::

    min_β  ½ βᵀ K β - κᵀ β   s.t.  β_i ∈ [0, B],  |Σ_i β_i - n_s| ≤ n_s ε,
    K_ij = k(x_i, x_j) over source pairs,   κ_i = (n_s / n_t) Σ_j k(x_i, x'_j) over target samples x'_j.

Their experiments use B = 1000 and ε = (√n_s - 1)/√n_s (our defaults) with a Gaussian kernel. We solve the
QP with accelerated projected gradient (FISTA with gradient restarts, step 1/λ_max(K)); the projection onto
the box ∩ {lo ≤ Σβ ≤ hi} is clip(v - τ, 0, B) with the scalar τ found by root finding. The weights are
``sample_weight_``; features are not changed, and the final estimator gets the weights when it accepts
``sample_weight`` (1-NN does not: with it KMM changes nothing and a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.optimize
from pydantic import Field
from sklearn.exceptions import ConvergenceWarning

from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter
from crosstask.shallow.kernels import kernel_matrix, median_gamma


class KMMConfig(ComponentConfig):
    kernel: Literal["rbf", "linear"] = Field(default="rbf", description="the kernel k (the paper: Gaussian)")
    gamma: float | None = Field(default=None, gt=0.0, description="rbf width; None: median heuristic")
    B: float = Field(default=1000.0, ge=1.0, description="upper bound of every weight")
    eps: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="ε of the sum constraint; None: (√n_s - 1)/√n_s"
    )
    tol: float = Field(default=1e-6, gt=0.0, description="stop when the relative change of β is below this")
    max_iter: int = Field(default=10000, ge=1, description="iterations of the QP solver")


def project_box_sum(v: np.ndarray, upper: float, low: float, high: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto {0 ≤ β ≤ upper, low ≤ Σβ ≤ high}.

    The set is non-empty for KMM's constraints: B ≥ 1 ≥ 1 - ε, so β = 1 lies in it.
    """
    clipped = np.clip(v, 0.0, upper)
    total = clipped.sum()
    if low <= total <= high:
        return clipped
    target = high if total > high else low
    # Σ clip(v - τ, 0, upper) falls monotonically in τ; the bracket holds the sum at both ends
    bracket = (0.0, float(v.max())) if total > high else (float(v.min()) - upper, 0.0)
    tau = scipy.optimize.brentq(
        lambda t: np.clip(v - t, 0.0, upper).sum() - target, *bracket, xtol=1e-12, rtol=1e-12
    )
    return np.clip(v - tau, 0.0, upper)


def solve_kmm_qp(
    K: np.ndarray, kappa: np.ndarray, upper: float, low: float, high: float, tol: float, max_iter: int
) -> tuple[np.ndarray, bool, int]:
    """Minimize ½βᵀKβ - κᵀβ over {0 ≤ β ≤ upper, low ≤ Σβ ≤ high}: (β, converged, iterations)."""
    n = len(kappa)
    lipschitz = float(scipy.linalg.eigvalsh(K, subset_by_index=[n - 1, n - 1])[0])
    step = 1.0 / max(lipschitz, 1e-12)
    beta = project_box_sum(np.ones(n), upper, low, high)
    momentum_point, t = beta.copy(), 1.0
    for iteration in range(1, max_iter + 1):
        new = project_box_sum(momentum_point - step * (K @ momentum_point - kappa), upper, low, high)
        if np.dot(momentum_point - new, new - beta) > 0:  # momentum points uphill: restart it
            t = 1.0
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum_point = new + ((t - 1.0) / t_next) * (new - beta)
        change = np.linalg.norm(new - beta)
        beta, t = new, t_next
        if change <= tol * max(1.0, np.linalg.norm(beta)):
            return beta, True, iteration
    return beta, False, max_iter


@SHALLOW.register("kmm", config=KMMConfig)
class KMM(ShallowAdapter):
    """KMM (Huang et al. 2007): source weights matching the target kernel mean (a QP), for the estimator."""

    registry_name = "kmm"
    config_model = KMMConfig

    def __init__(
        self,
        kernel: str = "rbf",
        gamma: float | None = None,
        B: float = 1000.0,
        eps: float | None = None,
        tol: float = 1e-6,
        max_iter: int = 10000,
        estimator=None,
    ):
        self.kernel = kernel
        self.gamma = gamma
        self.B = B
        self.eps = eps
        self.tol = tol
        self.max_iter = max_iter
        self.estimator = estimator

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        ns, nt = len(Xs), len(Xt)
        self.gamma_ = self.gamma if self.gamma is not None else median_gamma(np.vstack([Xs, Xt]))
        K = kernel_matrix(Xs, Xs, self.kernel, self.gamma_)
        kappa = (ns / nt) * kernel_matrix(Xs, Xt, self.kernel, self.gamma_).sum(axis=1)
        eps = self.eps if self.eps is not None else (np.sqrt(ns) - 1.0) / np.sqrt(ns)
        weights, self.converged_, self.n_iter_ = solve_kmm_qp(
            K, kappa, self.B, ns * (1.0 - eps), ns * (1.0 + eps), self.tol, self.max_iter
        )
        if not self.converged_:
            warnings.warn(
                f"kmm: the QP solver stopped after max_iter={self.max_iter} iterations before reaching "
                f"tol={self.tol}; raise max_iter or tol",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.sample_weight_ = weights
        return Xs

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        return X
