"""What every shallow adapter shares: the ``fit(Xs, ys, Xt)`` / ``transform`` / ``predict`` contract.

An adapter learns, from labeled source samples ``Xs, ys`` and unlabeled target samples ``Xt``, either a
feature map per domain (CORAL, TCA, SA, JDA) or weights for the source samples (KMM, KLIEP). It then fits
a final estimator (default 1-nearest-neighbour, or any scikit-learn classifier given as ``estimator``) on
the adapted source data, passing ``sample_weight`` where the estimator accepts it. ``predict(X)`` maps
target samples with ``transform(X, domain="target")`` and asks the final estimator.

Adapters are scikit-learn estimators: ``__init__`` only stores its arguments, so ``get_params``,
``set_params`` and ``clone`` work. Every hyperparameter is checked when ``fit`` runs, by the adapter's
pydantic config model (the one registered in ``crosstask.registry.SHALLOW``), so a bad value set with
``set_params`` is caught as well; bad data raise :class:`~crosstask.errors.DataError`.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, has_fit_parameter

from crosstask.errors import ConfigError, DataError
from crosstask.registry import ComponentConfig

DOMAINS = ("source", "target")


class SampleWeightIgnored(UserWarning):
    """A reweighting adapter's final estimator cannot take ``sample_weight``, so the weights change nothing."""


def as_matrix(X: Any, what: str, where: str | None = None, min_samples: int = 1) -> np.ndarray:
    """``X`` as a finite float64 matrix of shape (n, d); anything else raises a DataError saying why (prefixed
    with ``where``, the call it happened in)."""
    what = f"{where}: {what}" if where else what
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numeric array of shape (n_samples, n_features) ({exc})") from None
    if array.ndim != 2:
        raise DataError(
            f"{what} must be 2-D (n_samples, n_features), got shape {array.shape}"
            + ("; reshape a single sample with X.reshape(1, -1)" if array.ndim == 1 else "")
        )
    if array.shape[1] == 0:
        raise DataError(f"{what} has no features (shape {array.shape})")
    if len(array) < min_samples:
        raise DataError(f"{what} has {len(array)} sample(s); at least {min_samples} are needed")
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{what} contains {int(bad.sum())} NaN/inf value(s) (first at row {row}, column {col}); "
            "impute or drop them first"
        )
    return array


def check_domains(Xs: Any, ys: Any, Xt: Any, where: str, min_samples: int) -> tuple[np.ndarray, ...]:
    """Validate a source/target pair: finite matrices, one feature space, one label per source sample."""
    Xs = as_matrix(Xs, "Xs (source samples)", where, min_samples)
    Xt = as_matrix(Xt, "Xt (target samples)", where, min_samples)
    if Xs.shape[1] != Xt.shape[1]:
        raise DataError(
            f"{where}: Xs has {Xs.shape[1]} features but Xt has {Xt.shape[1]}; source and target must live "
            "in one feature space (same extractor and preprocessing)"
        )
    ys = np.asarray(ys)
    if ys.ndim != 1:
        ys = ys.ravel() if ys.ndim == 2 and 1 in ys.shape else ys
    if ys.ndim != 1 or len(ys) != len(Xs):
        raise DataError(
            f"{where}: ys must hold one label per source sample ({len(Xs)}), got shape {np.shape(ys)}"
        )
    if ys.dtype.kind == "f" and not np.isfinite(ys).all():
        raise DataError(f"{where}: ys contains NaN/inf labels; drop those source samples")
    if len(np.unique(ys)) < 2:
        raise DataError(f"{where}: ys has a single class ({ys[0]!r}); a classifier needs at least two")
    return Xs, ys, Xt


def one_nearest_neighbour() -> KNeighborsClassifier:
    """The default final estimator: 1-NN, the classifier of the TCA/JDA/SA benchmark protocols."""
    return KNeighborsClassifier(n_neighbors=1)


class ShallowAdapter(ClassifierMixin, BaseEstimator):
    """Base class: subclasses implement ``_adapt`` (learn the map, return adapted source) and ``_map``.

    Class attributes: ``registry_name`` (the SHALLOW name, used in messages), ``config_model`` (validates
    the hyperparameters in ``fit``), ``min_samples`` (per domain).
    """

    registry_name: ClassVar[str] = "adapter"
    config_model: ClassVar[type[ComponentConfig]] = ComponentConfig
    min_samples: ClassVar[int] = 2

    estimator: Any

    # ------------------------------------------------------------------ what subclasses implement

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        """Learn the adaptation; return the source samples as the final estimator should see them."""
        raise NotImplementedError

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        """Map already-validated samples of ``domain`` into the shared space."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the public contract

    def fit(self, Xs: Any, ys: Any, Xt: Any) -> ShallowAdapter:
        """Adapt from labeled source ``(Xs, ys)`` to unlabeled target ``Xt``, then fit the final estimator."""
        self._check_params()
        Xs, ys, Xt = check_domains(Xs, ys, Xt, f"{self.registry_name}.fit", self.min_samples)
        self.n_features_in_ = Xs.shape[1]
        self.classes_ = np.unique(ys)
        self.sample_weight_: np.ndarray | None = None
        source = self._adapt(Xs, ys, Xt)
        self.estimator_ = self._fit_estimator(source, ys, self.sample_weight_)
        return self

    def transform(self, X: Any, domain: str = "target") -> np.ndarray:
        """Map samples of ``domain`` ("target" or "source") into the space the final estimator works in."""
        check_is_fitted(self, "estimator_")
        if domain not in DOMAINS:
            raise ConfigError(
                f"{self.registry_name}.transform: domain must be 'source' or 'target', got {domain!r}"
            )
        X = as_matrix(X, "X", f"{self.registry_name}.transform")
        if X.shape[1] != self.n_features_in_:
            raise DataError(
                f"{self.registry_name}.transform: X has {X.shape[1]} features but the adapter was fitted "
                f"on {self.n_features_in_}"
            )
        return self._map(X, domain)

    def predict(self, X: Any, domain: str = "target") -> np.ndarray:
        """Labels of samples of ``domain`` (default target) from the final estimator."""
        return self.estimator_.predict(self.transform(X, domain))

    def predict_proba(self, X: Any, domain: str = "target") -> np.ndarray:
        """Class probabilities, when the final estimator has ``predict_proba``."""
        check_is_fitted(self, "estimator_")
        if not hasattr(self.estimator_, "predict_proba"):
            raise ConfigError(
                f"{self.registry_name}: the final estimator {type(self.estimator_).__name__} has no predict_proba"
            )
        return self.estimator_.predict_proba(self.transform(X, domain))

    def score(self, X: Any, y: Any, sample_weight: Any = None, domain: str = "target") -> float:
        """Accuracy of ``predict(X, domain)`` against ``y``."""
        predicted = self.predict(X, domain)
        return float(np.average(predicted == np.asarray(y).ravel(), weights=sample_weight))

    # ------------------------------------------------------------------ helpers

    def _check_params(self) -> ComponentConfig:
        """Validate the hyperparameters (not ``estimator``) with the registered config model."""
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "estimator"}
        try:
            config = self.config_model.model_validate({"name": self.registry_name, **params})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}={e.get('input')!r}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigError(f"{self.registry_name}: invalid parameter(s): {problems}") from None
        if self.estimator is not None and not (
            hasattr(self.estimator, "fit") and hasattr(self.estimator, "predict")
        ):
            raise ConfigError(
                f"{self.registry_name}: estimator must be a scikit-learn classifier with fit/predict "
                f"(or None for 1-NN), got {type(self.estimator).__name__}"
            )
        return config

    def _new_estimator(self) -> Any:
        return one_nearest_neighbour() if self.estimator is None else clone(self.estimator)

    def _fit_estimator(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> Any:
        """Fit a fresh final estimator, passing ``sample_weight`` where it (or a Pipeline's last step) can."""
        estimator = self._new_estimator()
        if sample_weight is None:
            return estimator.fit(X, y)
        key = weight_parameter(estimator)
        if key is None:
            warnings.warn(
                f"{self.registry_name}: the final estimator {type(estimator).__name__} takes no sample_weight, "
                "so the learned source weights (sample_weight_) do not change its predictions; use an estimator "
                "that accepts them (e.g. LogisticRegression)",
                SampleWeightIgnored,
                stacklevel=3,
            )
            return estimator.fit(X, y)
        return estimator.fit(X, y, **{key: sample_weight})


def weight_parameter(estimator: Any) -> str | None:
    """The fit keyword that carries sample weights to ``estimator`` (a Pipeline: to its last step), or None."""
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        return (
            f"{name}__sample_weight"
            if last is not None and has_fit_parameter(last, "sample_weight")
            else None
        )
    return "sample_weight" if has_fit_parameter(estimator, "sample_weight") else None
