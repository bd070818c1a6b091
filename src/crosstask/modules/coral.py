"""The CORAL loss (Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV
2016 Workshops): the distance between the second-order statistics of two feature batches.

Equation 1 of the paper, with the covariances of equations 2 and 3::

    ℓ_CORAL = ‖C_S − C_T‖²_F / (4 d²),    C = (XᵀX − (1ᵀX)ᵀ(1ᵀX) / n) / (n − 1)

for ``n × d`` feature batches ``X``. Multi-domain CORAL for domain generalization (Gulrajani & Lopez-Paz
2021, "In Search of Lost Domain Generalization", ICLR; DomainBed's CORAL) also matches the means; that term
is :func:`mean_distance`, ``‖μ_S − μ_T‖² / d``.
"""

from __future__ import annotations

from torch import Tensor


def covariance(features: Tensor) -> Tensor:
    """The unbiased ``d × d`` covariance of an ``n × d`` batch (equations 2 and 3 of Sun & Saenko 2016)."""
    x = features.float().flatten(1)
    n = x.shape[0]
    centered = x - x.mean(0, keepdim=True)
    return centered.T @ centered / max(n - 1, 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """``‖C_S − C_T‖²_F / (4 d²)``: zero when the two batches have the same covariance."""
    d = source.flatten(1).shape[1]
    difference = covariance(source) - covariance(target)
    return difference.pow(2).sum() / (4 * d * d)


def mean_distance(source: Tensor, target: Tensor) -> Tensor:
    """``‖μ_S − μ_T‖² / d``: the mean-matching term of multi-domain CORAL (DomainBed)."""
    difference = source.float().flatten(1).mean(0) - target.float().flatten(1).mean(0)
    return difference.pow(2).mean()
