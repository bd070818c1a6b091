"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, section 5.1): the few-shot regression benchmark.

Each task is a sine wave ``y = A sin(x − φ)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``φ ~ U[0, π]``,
sampled at ``x ~ U[−5, 5]``. Finn et al. draw a fresh wave for every task; here the waves are a fixed pool
of ``functions`` (each with ``points`` samples), drawn from ``seed`` — with many functions (default 20000)
the pool is far larger than any training run sees. Labels: ``y`` (regression, one output) and ``function``
(the wave's index: what few-shot episodes group by, ``episodes: {label: function, ways: 1}``). Inputs are
``x`` of shape (1,).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig
from crosstask.registry import DATASETS


class SinusoidConfig(DatasetConfig):
    functions: int = Field(default=20000, ge=1, description="sine waves in the pool")
    points: int = Field(default=30, ge=2, description="samples of each wave")
    amplitude: tuple[float, float] = Field(default=(0.1, 5.0), description="range of A")
    phase: tuple[float, float] = Field(default=(0.0, math.pi), description="range of φ")
    x_range: tuple[float, float] = Field(default=(-5.0, 5.0), description="range of x")
    test_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="carved from the pool (default none)"
    )
    seed: int = Field(default=0, description="seed of the waves and their samples")


@DATASETS.register("sinusoid", config=SinusoidConfig)
def build_sinusoid(config: SinusoidConfig, root: Path) -> dict[str, ArrayDataset]:
    """Finn et al.'s sine waves y = A sin(x − φ): a pool of functions, each sampled at points x."""
    generator = torch.Generator().manual_seed(config.seed)

    def uniform(bounds: tuple[float, float], *shape: int) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(*shape, generator=generator)

    amplitude = uniform(config.amplitude, config.functions, 1)
    phase = uniform(config.phase, config.functions, 1)
    x = uniform(config.x_range, config.functions, config.points)
    y = amplitude * torch.sin(x - phase)
    function = torch.arange(config.functions).repeat_interleave(config.points)
    return {"all": ArrayDataset(x.reshape(-1, 1), {"y": y.reshape(-1), "function": function})}
