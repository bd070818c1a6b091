"""Office-Caltech10 SURF features (Gong, Shi, Sha and Grauman, 2012, "Geodesic Flow Kernel for Unsupervised
Domain Adaptation", CVPR): 800-bin SURF bag-of-words histograms of the 10 classes shared by Office-31
(Saenko et al. 2010) and Caltech-256 (Griffin et al. 2007), in four domains: amazon (958 images),
caltech (1123), dslr (157) and webcam (295).

Read from ``<data root>/office_caltech10/surf/<domain>_SURF_L10.mat`` (MATLAB v5: ``fts`` (n, 800),
``labels`` (n, 1) in 1..10). ``normalize: sum_zscore`` (default) is the preprocessing of the GFK and JDA
benchmarks: each histogram divided by its sum, then every feature z-scored within the domain; with it,
1-NN from one domain to another reproduces the published "no adaptation" row. ``none`` keeps raw counts.

The benchmark protocol is transductive: all samples of a domain are the labeled source, or the unlabeled
target that is also scored. The builder therefore returns the whole domain as both ``train`` and ``test``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files, read_mat
from crosstask.errors import DataError
from crosstask.registry import DATASETS

DOMAIN_SIZES = {"amazon": 958, "caltech": 1123, "dslr": 157, "webcam": 295}
CLASSES = (
    "back_pack",
    "bike",
    "calculator",
    "headphones",
    "keyboard",
    "laptop_computer",
    "monitor",
    "mouse",
    "mug",
    "projector",
)


class OfficeCaltechSurfConfig(DatasetConfig):
    domain: Literal["amazon", "caltech", "dslr", "webcam"] = Field(description="which of the four domains")
    path: Path | None = Field(
        default=None,
        description="folder holding <domain>_SURF_L10.mat (default <data root>/office_caltech10/surf)",
    )
    normalize: Literal["sum_zscore", "none"] = Field(
        default="sum_zscore",
        description="sum_zscore: histogram / its sum, then z-score per feature (GFK/JDA)",
    )


def sum_zscore(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum, then each column standardized (population std; constant columns -> 0)."""
    totals = counts.sum(axis=1, keepdims=True)
    x = counts / np.where(totals > 0, totals, 1.0)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


@DATASETS.register("office_caltech_surf", config=OfficeCaltechSurfConfig)
def build_office_caltech_surf(config: OfficeCaltechSurfConfig, root: Path) -> dict[str, ArrayDataset]:
    """Office-Caltech10 SURF-800 features of one domain, the whole domain as train and as test."""
    file = f"{config.domain}_SURF_L10.mat"
    (path,) = find_files(root, "office_caltech10/surf", [file], "office_caltech_surf", config.path)
    mat = read_mat(path)
    if "fts" not in mat or "labels" not in mat:
        raise DataError(f"{path}: missing 'fts'/'labels'; is this a GFK Office-Caltech SURF file?")
    counts = mat["fts"].astype(np.float64)
    labels = mat["labels"].ravel().astype(np.int64) - 1
    if len(counts) != len(labels) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"{path}: expected one label in 1..10 per row of fts; the file looks damaged")
    x = sum_zscore(counts) if config.normalize == "sum_zscore" else counts
    dataset = ArrayDataset(
        torch.from_numpy(x.astype(np.float32)),
        torch.from_numpy(labels),
        domain=config.domain,
        classes=CLASSES,
    )
    return {"train": dataset, "test": dataset}
