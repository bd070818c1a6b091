"""MNIST-1D (Greydanus 2020, arXiv:2011.14439): 4000 train / 1000 test length-40 signals, 10 classes.

Read from ``<data root>/mnist1d/mnist1d_default_seed42.npz`` (keys x, y, x_test, y_test), the dataset the
``mnist1d`` package generates with its default arguments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files
from crosstask.errors import DataError
from crosstask.registry import DATASETS

FILE = "mnist1d_default_seed42.npz"


class MNIST1DConfig(DatasetConfig):
    path: Path | None = Field(
        default=None, description=f"folder holding {FILE} (default <data root>/mnist1d)"
    )
    channels: bool = Field(
        default=False, description="shape (n, 1, 40) for 1-D convolutions instead of (n, 40)"
    )


@DATASETS.register("mnist1d", config=MNIST1DConfig)
def build_mnist1d(config: MNIST1DConfig, root: Path) -> dict[str, ArrayDataset]:
    """MNIST-1D 4000 train / 1000 test length-40 signals from a local .npz file."""
    (path,) = find_files(root, "mnist1d", [FILE], "mnist1d", config.path)
    try:
        arrays = np.load(path)
        parts = {"train": (arrays["x"], arrays["y"]), "test": (arrays["x_test"], arrays["y_test"])}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read x, y, x_test, y_test ({exc}); replace it with an intact copy"
        ) from None
    splits = {}
    for split, (x, y) in parts.items():
        signals = torch.from_numpy(np.asarray(x, dtype=np.float32))
        splits[split] = ArrayDataset(
            signals.unsqueeze(1) if config.channels else signals,
            torch.from_numpy(np.asarray(y, dtype=np.int64)),
        )
    return splits
