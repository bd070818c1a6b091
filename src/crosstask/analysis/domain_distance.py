"""How far apart two domains are, measured on samples (raw inputs or a model's features).

- :func:`proxy_a_distance`: the proxy A-distance (Ben-David, Blitzer, Crammer & Pereira 2007, "Analysis of
  Representations for Domain Adaptation", NeurIPS; Ben-David et al. 2010, "A theory of learning from
  different domains", Machine Learning). A classifier is trained to tell source (0) from target (1); with
  ``ε`` its held-out error, ``PAD = 2 (1 − 2ε)``: 0 when the domains cannot be told apart (ε = 1/2), 2 when
  they are perfectly separable. Here ε is the stratified k-fold cross-validated error of a linear classifier
  on standardized inputs (:func:`standardize`), on domains subsampled to the same size so that
  chance is 1/2; PAD is clipped to [0, 2] (an overfitting classifier can do worse than chance).
- :func:`mmd`: the squared maximum mean discrepancy (Gretton, Borgwardt, Rasch, Schölkopf & Smola 2012, "A
  Kernel Two-Sample Test", JMLR), ``MMD² = E k(s, s') + E k(t, t') − 2 E k(s, t)``, by default the unbiased
  U-statistic (within-domain pairs ``i ≠ j``; its expectation is the population MMD², so it is ≈ 0, possibly
  slightly negative, for two samples of one distribution). The Gaussian kernels are those of
  :mod:`crosstask.modules.kernels` (DAN/JAN), evaluated at fixed bandwidths.
- :func:`per_class_distance`: either distance between the samples of each class shared by both domains (the
  conditional shift ``P(x | y)``, which the marginal distance can hide).

Inputs are numpy arrays or torch tensors, one row per sample; inputs with more axes (images) are flattened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from crosstask.analysis.transferability.base import as_array, as_features
from crosstask.errors import ConfigError, DataError
from crosstask.modules import kernels

log = logging.getLogger(__name__)

Kernel = Literal["gaussian", "linear", "multi"]
MULTI_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)  # bandwidth multipliers of kernel="multi"


def _pair(source: Any, target: Any, min_samples: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Both domains as finite float64 matrices of one feature dimension, each with ``min_samples`` rows."""
    s = as_features(source, f"{where}: source", min_samples)
    t = as_features(target, f"{where}: target", min_samples)
    if s.shape[1] != t.shape[1]:
        raise DataError(
            f"{where}: source has {s.shape[1]} features per sample but target has {t.shape[1]}; both domains "
            "must be in one feature space (same extractor, same image size)"
        )
    return s, t


def _subsample(x: np.ndarray, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``size`` rows of ``x``, drawn without replacement (all of them, in order, if it has fewer)."""
    if size is None or len(x) <= size:
        return x
    return x[np.sort(rng.choice(len(x), size, replace=False))]


def _domain_classifier(classifier: Any, seed: int) -> Any:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if classifier == "logistic":
        model = LogisticRegression(max_iter=2000)
    elif classifier == "svm":
        model = LinearSVC(max_iter=20000, random_state=seed)
    elif isinstance(classifier, str):
        raise ConfigError(
            f"unknown domain classifier '{classifier}'; choose 'logistic', 'svm' (linear) or pass a "
            "scikit-learn classifier"
        )
    elif hasattr(classifier, "fit") and hasattr(classifier, "predict"):
        model = clone(classifier)
    else:
        raise ConfigError(
            f"classifier must be 'logistic', 'svm' or a scikit-learn classifier, got {classifier!r}"
        )
    return model


def standardize(x: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Columns to zero mean and unit variance over both domains (no domain label is read, so nothing leaks
    into the held-out folds). A column whose spread is below ``floor`` times the largest one is only
    centered: numerical noise in a constant column (an interpolated image's empty corner at 1e-15) would
    otherwise be blown up into a perfect, spurious domain feature."""
    centered = x - x.mean(axis=0)
    std = centered.std(axis=0)
    largest = float(std.max())
    if largest == 0:
        return centered
    return centered / np.where(std < floor * largest, largest, std)


def proxy_a_distance(
    source: Any, target: Any, *, classifier: Any = "logistic", folds: int = 5, seed: int = 0
) -> float:
    """The proxy A-distance ``2 (1 − 2ε)`` in [0, 2] between the rows of ``source`` and ``target``.

    Args:
        source, target: ``(n, d)`` samples of each domain (more axes are flattened).
        classifier: ``"logistic"`` (logistic regression), ``"svm"`` (linear SVM, as in Ben-David et al. and
            Ganin et al.'s DANN) or an unfitted scikit-learn classifier; inputs are standardized before it.
        folds: stratified cross-validation folds giving the held-out error ε (each domain needs that many
            samples).
        seed: draws the subsample that balances the domains and the folds.
    """
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"proxy_a_distance: folds must be an integer ≥ 2, got {folds!r}")
    s, t = _pair(source, target, folds, "proxy_a_distance")
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    size = min(len(s), len(t))
    s, t = _subsample(s, size, rng), _subsample(t, size, rng)
    x = standardize(np.concatenate([s, t]))
    y = np.concatenate([np.zeros(size, dtype=np.int64), np.ones(size, dtype=np.int64)])
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(_domain_classifier(classifier, seed), x, y, cv=split)
    error = float(np.mean(predicted != y))
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))


def median_bandwidth(x: torch.Tensor, max_rows: int = 1000, seed: int = 0) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``x`` (Gretton et al.
    2012), over at most ``max_rows`` rows drawn with ``seed``; the root mean squared distance if more than
    half the pairs coincide, 1 if all rows do."""
    if len(x) > max_rows:
        x = x[torch.from_numpy(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))]
    distances = kernels.squared_distances(x, x)
    upper = distances[torch.triu_indices(len(x), len(x), offset=1).unbind()].double().sqrt()
    median = float(upper.median()) if len(upper) else 0.0
    if median > 0:
        return median
    rms = float(upper.pow(2).mean().sqrt()) if len(upper) else 0.0
    return rms if rms > 0 else 1.0


def _linear_mmd(s: np.ndarray, t: np.ndarray, unbiased: bool) -> float:
    """MMD² with the linear kernel ``k(a, b) = aᵀb`` in O(n d), from sums instead of Gram matrices.
    (:mod:`crosstask.modules.kernels` only has distance-based Gaussian kernels, so it does not apply.)"""
    shift = np.concatenate([s, t]).mean(axis=0)  # MMD² is shift-invariant; centering avoids cancellation
    s, t = s - shift, t - shift
    if not unbiased:
        return float(np.sum((s.mean(axis=0) - t.mean(axis=0)) ** 2))

    def within(x: np.ndarray) -> float:  # mean of x_iᵀx_j over i ≠ j
        n = len(x)
        total = x.sum(axis=0)
        return float((total @ total - np.sum(x * x)) / (n * (n - 1)))

    return within(s) + within(t) - 2.0 * float(s.mean(axis=0) @ t.mean(axis=0))


def mmd(
    source: Any,
    target: Any,
    *,
    kernel: Kernel = "gaussian",
    bandwidth: float | None = None,
    unbiased: bool = True,
    max_samples: int | None = 2000,
    seed: int = 0,
) -> float:
    """The squared MMD between the rows of ``source`` and ``target``.

    Args:
        source, target: ``(n, d)`` samples of each domain (more axes are flattened).
        kernel: ``"gaussian"`` ``exp(−‖a − b‖² / (2 σ²))``, ``"multi"`` the mean of the MMD² of Gaussians at
            ``σ × {1/4, 1/2, 1, 2, 4}``, or ``"linear"`` ``aᵀb`` (then MMD² is the squared distance of the
            means, less ``tr(S_s)/n_s + tr(S_t)/n_t`` when unbiased, S the sample covariances).
        bandwidth: ``σ``; None takes the median distance between the rows of both (subsampled) domains.
        unbiased: the U-statistic (needs 2 samples per domain; ≈ 0 and possibly negative for one
            distribution) or, if False, the biased V-statistic (≥ 0).
        max_samples: the Gaussian kernels (quadratic cost) use at most this many rows per domain, drawn
            with ``seed``; None uses all. The linear kernel always uses all rows (linear cost).
    """
    if kernel not in ("gaussian", "linear", "multi"):
        raise ConfigError(f"unknown MMD kernel '{kernel}'; choose gaussian, linear or multi")
    if bandwidth is not None and not bandwidth > 0:
        raise ConfigError(
            f"mmd: bandwidth must be positive (or None for the median heuristic), got {bandwidth}"
        )
    if max_samples is not None and max_samples < 2:
        raise ConfigError(f"mmd: max_samples must be at least 2 (or None), got {max_samples}")
    s, t = _pair(source, target, 2 if unbiased else 1, "mmd")
    if kernel == "linear":
        return _linear_mmd(s, t, unbiased)
    rng = np.random.default_rng(seed)
    s_t = torch.from_numpy(_subsample(s, max_samples, rng))
    t_t = torch.from_numpy(_subsample(t, max_samples, rng))
    sigma = bandwidth if bandwidth is not None else median_bandwidth(torch.cat([s_t, t_t]), seed=seed)
    factors = MULTI_FACTORS if kernel == "multi" else (1.0,)
    estimator = "unbiased" if unbiased else "biased"
    values = [
        float(kernels.mmd(s_t, t_t, kernels.GaussianKernels(sigma=sigma * f), estimator)) for f in factors
    ]
    return float(np.mean(values))


def per_class_distance(
    source: Any,
    source_labels: Any,
    target: Any,
    target_labels: Any,
    distance: Callable[..., float] | str = mmd,
    **kw: Any,
) -> dict[int, float]:
    """``{class: distance(source rows of the class, target rows of the class, **kw)}`` for every class present
    in both domains with enough samples in each (2 for the unbiased MMD, 1 for the biased one, ``folds``
    for the proxy A-distance); the classes left out are logged with the reason.

    ``distance`` is :func:`mmd`, :func:`proxy_a_distance` (or their names, ``"pad"`` for the latter), or any
    function ``(source, target, **kw) -> float``.
    """
    if isinstance(distance, str):
        named = {"mmd": mmd, "proxy_a_distance": proxy_a_distance, "pad": proxy_a_distance}
        if distance not in named:
            raise ConfigError(f"unknown distance '{distance}'; choose mmd or proxy_a_distance (pad)")
        distance = named[distance]
    if distance is proxy_a_distance:
        needed = kw.get("folds", 5)
    elif distance is mmd:
        needed = 2 if kw.get("unbiased", True) else 1
    else:
        needed = 1
    s, t = _pair(source, target, 1, "per_class_distance")
    ys = _labels(source_labels, len(s), "source_labels")
    yt = _labels(target_labels, len(t), "target_labels")
    out: dict[int, float] = {}
    skipped: list[str] = []
    for c in sorted(set(ys.tolist()) | set(yt.tolist())):
        ns, nt = int((ys == c).sum()), int((yt == c).sum())
        if ns == 0 or nt == 0:
            skipped.append(f"{c} (only in the {'target' if ns == 0 else 'source'})")
        elif min(ns, nt) < needed:
            skipped.append(f"{c} ({ns} source / {nt} target samples, needs {needed} each)")
        else:
            out[int(c)] = float(distance(s[ys == c], t[yt == c], **kw))
    if skipped:
        log.warning("per_class_distance: skipped class(es) %s", ", ".join(skipped))
    return out


def _labels(labels: Any, n: int, what: str) -> np.ndarray:
    array = as_array(labels, what)
    if array.ndim != 1 or len(array) != n:
        raise DataError(f"{what} must hold one label per sample ({n}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        raise DataError(f"{what} must be integers (class indices), got dtype {array.dtype}")
    return array
