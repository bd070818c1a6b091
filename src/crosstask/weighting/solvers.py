"""Small solvers shared by the gradient weightings. They work on the Gram matrix ``M = G Gᵀ`` of the
per-loss gradients (K × K, K = number of losses), in float64 on the host: cheap whatever the model size.

A solver that fails raises :class:`~crosstask.errors.SolverError`; it never falls back quietly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crosstask.errors import SolverError


def gram(grads: Tensor) -> Tensor:
    """``G Gᵀ`` as float64 on the CPU (one host transfer of a K × K matrix), for the solvers.

    The product itself runs in the gradients' precision: a single-precision product over model-sized rows is
    5-10x faster than a double one and its rounding (relative ~1e-7) is far below what the weightings resolve.
    """
    g = grads if grads.dtype == torch.float64 else grads.float()
    return (g @ g.T).double().cpu()


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1
    index = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int((u - cumulative / index > 0).nonzero().max())
    theta = cumulative[rho] / (rho + 1)
    return (v - theta).clamp_min(0)


def gram_factor(m: Tensor) -> Tensor:
    """A square ``L`` with ``L Lᵀ = M`` for a positive semi-definite Gram matrix (eigenvalues below 0,
    rounding errors, clamped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(m.double())
    return eigenvectors * eigenvalues.clamp_min(0).sqrt()


def nnls(a: Tensor, b: Tensor) -> Tensor:
    """``argmin_{x ≥ 0} ‖a x − b‖`` exactly (Lawson-Hanson active set, scipy); SolverError on failure."""
    from scipy.optimize import nnls as scipy_nnls

    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise SolverError("non-negative least squares: the gradients hold NaN/inf")
    try:
        x, _ = scipy_nnls(a.double().numpy(), b.double().numpy(), maxiter=50 * a.shape[1])
    except RuntimeError as exc:
        raise SolverError(f"non-negative least squares did not converge ({exc})") from None
    return torch.from_numpy(x)


def min_norm_point(m: Tensor) -> Tensor:
    """The weights ``w`` on the simplex minimizing ``wᵀ M w``: the min-norm point of the convex hull of the
    gradients, the MGDA problem (Sener & Koltun 2018).

    Two gradients: the closed form of their Algorithm 1. More: exactly, as non-negative least squares. For
    ``u ≥ 0`` minimizing ``‖Lᵀu‖² + (1ᵀu − 1)²`` (``M = L Lᵀ``), writing ``u = t·w`` with ``w`` on the simplex
    gives the value ``‖Lᵀw‖² / (1 + ‖Lᵀw‖²)``, increasing in ``wᵀMw``; so ``w* = u*/Σu*``.
    """
    m = m.double()
    k = m.shape[0]
    if not bool(torch.isfinite(m).all()):
        raise SolverError("min-norm solver: the gradients hold NaN/inf")
    if k == 1:
        return torch.ones(1, dtype=m.dtype)
    if k == 2:
        a, b, c = m[0, 0], m[0, 1], m[1, 1]
        denominator = a - 2 * b + c
        gamma = torch.tensor(0.5, dtype=m.dtype) if denominator <= 0 else ((c - b) / denominator).clamp(0, 1)
        return torch.stack([gamma, 1 - gamma])
    system = torch.cat([gram_factor(m).T, torch.ones(1, k, dtype=m.dtype)])
    target = torch.zeros(k + 1, dtype=m.dtype)
    target[-1] = 1.0
    u = nnls(system, target)
    total = float(u.sum())
    if not total > 0:
        raise SolverError(f"min-norm solver returned an empty solution (sum {total})")
    return u / total
