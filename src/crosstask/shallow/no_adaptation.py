"""No adaptation: the final estimator trained on the source samples as they are (the baseline row)."""

from __future__ import annotations

import numpy as np

from crosstask.registry import SHALLOW, ComponentConfig
from crosstask.shallow.base import ShallowAdapter


@SHALLOW.register("no_adaptation", config=ComponentConfig)
class NoAdaptation(ShallowAdapter):
    """No adaptation: the final estimator (default 1-NN) trained on the raw source features."""

    registry_name = "no_adaptation"

    def __init__(self, estimator=None):
        self.estimator = estimator

    def _adapt(self, Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray) -> np.ndarray:
        return Xs

    def _map(self, X: np.ndarray, domain: str) -> np.ndarray:
        return X
