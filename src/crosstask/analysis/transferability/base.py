"""The transferability contract, the data a score reads, and :func:`transferability`.

A transferability score rates a pretrained model for a labeled target task *before* fine-tuning, from one
forward pass over the target samples: its features ``f(x_i)`` (LogME, H-score) or its softmax over its own
source classes ``θ(x_i)`` (LEEP, NCE). Higher means the model should transfer better. Scores are only
comparable between models on the same target data (and, for the feature scores, with features of a
similar kind).

Input checks live here, once for every score: :class:`TransferData` validates and converts its arrays
(float64 numpy; labels renumbered ``0..C-1`` in sorted order), and :func:`transferability` checks that each
requested score has what it needs. Bad data raise :class:`~crosstask.errors.DataError` and bad names or
parameters :class:`~crosstask.errors.ConfigError`, each with one message that says what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from crosstask.components import validate_python
from crosstask.errors import ConfigError, DataError
from crosstask.registry import TRANSFERABILITY, ComponentConfig
from crosstask.shallow.base import as_matrix

NEEDS = ("features", "source_probabilities")
PROBABILITY_ATOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; logits are far off


def as_array(x: Any, what: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a numpy array, on the CPU, without gradient."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be an array or tensor ({exc})") from None


def as_features(x: Any, what: str, min_samples: int = 1) -> np.ndarray:
    """``x`` as a finite float64 matrix ``(n, d)``; inputs with more than two axes (images, feature maps) are
    flattened to one row per sample. Anything else raises one :class:`DataError` saying why."""
    array = as_array(x, what)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{what} must be numeric, got dtype {array.dtype}")
    if array.ndim < 2:
        raise DataError(
            f"{what} must have shape (n_samples, n_features), got shape {array.shape}"
            + ("; reshape one feature per sample with x.reshape(-1, 1)" if array.ndim == 1 else "")
        )
    # images or feature maps: one row per sample; then the checks every feature matrix gets
    return as_matrix(array.reshape(array.shape[0], int(np.prod(array.shape[1:]))), what, None, min_samples)


@dataclass
class TransferData:
    """A pretrained model's outputs on the labeled target samples.

    Args:
        features: ``(n, d)`` features of the target samples (more axes are flattened), or None.
        labels: ``(n,)`` integer target labels, at least two distinct classes. They are renumbered to
            ``0..C-1`` (sorted order); the original values are kept in ``classes``.
        source_probabilities: ``(n, C_s)`` the model's softmax over its own (source) classes on the target
            samples (rows sum to 1), or None.

    Construction checks and converts everything (float64 and int64 numpy arrays); a bad input raises one
    :class:`~crosstask.errors.DataError`.
    """

    features: Any = None
    labels: Any = None
    source_probabilities: Any = None

    def __post_init__(self) -> None:
        self.labels, self.classes = _check_labels(self.labels)
        n = len(self.labels)
        if self.features is not None:
            self.features = as_features(self.features, "features")
            if len(self.features) != n:
                raise DataError(
                    f"features have {len(self.features)} rows but labels have {n}; give one label per sample"
                )
        if self.source_probabilities is not None:
            self.source_probabilities = _check_probabilities(self.source_probabilities, n)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def one_hot(self) -> np.ndarray:
        """``(n, C)`` float64 indicator matrix of the (renumbered) labels."""
        return np.eye(self.num_classes)[self.labels]


def _check_labels(labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        raise DataError("labels are required: one integer target label per sample")
    array = as_array(labels, "labels")
    if array.ndim == 2 and 1 in array.shape:
        array = array.ravel()
    if array.ndim != 1:
        raise DataError(f"labels must have shape (n_samples,), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        raise DataError(
            f"labels must be integers (class indices), got dtype {array.dtype}; pass class indices, not "
            "one-hot rows or probabilities (cast with .astype(int) or .long() if they are whole numbers)"
        )
    classes, inverse = np.unique(array, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"labels hold a single class ({classes.tolist()}) over {len(array)} samples; a transferability "
            "score compares classes, so it needs at least two"
        )
    return inverse.astype(np.int64).reshape(-1), classes


def _check_probabilities(probabilities: Any, n: int) -> np.ndarray:
    what = "source_probabilities"
    array = as_array(probabilities, what)
    if array.ndim != 2:
        raise DataError(f"{what} must have shape (n_samples, n_source_classes), got shape {array.shape}")
    if len(array) != n:
        raise DataError(f"{what} have {len(array)} rows but labels have {n}; give one row per sample")
    array = as_features(array, what)
    if (array < 0).any():
        raise DataError(
            f"{what} has negative entries (min {array.min():.3g}); pass the softmax of the source model's "
            "logits, not the logits"
        )
    sums = array.sum(axis=1)
    off = np.abs(sums - 1.0) > PROBABILITY_ATOL
    if off.any():
        row = int(np.argmax(off))
        raise DataError(
            f"{what}: {int(off.sum())} row(s) do not sum to 1 (row {row} sums to {sums[row]:.6g}); pass "
            "the softmax of the source model's logits over its classes"
        )
    return array


class TransferabilityScore:
    """Base class: :meth:`score` maps a :class:`TransferData` to one float, higher meaning better transfer.

    ``needs`` names the input the score reads: ``"features"`` or ``"source_probabilities"``.
    """

    needs: ClassVar[str] = "features"

    def __init__(self, config: ComponentConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def score(self, data: TransferData) -> float:
        raise NotImplementedError


def build(name: str, params: dict[str, Any]) -> TransferabilityScore:
    """The registered score ``name`` with ``params`` (validated by its config model; errors: ConfigError)."""
    entry = TRANSFERABILITY.get(name)
    config = validate_python(entry.config, {"name": name, **params}, name)
    return entry.obj(config)


def transferability(
    name_or_names: str | Sequence[str],
    features: Any = None,
    labels: Any = None,
    source_probabilities: Any = None,
    **params: Any,
) -> dict[str, float]:
    """Compute one or several transferability scores: ``{name: score}``, higher meaning better transfer.

    Args:
        name_or_names: a registered score (``crosstask list`` or ``TRANSFERABILITY.names()``) or a list.
        features: ``(n, d)`` the pretrained model's features of the target samples (LogME, H-score).
        labels: ``(n,)`` integer target labels (required).
        source_probabilities: ``(n, C_s)`` the model's softmax over its source classes on the target samples
            (LEEP, NCE).
        params: the scores' parameters (e.g. ``shrinkage=`` of ``h_score``). With one name, every key goes to
            that score (an unknown key is an error); with several, each score gets the keys its config
            declares, and a key that no requested score declares is an error.

    Raises:
        ConfigError: an unknown score, an unknown or invalid parameter.
        DataError: a bad input (shape, sample count, non-integer or single-class labels, NaN/inf,
            probabilities that are not a softmax), or a score's input not given.
    """
    names = [name_or_names] if isinstance(name_or_names, str) else list(dict.fromkeys(name_or_names))
    if not names:
        raise ConfigError(f"no transferability score named; choices: {', '.join(TRANSFERABILITY.names())}")
    entries = {name: TRANSFERABILITY.get(name) for name in names}
    if len(names) == 1:
        split = {names[0]: dict(params)}
    else:
        split = {
            name: {k: v for k, v in params.items() if k in entry.config.model_fields}
            for name, entry in entries.items()
        }
        unused = sorted(set(params) - {k for kept in split.values() for k in kept})
        if unused:
            raise ConfigError(
                f"parameter(s) {', '.join(unused)} belong to none of the requested scores ({', '.join(names)})"
            )
    scores = [build(name, split[name]) for name in names]
    given = {"features": features is not None, "source_probabilities": source_probabilities is not None}
    for score in scores:
        if score.needs not in NEEDS:
            raise TypeError(f"{type(score).__name__}.needs must be one of {NEEDS}, got {score.needs!r}")
        if not given[score.needs]:
            hint = (
                "the pretrained model's features of the target samples"
                if score.needs == "features"
                else "the source model's softmax over its own classes on the target samples"
            )
            raise DataError(f"transferability score '{score.name}' needs {score.needs}= ({hint})")
    data = TransferData(features, labels, source_probabilities)
    return {score.name: float(score.score(data)) for score in scores}
