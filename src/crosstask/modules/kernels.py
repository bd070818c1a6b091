"""Gaussian kernels and the maximum mean discrepancy (MMD) estimators of DAN and JAN.

``MMD²(P, Q) = E k(s, s') + E k(t, t') − 2 E k(s, t)`` (Gretton et al. 2012, "A Kernel Two-Sample Test",
JMLR, lemma 6). DAN (Long, Cao, Wang & Jordan 2015, "Learning Transferable Features with Deep Adaptation
Networks", ICML) uses the multi-kernel MMD with ``k = Σ_u β_u k_u``, a combination of Gaussian kernels of
different bandwidths; JAN (Long, Zhu, Wang & Jordan 2017, "Deep Transfer Learning with Joint Adaptation
Networks", ICML) matches the *joint* distribution of several layers with the product kernel
``Π_l k^l(z^l, z'^l)`` (the JMMD).

Kernels. ``GaussianKernels(multipliers)`` is the sum of ``exp(−‖a − b‖² / (2 σ_u²))`` with
``σ_u² = multiplier_u · mean squared pairwise distance`` of the batch (source and target together,
detached: the features cannot shrink the distances to game the bandwidth). The multipliers ``2^k,
k = −3, ..., 1`` are the Transfer-Learning-Library's setting for DAN and JAN (the DAN paper uses a wider
family of bandwidths around the median pairwise distance and learns the weights β; here β is uniform).
``GaussianKernels(sigma=...)`` is one kernel of fixed bandwidth (JAN's softmax layer: σ = 0.92, i.e.
``2σ² ≈ 1.68`` as in the JAN authors' code).

Estimators (``estimator=``):

- ``linear``: the linear-time unbiased estimate of Gretton et al. (2012, section 6) that the DAN and JAN
  papers use: the batch is cut into quad-tuples ``(s_2i−1, s_2i, t_2i−1, t_2i)`` and
  ``MMD² ≈ mean_i [k(s_2i−1, s_2i) + k(t_2i−1, t_2i) − k(s_2i−1, t_2i) − k(s_2i, t_2i−1)]``. O(n), noisy.
  With batches of different sizes it uses the first ``2⌊min(n_s, n_t)/2⌋`` rows of each (rows are shuffled).
- ``unbiased``: the quadratic-time U-statistic (Gretton et al. 2012, lemma 6); within-domain pairs exclude
  ``i = j``. What TLlib's non-linear DAN/JAN computes (up to a constant). May be slightly negative.
- ``biased``: the V-statistic (Gretton et al. 2012), the squared distance of the empirical mean embeddings:
  ≥ 0, and 0 exactly when both samples are the same set of points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from crosstask.errors import ConfigError

Estimator = Literal["linear", "unbiased", "biased"]
TLLIB_MULTIPLIERS: tuple[float, ...] = tuple(2.0**k for k in range(-3, 2))  # 1/8, 1/4, 1/2, 1, 2


def mean_squared_distance(x: Tensor) -> Tensor:
    """``mean_{i,j} ‖x_i − x_j‖²`` over all ordered pairs (``i = j`` included), in O(n·d)."""
    x = x.flatten(1).float()
    return 2.0 * (x.pow(2).sum(1).mean() - x.mean(0).pow(2).sum())


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` for every pair, with a finite gradient at zero distance (unlike ``cdist``)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min(0.0)


@dataclass(frozen=True)
class GaussianKernels:
    """A sum of Gaussian kernels with bandwidths relative to the batch, or one kernel of fixed ``sigma``."""

    multipliers: tuple[float, ...] = TLLIB_MULTIPLIERS
    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.sigma is None and (not self.multipliers or min(self.multipliers) <= 0):
            raise ConfigError(f"kernel bandwidth multipliers must be positive, got {list(self.multipliers)}")
        if self.sigma is not None and self.sigma <= 0:
            raise ConfigError(f"a kernel bandwidth sigma must be positive, got {self.sigma}")

    def variances(self, joint: Tensor) -> Tensor:
        """``σ_u²`` of every kernel for this batch (``joint``: source and target rows), without gradient."""
        if self.sigma is not None:
            return torch.tensor([self.sigma**2], device=joint.device)
        scale = mean_squared_distance(joint.detach()).clamp_min(1e-12)
        return scale * torch.tensor(self.multipliers, device=joint.device)

    def __call__(self, distances: Tensor, variances: Tensor) -> Tensor:
        """The summed kernel value for squared distances of any shape."""
        return torch.exp(-distances.unsqueeze(-1) / (2.0 * variances)).sum(-1)


def mmd(
    source: Tensor,
    target: Tensor,
    kernels: GaussianKernels | None = None,
    estimator: Estimator = "unbiased",
) -> Tensor:
    """The (multi-kernel) MMD² between the rows of ``source`` and ``target`` (DAN)."""
    return joint_mmd([source], [target], [kernels or GaussianKernels()], estimator)


def joint_mmd(
    source: Sequence[Tensor],
    target: Sequence[Tensor],
    kernels: Sequence[GaussianKernels],
    estimator: Estimator = "unbiased",
) -> Tensor:
    """The joint MMD² of JAN: one tensor per layer in ``source`` and ``target`` (same rows), one kernel family
    per layer, the kernel of the joint being the product over layers. Computed in float32 even under
    autocast: bfloat16 distances would swamp the small differences the estimate is made of."""
    device = source[0].device.type if len(source) else "cpu"
    with torch.autocast(device, enabled=False):
        return _joint_mmd(source, target, kernels, estimator)


def _joint_mmd(
    source: Sequence[Tensor],
    target: Sequence[Tensor],
    kernels: Sequence[GaussianKernels],
    estimator: Estimator,
) -> Tensor:
    if not (len(source) == len(target) == len(kernels)) or not source:
        raise ValueError("joint_mmd needs one source tensor, one target tensor and one kernel per layer")
    ns, nt = len(source[0]), len(target[0])
    if any(len(s) != ns for s in source) or any(len(t) != nt for t in target):
        raise ValueError("every layer must have the same rows (samples) as the first one")
    variances = [
        k.variances(torch.cat([s.flatten(1), t.flatten(1)]))
        for s, t, k in zip(source, target, kernels, strict=True)
    ]
    if estimator == "linear":
        return _linear(source, target, kernels, variances)
    if estimator not in ("unbiased", "biased"):
        raise ConfigError(f"unknown MMD estimator '{estimator}'; choose linear, unbiased or biased")
    minimum = 2 if estimator == "unbiased" else 1
    if min(ns, nt) < minimum:
        raise ConfigError(
            f"the {estimator} MMD estimator needs at least {minimum} samples per domain in a batch, got "
            f"{ns} source and {nt} target; raise train.batch_size"
        )

    def gram(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
        product = None
        for x, y, kernel, var in zip(a, b, kernels, variances, strict=True):
            value = kernel(squared_distances(x, y), var)
            product = value if product is None else product * value
        return product

    k_ss, k_tt, k_st = gram(source, source), gram(target, target), gram(source, target)
    if estimator == "biased":
        return k_ss.mean() + k_tt.mean() - 2.0 * k_st.mean()
    within_s = (k_ss.sum() - k_ss.diagonal().sum()) / (ns * (ns - 1))
    within_t = (k_tt.sum() - k_tt.diagonal().sum()) / (nt * (nt - 1))
    return within_s + within_t - 2.0 * k_st.mean()


def _linear(
    source: Sequence[Tensor],
    target: Sequence[Tensor],
    kernels: Sequence[GaussianKernels],
    variances: list[Tensor],
) -> Tensor:
    pairs = min(len(source[0]), len(target[0])) // 2
    if pairs < 1:
        raise ConfigError(
            f"the linear MMD estimator needs at least 2 samples per domain in a batch, got {len(source[0])} "
            f"source and {len(target[0])} target; raise train.batch_size"
        )

    def paired(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
        product = None
        for x, y, kernel, var in zip(a, b, kernels, variances, strict=True):
            value = kernel((x.flatten(1).float() - y.flatten(1).float()).pow(2).sum(1), var)
            product = value if product is None else product * value
        return product

    end = 2 * pairs
    s1, s2 = [s[0:end:2] for s in source], [s[1:end:2] for s in source]
    t1, t2 = [t[0:end:2] for t in target], [t[1:end:2] for t in target]
    return (paired(s1, s2) + paired(t1, t2) - paired(s1, t2) - paired(s2, t1)).mean()
