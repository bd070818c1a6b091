"""LogME (You, Liu, Wang & Long 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML).

For each target class ``k``, the one-vs-rest indicator ``y = 1[label = k]`` is modelled as a Bayesian linear
regression on the features ``F`` (n × D): prior ``w ~ N(0, α⁻¹ I_D)``, noise ``y | w ~ N(F w, β⁻¹ I_n)``.
Its log evidence (marginal likelihood, eq. 2 of the paper) is

    L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖F m − y‖² − α/2 mᵀm − 1/2 log|A|,
    A = α I + β FᵀF,   m = β A⁻¹ Fᵀ y.

It is maximized over ``α, β`` by the fixed-point iteration of MacKay's evidence framework (their
Algorithm 2): with ``σ_i`` the eigenvalues of ``FᵀF`` (squared singular values of ``F``),
``γ = Σ_i βσ_i / (α + βσ_i)``, ``α ← γ / mᵀm``, ``β ← (n − γ) / ‖F m − y‖²``, until both stop changing.
LogME is the maximized ``L / n`` averaged over the classes. Higher is better; the value is on the scale of
a per-sample log likelihood (typically between −1 and 2 for one-vs-rest indicators).

Everything is computed in float64 from one eigendecomposition, shared by the classes: of ``FᵀF`` when
``n ≥ D``, of ``F Fᵀ`` when ``n < D`` (then ``D − n`` eigenvalues of ``FᵀF`` are zero). In that basis,
with ``p_i = v_iᵀ Fᵀ y`` (``v_i`` the eigenvectors of ``FᵀF``), ``mᵀm = Σ_i β² p_i² / (α + βσ_i)²`` and
``‖F m − y‖² = ‖y‖² − Σ_i p_i² β (2α + βσ_i) / (α + βσ_i)²``, which never divide by a small ``σ_i``. The
features are used as given (the paper does not center or scale them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from crosstask.analysis.transferability.base import TransferabilityScore, TransferData
from crosstask.registry import TRANSFERABILITY, ComponentConfig

TINY = 1e-300  # keeps a perfectly fitted target (zero residual) or an orthogonal one (m = 0) finite
BOUNDS = (1e-100, 1e100)  # α and β stay inside: a feature equal to a class indicator drives β to infinity and
# a rank-deficient F lets α go to 0; squares of either must stay finite


class LogMEConfig(ComponentConfig):
    max_iter: int = Field(100, ge=1, description="at most this many fixed-point updates of alpha, beta")
    tol: float = Field(1e-6, gt=0, description="stop when alpha and beta change by less than this (relative)")


@dataclass(frozen=True)
class Evidence:
    """The maximized evidence of one target vector: ``log_evidence`` is ``L(α, β) / n``."""

    log_evidence: float
    alpha: float
    beta: float
    iterations: int


class Spectrum:
    """The eigendecomposition of ``FᵀF`` that every target of one feature matrix shares."""

    def __init__(self, features: np.ndarray):
        f = np.asarray(features, dtype=np.float64)
        self.n, self.d = f.shape
        self.features = f
        if self.n >= self.d:
            sigma, self.vectors = np.linalg.eigh(f.T @ f)  # v_i: eigenvectors of FᵀF
            self.dual = False
        else:
            sigma, self.vectors = np.linalg.eigh(f @ f.T)  # u_i = F v_i / s_i: eigenvectors of F Fᵀ
            self.dual = True
        self.sigma = np.clip(sigma, 0.0, None)

    def projections(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``p_i² = (v_iᵀ Fᵀ y)²`` per eigenvalue, and (``n < D`` only) ``z_i² = (u_iᵀ y)²`` on the complete
        eigenbasis ``u`` of ``F Fᵀ``."""
        if self.dual:
            z2 = (self.vectors.T @ y) ** 2  # p_i = s_i z_i
            return self.sigma * z2, z2
        p2 = (self.vectors.T @ (self.features.T @ y)) ** 2
        # v_iᵀFᵀy is exactly 0 where σ_i = 0; rounding leaves ~1e-30 that the division by (α + βσ_i)² would blow up
        p2[self.sigma <= self.sigma.max(initial=0.0) * self.d * np.finfo(np.float64).eps] = 0.0
        return p2, None

    def residual(self, p2: np.ndarray, z2: np.ndarray | None, yy: float, alpha: float, beta: float) -> float:
        """``‖F m − y‖²``. For ``n < D`` as ``Σ_i α² z_i² / (α + βσ_i)²`` (the basis is complete), which has
        no cancellation when the features nearly interpolate ``y``; else ``‖y‖² − Σ_i p_i² β (2α + βσ_i) /
        (α + βσ_i)²``."""
        denom = alpha + beta * self.sigma
        if z2 is not None:
            return float((alpha**2 * z2 / denom**2).sum()) + max(yy - float(z2.sum()), 0.0)
        return max(yy - float((p2 * beta * (2 * alpha + beta * self.sigma) / denom**2).sum()), 0.0)


def log_evidence(spectrum: Spectrum, y: np.ndarray, max_iter: int = 100, tol: float = 1e-6) -> Evidence:
    """Maximize the evidence of ``y`` (n,) over ``α, β`` by the fixed-point iteration; see the module text."""
    y = np.asarray(y, dtype=np.float64)
    n, sigma = spectrum.n, spectrum.sigma
    p2, z2 = spectrum.projections(y)
    yy = float(y @ y)
    alpha, beta = 1.0, 1.0
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        denom = alpha + beta * sigma
        gamma = float((beta * sigma / denom).sum())
        mm = float((beta**2 * p2 / denom**2).sum())
        residual = max(spectrum.residual(p2, z2, yy, alpha, beta), TINY)
        new_alpha = gamma / max(mm, TINY)
        new_beta = (n - gamma) / residual
        converged = abs(new_alpha - alpha) <= tol * abs(alpha) and abs(new_beta - beta) <= tol * abs(beta)
        alpha, beta = (min(max(value, BOUNDS[0]), BOUNDS[1]) for value in (new_alpha, new_beta))
        if converged:
            break
    return Evidence(evidence(spectrum, p2, z2, yy, alpha, beta) / n, alpha, beta, iterations)


def evidence(
    spectrum: Spectrum, p2: np.ndarray, z2: np.ndarray | None, yy: float, alpha: float, beta: float
) -> float:
    """``L(α, β)`` (not divided by n) from the spectrum and the projections of one target."""
    n, d, sigma = spectrum.n, spectrum.d, spectrum.sigma
    denom = alpha + beta * sigma
    mm = float((beta**2 * p2 / denom**2).sum())
    residual = spectrum.residual(p2, z2, yy, alpha, beta)
    log_det = float(np.log(denom).sum()) + (d - len(sigma)) * math.log(alpha)  # zero eigenvalues if n < D
    return (
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * residual
        - alpha / 2 * mm
        - log_det / 2
    )


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME of ``features`` (n, D) for integer ``labels`` 0..C-1 (n,): the mean over classes of ``L / n``."""
    spectrum = Spectrum(features)
    classes = int(labels.max()) + 1
    values = [
        log_evidence(spectrum, (labels == k).astype(np.float64), max_iter, tol).log_evidence
        for k in range(classes)
    ]
    return float(np.mean(values))


@TRANSFERABILITY.register("logme", config=LogMEConfig)
class LogME(TransferabilityScore):
    """LogME: the maximized log evidence of a Bayesian linear model on the features, per sample."""

    needs = "features"

    def score(self, data: TransferData) -> float:
        return logme(data.features, data.labels, self.config.max_iter, self.config.tol)
