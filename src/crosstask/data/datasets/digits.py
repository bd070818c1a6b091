"""scikit-learn's embedded 8x8 handwritten digits, with optional shifts that make a second domain.

The 1797 images ship inside scikit-learn (no download). Labels: ``digit`` (10 classes), ``parity`` (odd = 1)
and ``ge5`` (digit >= 5), so one dataset serves single-task and multi-task experiments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig
from crosstask.data.datasets.images import ImageShiftOptions, shift_images
from crosstask.registry import DATASETS


class DigitsConfig(DatasetConfig, ImageShiftOptions):
    """Digits with optional shifts (rotate, blur, invert, noise) that make a second domain."""


@DATASETS.register("digits", config=DigitsConfig)
def build_digits(config: DigitsConfig, root: Path) -> dict[str, ArrayDataset]:
    """scikit-learn's embedded 8x8 digits (1797), labels digit/parity/ge5, optional rotate/blur/invert/noise."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (n, 8, 8) in [0, 1]
    x = shift_images(torch.from_numpy(images).unsqueeze(1), config)  # (n, 1, 8, 8)
    digit = torch.from_numpy(bunch.target.astype(np.int64))
    labels = {"digit": digit, "parity": digit % 2, "ge5": (digit >= 5).long()}
    return {
        "all": ArrayDataset(
            x, labels, classes={"digit": list(range(10)), "parity": ["even", "odd"], "ge5": ["<5", ">=5"]}
        )
    }
