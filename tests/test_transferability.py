"""Transferability scores (LogME, LEEP, NCE, H-score): their math against brute-force and hand computations,
their properties, and the input checks of ``transferability``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crosstask.analysis.transferability import TransferData, transferability
from crosstask.analysis.transferability.logme import Spectrum, log_evidence
from crosstask.errors import ConfigError, DataError
from crosstask.registry import TRANSFERABILITY


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def separated(n: int = 300, classes: int = 3, d: int = 8, noise: float = 0.3, seed: int = 0):
    """Features whose first ``classes`` coordinates are the one-hot label plus noise, the rest noise."""
    r = rng(seed)
    labels = r.integers(0, classes, n)
    features = r.normal(size=(n, d))
    features[:, :classes] = np.eye(classes)[labels] + noise * r.normal(size=(n, classes))
    return features, labels


def tiny() -> dict:
    r = rng(1)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    return {
        "features": r.normal(size=(10, 4)),
        "labels": labels,
        "source_probabilities": r.dirichlet(np.ones(5), size=10),
    }


# ---------------------------------------------------------------- registry and inputs


def test_the_papers_scores_are_registered() -> None:
    assert {"logme", "leep", "nce", "h_score"} <= set(TRANSFERABILITY.names())


@pytest.mark.parametrize("name", TRANSFERABILITY.names())
def test_every_score_runs_on_a_tiny_input(name: str) -> None:
    value = transferability(name, **tiny())[name]
    assert isinstance(value, float) and math.isfinite(value)
    assert TRANSFERABILITY.get(name).obj.needs in ("features", "source_probabilities")


def test_several_scores_at_once_and_their_parameters() -> None:
    data = tiny()
    both = transferability(["logme", "h_score", "leep"], **data, shrinkage=0.5)
    assert set(both) == {"logme", "h_score", "leep"}
    assert both["h_score"] == transferability("h_score", **data, shrinkage=0.5)["h_score"]
    assert both["logme"] == transferability("logme", **data)["logme"]
    with pytest.raises(ConfigError, match="belong to none of the requested scores"):
        transferability(["logme", "leep"], **data, shrinkage=0.5)


def test_tensors_and_arrays_give_the_same_scores() -> None:
    data = tiny()
    tensors = {k: torch.as_tensor(v) for k, v in data.items()}
    tensors["features"] = tensors["features"].float().requires_grad_()
    names = TRANSFERABILITY.names()
    from_arrays = transferability(names, **data)
    from_tensors = transferability(names, **tensors)
    assert from_tensors == pytest.approx(from_arrays, rel=1e-5)


def test_label_values_do_not_matter_only_the_partition() -> None:
    data = tiny()
    relabeled = dict(data, labels=np.array([7, -3, 12])[data["labels"]])
    names = TRANSFERABILITY.names()
    # classes are renumbered in sorted order; every score is invariant to a renumbering of the classes
    assert transferability(names, **relabeled) == pytest.approx(transferability(names, **data))
    assert TransferData(labels=relabeled["labels"]).classes.tolist() == [-3, 7, 12]


def _bad(**changes):
    data = tiny()
    data.update(changes)
    return data


BAD_INPUTS = {
    "features 1-D": ("logme", _bad(features=np.ones(10)), DataError, r"shape \(n_samples, n_features\)"),
    "features rows": ("logme", _bad(features=np.ones((9, 4))), DataError, "9 rows but labels have 10"),
    "labels float": ("logme", _bad(labels=np.linspace(0, 1, 10)), DataError, "must be integers"),
    "labels one-hot": ("logme", _bad(labels=np.eye(3, dtype=int)[tiny()["labels"]]), DataError, "shape"),
    "labels missing": ("logme", _bad(labels=None), DataError, "labels are required"),
    "one class": ("h_score", _bad(labels=np.zeros(10, dtype=int)), DataError, "single class"),
    "features NaN": (
        "h_score",
        _bad(features=np.where(np.eye(10, 4) > 0, np.nan, 1.0)),
        DataError,
        "NaN/inf",
    ),
    "features inf": ("logme", _bad(features=np.full((10, 4), np.inf)), DataError, "NaN/inf"),
    "no probabilities": ("leep", _bad(source_probabilities=None), DataError, "needs source_probabilities"),
    "no features": ("logme", _bad(features=None), DataError, "needs features"),
    "probability rows": (
        "nce",
        _bad(source_probabilities=np.full((8, 5), 0.2)),
        DataError,
        "8 rows but labels have 10",
    ),
    "not normalized": (
        "leep",
        _bad(source_probabilities=2 * tiny()["source_probabilities"]),
        DataError,
        "do not sum to 1",
    ),
    "logits": ("leep", _bad(source_probabilities=rng().normal(size=(10, 5))), DataError, "negative"),
    "unknown score": ("logmee", tiny(), ConfigError, "Did you mean 'logme'"),
    "unknown parameter": ("logme", dict(tiny(), max_iters=3), ConfigError, "unknown key 'max_iters'"),
    "bad parameter": ("h_score", dict(tiny(), shrinkage=1.5), ConfigError, r"must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_give_one_clear_error(case: str) -> None:
    name, data, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        transferability(name, **data)


# ---------------------------------------------------------------- LogME


def brute_force_log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹ I + α⁻¹ F Fᵀ) / n: the marginal likelihood of the Bayesian linear model directly."""
    n = len(y)
    covariance = np.eye(n) / beta + features @ features.T / alpha
    sign, log_det = np.linalg.slogdet(covariance)
    assert sign > 0
    return -0.5 * (n * math.log(2 * math.pi) + log_det + y @ np.linalg.solve(covariance, y)) / n


@pytest.mark.parametrize("n,d", [(40, 5), (15, 30)])
def test_logme_evidence_equals_the_marginal_likelihood_and_is_maximized(n: int, d: int) -> None:
    r = rng(n)
    features = r.normal(size=(n, d))
    y = features @ r.normal(size=d) / math.sqrt(d) + 0.5 * r.normal(size=n)  # any target, not only 0/1
    fitted = log_evidence(Spectrum(features), y, max_iter=2000, tol=1e-12)
    best = brute_force_log_evidence(features, y, fitted.alpha, fitted.beta)
    assert fitted.log_evidence == pytest.approx(best, rel=1e-9, abs=1e-12)
    # the fixed point is a maximum of the evidence over alpha and beta
    for da, db in [(1.2, 1.0), (0.8, 1.0), (1.0, 1.2), (1.0, 0.8)]:
        assert brute_force_log_evidence(features, y, fitted.alpha * da, fitted.beta * db) < best
    # and the score is the class average of the per-class evidence
    labels = (y > 0).astype(int)
    per_class = [
        log_evidence(Spectrum(features), (labels == k).astype(float), 100, 1e-6).log_evidence for k in (0, 1)
    ]
    assert transferability("logme", features, labels)["logme"] == pytest.approx(np.mean(per_class))


def test_logme_prefers_features_that_determine_the_labels() -> None:
    features, labels = separated()
    random = rng(5).normal(size=features.shape)
    good = transferability("logme", features, labels)["logme"]
    assert good > transferability("logme", random, labels)["logme"] + 0.3


def test_logme_is_invariant_to_permuting_the_samples() -> None:
    features, labels = separated(n=120)
    order = rng(3).permutation(len(labels))
    assert transferability("logme", features[order], labels[order])["logme"] == pytest.approx(
        transferability("logme", features, labels)["logme"], rel=1e-9
    )


def test_logme_is_finite_with_more_features_than_samples() -> None:
    r = rng(8)
    labels = np.arange(20) % 3
    prototypes = r.normal(size=(3, 200))
    features = prototypes[labels] + 0.5 * r.normal(size=(20, 200))  # every coordinate is informative
    value = transferability("logme", features, labels)["logme"]
    assert math.isfinite(value)
    # and still prefers informative features over noise of the same shape
    assert value > transferability("logme", rng(9).normal(size=(20, 200)), labels)["logme"]


# ---------------------------------------------------------------- LEEP


def test_leep_matches_its_formula_by_hand() -> None:
    theta = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 1, 0])
    # P(y, z) = [[1.3, 0.7], [0.3, 0.7]] / 3, P(z) = [1.6, 1.4] / 3,
    # P(y | z) = [[0.8125, 0.5], [0.1875, 0.5]]; expected predictions of the true labels:
    # 0.8·0.8125 + 0.2·0.5 = 0.75, 0.3·0.1875 + 0.7·0.5 = 0.40625, 0.5·0.8125 + 0.5·0.5 = 0.65625
    expected = (math.log(0.75) + math.log(0.40625) + math.log(0.65625)) / 3
    assert transferability("leep", labels=labels, source_probabilities=theta)["leep"] == pytest.approx(
        expected
    )


def test_leep_is_zero_for_one_hot_predictions_determined_by_the_label() -> None:
    labels = rng().integers(0, 4, 50)
    source_class = np.array([5, 2, 7, 0])[labels]  # one source class per target class, of 9
    theta = np.eye(9)[source_class]
    assert transferability("leep", labels=labels, source_probabilities=theta)["leep"] == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_leep_is_never_positive(seed: int) -> None:
    r = rng(seed)
    labels = r.integers(0, 3, 40)
    theta = r.dirichlet(np.full(6, 0.3), size=40)
    assert transferability("leep", labels=labels, source_probabilities=theta)["leep"] <= 1e-12


# ---------------------------------------------------------------- NCE


def test_nce_is_zero_when_the_label_is_a_function_of_the_source_prediction() -> None:
    r = rng()
    source_class = r.integers(0, 6, 100)
    theta = 0.1 * r.dirichlet(np.ones(6), size=100) + 0.9 * np.eye(6)[source_class]  # argmax = source_class
    labels = source_class % 3
    assert transferability("nce", labels=labels, source_probabilities=theta)["nce"] == pytest.approx(0.0)


def test_nce_is_minus_log_c_for_independent_uniform_labels() -> None:
    r = rng()
    n = 200_000
    theta = r.dirichlet(np.ones(10), size=n)
    labels = r.integers(0, 4, n)
    value = transferability("nce", labels=labels, source_probabilities=theta)["nce"]
    assert value == pytest.approx(-math.log(4), abs=5e-3)
    assert value <= 0


# ---------------------------------------------------------------- H-score


def test_h_score_is_invariant_to_rotating_the_features() -> None:
    features, labels = separated(n=200, d=6)
    rotation, _ = np.linalg.qr(rng(2).normal(size=(6, 6)))
    original = transferability("h_score", features, labels)["h_score"]
    assert transferability("h_score", features @ rotation, labels)["h_score"] == pytest.approx(
        original, rel=1e-8
    )


def test_h_score_is_larger_for_separated_classes_and_bounded_by_c_minus_1() -> None:
    features, labels = separated(n=300, d=6)
    mixed = rng(4).normal(size=features.shape)
    good = transferability("h_score", features, labels)["h_score"]
    bad = transferability("h_score", mixed, labels)["h_score"]
    assert good > bad + 1.0
    assert 0 <= bad < good <= 2 + 1e-9  # C - 1 = 2 classes' worth of between-class directions


def test_h_score_equals_its_formula_with_numpy_covariances() -> None:
    features, labels = separated(n=100, d=4)
    class_means = np.stack([features[labels == k].mean(0) for k in range(3)])[labels]
    expected = np.trace(np.linalg.pinv(np.cov(features.T, bias=True)) @ np.cov(class_means.T, bias=True))
    assert transferability("h_score", features, labels)["h_score"] == pytest.approx(expected)


def test_h_score_shrinkage_interpolates_towards_zero() -> None:
    features, labels = separated(n=100, d=4)
    values = [
        transferability("h_score", features, labels, shrinkage=a)["h_score"] for a in (0.0, 0.3, 0.7, 1.0)
    ]
    assert values[-1] == 0.0 and values == sorted(values, reverse=True)
    auto = transferability("h_score", features, labels, shrinkage="auto")["h_score"]
    assert 0 < auto <= values[0]


def test_logme_stays_finite_when_a_feature_is_a_class_indicator() -> None:
    """β → ∞ (a perfect fit) and rank-deficient features (α → 0) are bounded, not an overflow."""
    labels = np.random.default_rng(0).integers(0, 2, 50)
    perfect = np.c_[labels, labels].astype(float)
    noisy = np.random.default_rng(1).normal(size=(50, 2))
    scores = [transferability("logme", features=f, labels=labels)["logme"] for f in (perfect, noisy)]
    assert all(np.isfinite(scores)) and scores[0] > scores[1]
