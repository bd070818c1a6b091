"""MNIST (LeCun et al. 1998) from the four IDX files under ``<data root>/mnist`` (gzipped or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files
from crosstask.data.datasets.images import ImageArrayOptions, prepare_images
from crosstask.errors import DataError
from crosstask.registry import DATASETS

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class MNISTConfig(DatasetConfig, ImageArrayOptions):
    path: Path | None = Field(
        default=None, description="folder with the IDX files (default <data root>/mnist)"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX array (the MNIST file format: magic, dimension sizes, then big-endian-free uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the IDX file ({exc}); replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (bad header); replace it with an intact copy"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file (expected {dims}); replace it with an intact copy")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


@DATASETS.register("mnist", config=MNISTConfig)
def build_mnist(config: MNISTConfig, root: Path) -> dict[str, ArrayDataset]:
    """MNIST 60000 train / 10000 test from local IDX files; resized, shifted (rotate, blur, invert, noise) and
    normalized as configured."""
    splits = {}
    for stream, (split, names) in enumerate(FILES.items()):
        image_path, label_path = find_files(root, "mnist", list(names), "mnist", config.path)
        images, labels = read_idx(image_path), read_idx(label_path)
        if len(images) != len(labels):
            raise DataError(
                f"mnist: {image_path.name} has {len(images)} images but {label_path.name} {len(labels)} labels"
            )
        x = prepare_images(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1), config, stream)
        splits[split] = ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)))
    return splits
