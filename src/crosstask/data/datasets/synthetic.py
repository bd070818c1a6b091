"""Synthetic multi-domain, multi-task data with controllable domain shift and task relatedness.

Every sample has a latent ``z ~ N(0, I)``. Task ``t`` labels it through its own weights ``W_t`` (argmax of
``z W_t`` plus Gumbel noise for classification, ``z W_t`` plus Gaussian noise for regression), the same in
every domain, so the shift between domains is a pure covariate shift. Tasks come in planted groups:
within a group the weights share a common part, ``W_t = sqrt(r) G_g + sqrt(1 - r) E_t`` with relatedness
``r``; tasks of different groups are independent. Domain ``d > 0`` sees ``x = z A_d + b_d``, where ``A_d =
Q diag(exp(shift * s)) Q^T`` is symmetric positive definite (a linear covariance shift, which CORAL-style
alignment provably undoes) and ``b_d`` a mean shift of size ``shift``; domain 0 sees ``x = z``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig
from crosstask.registry import DATASETS


class SyntheticConfig(DatasetConfig):
    n: int = Field(default=1000, ge=1, description="training samples")
    n_test: int = Field(default=500, ge=1, description="test samples")
    dim: int = Field(default=16, ge=1, description="input dimension")
    num_tasks: int = Field(default=2, ge=1)
    groups: int | list[list[int]] = Field(
        default=1,
        description="number of task groups (tasks split evenly), or the groups as lists of task indices",
    )
    relatedness: float = Field(default=0.9, ge=0.0, le=1.0, description="weight similarity inside a group")
    task_kind: Literal["classification", "regression"] = "classification"
    num_classes: int = Field(default=2, ge=2)
    noise: float = Field(default=0.1, ge=0.0, description="label noise (Gumbel scale or Gaussian std)")
    domain: int = Field(default=0, ge=0, description="which domain to draw; 0 is unshifted")
    shift: float = Field(default=1.0, ge=0.0, description="strength of the shift of domains > 0")
    seed: int = Field(default=0, description="seed of the world: task weights and domain transforms")

    @model_validator(mode="after")
    def _groups(self) -> SyntheticConfig:
        if isinstance(self.groups, int):
            if not 1 <= self.groups <= self.num_tasks:
                raise ValueError(f"groups must be between 1 and num_tasks ({self.num_tasks})")
        else:
            flat = sorted(i for group in self.groups for i in group)
            if flat != list(range(self.num_tasks)):
                raise ValueError(f"groups must list every task index 0..{self.num_tasks - 1} exactly once")
        return self

    def task_groups(self) -> list[list[int]]:
        if isinstance(self.groups, list):
            return self.groups
        return [list(part) for part in np.array_split(np.arange(self.num_tasks), self.groups)]


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def task_names(num_tasks: int) -> list[str]:
    return [f"t{i}" for i in range(num_tasks)]


@DATASETS.register("synthetic", config=SyntheticConfig)
def build_synthetic(config: SyntheticConfig, root: Path) -> dict[str, ArrayDataset]:
    """Generated tasks (t0, t1, ...) in planted related groups, domains with a controllable covariate shift."""
    world = _rng("world", config.seed, config.dim, config.num_tasks, config.num_classes)
    width = config.num_classes if config.task_kind == "classification" else 1
    weights = np.zeros((config.num_tasks, config.dim, width))
    for group in config.task_groups():
        common = world.normal(size=(config.dim, width))
        for t in group:
            own = world.normal(size=(config.dim, width))
            weights[t] = np.sqrt(config.relatedness) * common + np.sqrt(1 - config.relatedness) * own
    weights *= 3.0 / np.sqrt(config.dim)  # logits of order 3: learnable, not trivial

    transform, offset = np.eye(config.dim), np.zeros(config.dim)
    if config.domain > 0 and config.shift > 0:
        shift_rng = _rng("domain", config.seed, config.dim, config.domain)
        q, _ = np.linalg.qr(shift_rng.normal(size=(config.dim, config.dim)))
        transform = q @ np.diag(np.exp(config.shift * shift_rng.normal(size=config.dim))) @ q.T
        offset = config.shift * shift_rng.normal(size=config.dim)

    splits = {}
    for split, n in (("train", config.n), ("test", config.n_test)):
        rng = _rng("samples", config.seed, config.domain, split)
        z = rng.normal(size=(n, config.dim))
        labels = {}
        for t, name in enumerate(task_names(config.num_tasks)):
            scores = z @ weights[t]
            if config.task_kind == "classification":
                noisy = scores + config.noise * rng.gumbel(size=scores.shape)
                labels[name] = torch.from_numpy(noisy.argmax(1).astype(np.int64))
            else:
                noisy = scores[:, 0] + config.noise * rng.normal(size=n)
                labels[name] = torch.from_numpy(noisy.astype(np.float32))
        x = torch.from_numpy((z @ transform + offset).astype(np.float32))
        splits[split] = ArrayDataset(x, labels, task_groups=config.task_groups(), domain=config.domain)
    return splits
