"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin 2023, "Independent Component Alignment for
Multi-Task Learning", CVPR).

The gradient matrix ``G`` (K × D) is replaced by an aligned one ``Ĝ = B G`` whose rows are orthogonal
with equal norms, i.e. whose condition number is 1, so no loss dominates and none conflicts. From the
eigen-decomposition of the Gram matrix ``M = G Gᵀ = V Λ Vᵀ``:

    B = σ · V Λ^{-1/2} Vᵀ,   σ = √λ_min (the smallest singular value of G),

so ``Ĝ Ĝᵀ = σ² I``: every aligned gradient has the norm of ``G``'s smallest singular value. With linearly
dependent gradients only the eigenvalues above ``λ_max · K · ε_float32`` are kept (the rank rule of the
authors' code; ``σ`` is then the smallest kept singular value, and the non-zero singular values of ``Ĝ``
are all ``σ``). The direction is ``Σ_i p_i Ĝ_i = (pᵀB) G`` with preference weights ``p``
(default 1 each, as in the paper); the logged weights are its coefficients on the rows, ``B p``. With
``on: representation`` this is the paper's Aligned-MTL-UB.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, field_validator
from torch import Tensor

from crosstask.errors import ConfigError, SolverError, suggest
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


class AlignedMTLConfig(GradientWeightingConfig):
    preferences: dict[str, float] = Field(
        default_factory=dict,
        description="preference weight per loss name for summing the aligned gradients (default 1 each)",
    )

    @field_validator("preferences")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = [k for k, w in value.items() if w < 0]
        if negative:
            raise ValueError(f"preferences must be >= 0; negative for {', '.join(negative)}")
        return value


def alignment_matrix(m: Tensor) -> Tensor:
    """``B`` (K × K, float64) with ``B G`` the aligned gradients, from the Gram matrix ``m = G Gᵀ``.

    All-zero gradients give ``B = 0``. Raises :class:`SolverError` for NaN/inf gradients.
    """
    m = m.double()
    if not bool(torch.isfinite(m).all()):
        raise SolverError("Aligned-MTL: the gradients hold NaN/inf")
    eigenvalues, eigenvectors = torch.linalg.eigh(m)
    largest = float(eigenvalues.max())
    if not largest > 0:
        return torch.zeros_like(m)
    keep = eigenvalues > largest * m.shape[0] * FLOAT32_EPS  # the rank rule of the authors' code
    lam, v = eigenvalues[keep], eigenvectors[:, keep]
    sigma = lam.min().sqrt()
    return sigma * (v * lam.rsqrt()) @ v.T


@WEIGHTINGS.register("aligned_mtl", config=AlignedMTLConfig)
class AlignedMTL(GradientWeighting):
    """Align the gradients to orthogonal, equal-norm ones (condition number 1), then sum (Senushkin et al. 2023)."""

    config: AlignedMTLConfig

    def __init__(self, config: AlignedMTLConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        for name in config.preferences:
            if name not in self.loss_names:
                raise ConfigError(
                    f"weighting.preferences.{name}: the method produces no loss '{name}'."
                    f"{suggest(name, self.loss_names)} Its losses: {', '.join(self.loss_names)}"
                )
        self.preferences = torch.tensor(
            [float(config.preferences.get(n, 1.0)) for n in self.loss_names], dtype=torch.float64
        )

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        try:
            b = alignment_matrix(gram(grads))
        except SolverError as exc:
            raise SolverError(f"weighting 'aligned_mtl' at step {context.step + 1}: {exc}") from None
        weights = (b @ self.preferences).to(grads.device, grads.dtype)
        return weights @ grads, weights
