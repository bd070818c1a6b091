"""MultiMNIST (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS), built
from the local MNIST files with their protocol.

Every MNIST image (the left digit) is paired with one other image of the same split drawn at random (the
right digit). On a 36x36 canvas the left digit takes rows/columns 0-27 and the right one 6-33; where they
overlap the brighter pixel wins; the canvas is resized back to 28x28 (nearest neighbour). Tasks: ``left``
and ``right`` (10 classes each). 60000 training and 10000 test images; the pairing is deterministic by
``pair_seed`` (their script draws it unseeded). Normalized with MNIST's mean and std (0.1307, 0.3081), as
in their loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files
from crosstask.data.datasets.mnist import FILES, read_idx
from crosstask.registry import DATASETS


class MultiMNISTConfig(DatasetConfig):
    path: Path | None = Field(
        default=None, description="folder with the MNIST IDX files (default <data root>/mnist)"
    )
    pair_seed: int = Field(default=0, description="seed of the left/right pairing")
    mean: float = Field(default=0.1307, description="normalize: (x - mean) / std on pixels in [0, 1]")
    std: float = Field(default=0.3081, gt=0)


def overlay(left: np.ndarray, right: np.ndarray) -> torch.Tensor:
    """Sener & Koltun's composition of two (n, 28, 28) uint8 digit batches into (n, 1, 28, 28) in [0, 1]."""
    n = len(left)
    canvas = np.zeros((n, 36, 36), np.uint8)
    canvas[:, 0:28, 0:28] = left
    canvas[:, 6:34, 6:34] = np.maximum(canvas[:, 6:34, 6:34], right)  # the overlap keeps the brighter pixel
    images = torch.from_numpy(canvas).float().unsqueeze(1) / 255.0
    return F.interpolate(images, size=(28, 28), mode="nearest")


@DATASETS.register("multimnist", config=MultiMNISTConfig)
def build_multimnist(config: MultiMNISTConfig, root: Path) -> dict[str, ArrayDataset]:
    """MultiMNIST (Sener & Koltun 2018) from local MNIST files: two overlaid digits, tasks left and right."""
    splits = {}
    for index, (split, names) in enumerate(FILES.items()):
        image_path, label_path = find_files(root, "mnist", list(names), "multimnist", config.path)
        images, labels = read_idx(image_path), read_idx(label_path).astype(np.int64)
        partner = np.random.default_rng([config.pair_seed, index]).integers(0, len(images), len(images))
        x = (overlay(images, images[partner]) - config.mean) / config.std
        targets = {"left": torch.from_numpy(labels), "right": torch.from_numpy(labels[partner])}
        splits[split] = ArrayDataset(x.contiguous(), targets)
    return splits
