"""IMTL: impartial multi-task learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, "Towards
Impartial Multi-task Learning", ICLR).

**IMTL-G** (gradient balance) finds the combination ``d = Σ α_i g_i`` with ``Σ α_i = 1`` whose projections
on every unit gradient ``u_i = g_i / ‖g_i‖`` are equal, in closed form: with
``D = [g_1 − g_i]_{i≥2}`` and ``U = [u_1 − u_i]_{i≥2}``, ``α_{2..K} = g_1 Uᵀ (D Uᵀ)⁻¹`` and
``α_1 = 1 − Σ_{i≥2} α_i``. Every product there is a Gram-matrix entry divided by gradient norms, so the
solve is K × K whatever the model size. A singular ``D Uᵀ`` (linearly dependent gradients) is solved by
least squares and the result accepted only if the projections are equal within tolerance; otherwise
:class:`SolverError`. Losses with an all-zero gradient have no unit gradient: they are left out of the
solve (weight 0; they contribute nothing to the direction anyway).

**IMTL-L** (loss balance) scales each loss by a learnable ``e^{s_i}`` and trains ``s_i`` on
``e^{s_i}·L_i − s_i`` (minimized at ``e^{s_i}L_i = 1``); task-specific parameters receive the gradient of
the scaled losses. ``mode: hybrid`` (the default) is the paper's full **IMTL**: IMTL-G on the gradients of
the scaled losses plus IMTL-L; ``mode: gradient`` is IMTL-G alone on the raw losses. The logged weights
are the coefficients of the direction on the raw loss gradients, ``α_i·e^{s_i}``. The paper takes the
gradients with respect to the shared representation (``on: representation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting, GradientWeightingConfig
from crosstask.weighting.solvers import gram

EQUAL_TOLERANCE = 1e-6  # projections must agree to this, relative to ‖d‖ + max ‖g_i‖


class IMTLConfig(GradientWeightingConfig):
    mode: Literal["hybrid", "gradient"] = Field(
        default="hybrid",
        description="hybrid: the paper's IMTL (IMTL-G on learned loss scales e^s L, IMTL-L trains s); "
        "gradient: IMTL-G alone on the raw losses",
    )


def imtl_g_weights(m: Tensor) -> Tensor:
    """IMTL-G's ``α`` (sum 1) for the Gram matrix ``m``: equal projections of ``Σ α_i g_i`` on all ``u_i``.

    Raises :class:`SolverError` when no such combination is found (NaN/inf gradients, or a singular system
    without an exact solution).
    """
    m = m.double()
    k = m.shape[0]
    if not bool(torch.isfinite(m).all()):
        raise SolverError("IMTL-G: the gradients hold NaN/inf")
    norms = m.diagonal().clamp_min(0).sqrt()
    active = (norms > 1e-12 * float(norms.max())).nonzero().flatten() if float(norms.max()) > 0 else None
    alpha = torch.zeros(k, dtype=torch.float64)
    if active is None or len(active) == 0:  # no gradient at all: any combination is the zero vector
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    if len(active) == 1:
        alpha[active] = 1.0
        return alpha
    ma, n = m[active][:, active], norms[active]
    scaled = ma / n[None, :]  # scaled[i, j] = g_i · u_j
    # D Uᵀ[i, j] = (g_1 − g_i)·(u_1 − u_j) and g_1 Uᵀ[j] = g_1·(u_1 − u_j), for i, j ≥ 2 (index 0 here)
    du = scaled[0, 0] - scaled[0, 1:][None, :] - scaled[1:, 0][:, None] + scaled[1:, 1:]
    g1u = scaled[0, 0] - scaled[0, 1:]
    rest = torch.linalg.lstsq(du.T, g1u[:, None], driver="gelsd").solution.flatten()  # α D Uᵀ = g_1 Uᵀ
    a = torch.cat([(1 - rest.sum()).reshape(1), rest])
    projections = (a @ ma) / n
    d_norm = float((a @ ma @ a).clamp_min(0).sqrt())
    spread = float(projections.max() - projections.min())
    if not (bool(torch.isfinite(a).all()) and spread <= EQUAL_TOLERANCE * (d_norm + float(n.max()))):
        raise SolverError(
            f"IMTL-G found no combination with equal projections (spread {spread:.3g}); the gradients may "
            "be linearly dependent"
        )
    alpha[active] = a
    return alpha


@WEIGHTINGS.register("imtl", config=IMTLConfig)
class IMTL(GradientWeighting):
    """Impartial MTL: equal projections on every unit gradient, plus learned loss scales (Liu et al. 2021)."""

    config: IMTLConfig

    def __init__(self, config: IMTLConfig, loss_names: Sequence[str]):
        super().__init__(config, loss_names)
        if config.mode == "hybrid":
            self.params["log_scale"] = nn.Parameter(torch.zeros(len(self.loss_names)))

    def prescale(self, context: BalanceContext) -> Tensor | None:
        # hybrid: IMTL-G on the scaled losses e^s·L (s held constant here)
        return torch.exp(self.params["log_scale"].detach()) if self.config.mode == "hybrid" else None

    def own_loss(self, losses: Tensor, context: BalanceContext) -> Tensor | None:
        # IMTL-L: s_i trained on e^{s_i}·L_i − s_i (L_i constant here); /accumulate like the losses
        if self.config.mode != "hybrid":
            return None
        s = self.params["log_scale"]
        return (torch.exp(s) * losses.to(s.device) - s / context.accumulate).sum()

    def aggregate(self, grads: Tensor, losses: Tensor, context: BalanceContext) -> tuple[Tensor, Tensor]:
        try:
            alpha = imtl_g_weights(gram(grads))
        except SolverError as exc:
            raise SolverError(
                f"weighting 'imtl' at step {context.step + 1}: {exc}. Check the losses, or use a weighting "
                "that tolerates dependent gradients (mgda, cagrad)"
            ) from None
        alpha = alpha.to(grads.device, grads.dtype)
        return alpha @ grads, alpha
