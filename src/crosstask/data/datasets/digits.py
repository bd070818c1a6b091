"""scikit-learn's embedded 8x8 handwritten digits, with optional shifts that make a second domain.

The 1797 images ship inside scikit-learn (no download). Labels: ``digit`` (10 classes), ``parity`` (odd = 1)
and ``ge5`` (digit >= 5), so one dataset serves single-task and multi-task experiments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig
from crosstask.registry import DATASETS


class DigitsConfig(DatasetConfig):
    rotate: float = Field(default=0.0, ge=-180, le=180, description="rotate every image by this many degrees")
    invert: bool = Field(default=False, description="swap ink and background")
    noise: float = Field(
        default=0.0, ge=0.0, description="std of added Gaussian pixel noise (pixels in [0, 1])"
    )
    blur: float = Field(default=0.0, ge=0.0, description="sigma of a Gaussian blur, in pixels")
    shift_seed: int = Field(default=0, description="seed of the noise")


@DATASETS.register("digits", config=DigitsConfig)
def build_digits(config: DigitsConfig, root: Path) -> dict[str, ArrayDataset]:
    """scikit-learn's embedded 8x8 digits (1797), labels digit/parity/ge5, optional rotate/invert/noise/blur."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (n, 8, 8) in [0, 1]
    if config.rotate:
        images = ndimage.rotate(images, config.rotate, axes=(1, 2), reshape=False, order=1, mode="constant")
    if config.blur:
        images = ndimage.gaussian_filter(images, sigma=(0, config.blur, config.blur))
    if config.invert:
        images = 1.0 - images
    if config.noise:
        rng = np.random.default_rng(config.shift_seed)
        images = images + rng.normal(0.0, config.noise, images.shape).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)  # (n, 1, 8, 8)
    digit = torch.from_numpy(bunch.target.astype(np.int64))
    labels = {"digit": digit, "parity": digit % 2, "ge5": (digit >= 5).long()}
    return {
        "all": ArrayDataset(
            x, labels, classes={"digit": list(range(10)), "parity": ["even", "odd"], "ge5": ["<5", ">=5"]}
        )
    }
