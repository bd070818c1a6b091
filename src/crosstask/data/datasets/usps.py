"""USPS handwritten digits (Hull 1994), the ESL version: 7291 train / 2007 test 16x16 images.

Read from ``<data root>/usps/usps_esl_7291_2007.mat`` (MATLAB v5): ``traindata``/``testdata`` hold one
column-major 16x16 image per column in [0, 1]; labels are 1..10 with 10 meaning digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files, read_mat
from crosstask.data.datasets.images import ImageArrayOptions, prepare_images
from crosstask.errors import DataError
from crosstask.registry import DATASETS

FILE = "usps_esl_7291_2007.mat"


class USPSConfig(DatasetConfig, ImageArrayOptions):
    path: Path | None = Field(default=None, description=f"folder holding {FILE} (default <data root>/usps)")


@DATASETS.register("usps", config=USPSConfig)
def build_usps(config: USPSConfig, root: Path) -> dict[str, ArrayDataset]:
    """USPS (ESL) 7291 train / 2007 test from a local .mat file; upsampled to 28x28 by default, optionally
    shifted (rotate, blur, invert, noise)."""
    (path,) = find_files(root, "usps", [FILE], "usps", config.path)
    mat = read_mat(path)
    splits = {}
    for stream, split in enumerate(("train", "test")):
        if f"{split}data" not in mat or f"{split}label" not in mat:
            raise DataError(f"{path}: missing '{split}data'/'{split}label'; is this the ESL USPS file?")
        columns = mat[f"{split}data"].astype(np.float32)  # (256, n)
        images = columns.T.reshape(-1, 16, 16).transpose(0, 2, 1)  # MATLAB stores each image column-major
        labels = mat[f"{split}label"].ravel().astype(np.int64) % 10
        x = prepare_images(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), config, stream)
        splits[split] = ArrayDataset(x, torch.from_numpy(labels))
    return splits
