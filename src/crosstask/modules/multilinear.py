"""The conditioning maps of CDAN (Long et al. 2018, "Conditional Adversarial Domain Adaptation", NeurIPS).

The discriminator of CDAN sees the features ``f`` conditioned on the classifier's prediction ``g``
(softmax probabilities) through the multilinear map ``T⊗(f, g) = f ⊗ g`` (the flattened outer product,
``dim(f) × C`` values). When ``dim(f) · C`` is large the paper uses the randomized
multilinear map

    T⊙(f, g) = (R_f f) ⊙ (R_g g) / √d

with random matrices ``R_f``, ``R_g`` (entries of unit variance, drawn once and fixed) and output dimension
``d``; its inner products are unbiased estimates of the multilinear map's:
``E <T⊙(f, g), T⊙(f', g')> = <f, f'> <g, g'> = <T⊗(f, g), T⊗(f', g')>``. The paper switches to it above
4096 dimensions, with ``d = 1024``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def multilinear_map(features: Tensor, predictions: Tensor) -> Tensor:
    """``f ⊗ g`` for every row, flattened: ``(N, C · dim(f))``, the block of class ``c`` being ``g_c · f``."""
    return (predictions.unsqueeze(2) * features.unsqueeze(1)).flatten(1)


class MultilinearMap(nn.Module):
    """:func:`multilinear_map` as a module (output width ``features · classes``)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.out_features = features * classes

    def forward(self, features: Tensor, predictions: Tensor) -> Tensor:
        return multilinear_map(features, predictions)


class RandomizedMultilinearMap(nn.Module):
    """``(R_f f) ⊙ (R_g g) / √d``, Gaussian ``R_f`` and ``R_g`` drawn once (buffers: saved in checkpoints)."""

    def __init__(self, features: int, classes: int, out_features: int = 1024):
        super().__init__()
        self.out_features = out_features
        self.register_buffer("feature_projection", torch.randn(features, out_features))
        self.register_buffer("prediction_projection", torch.randn(classes, out_features))

    def forward(self, features: Tensor, predictions: Tensor) -> Tensor:
        projected_features = features @ self.feature_projection.to(features.dtype)
        projected_predictions = predictions @ self.prediction_projection.to(predictions.dtype)
        return projected_features * projected_predictions / math.sqrt(self.out_features)
