"""Learning-rate schedules by name. Each is a multiplier of the base rate per optimizer step, with an
optional linear warm-up, so its state is just the step count."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field

from crosstask.registry import SCHEDULERS, ComponentConfig


class SchedulerConfig(ComponentConfig):
    warmup_steps: int = Field(default=0, ge=0, description="linear warm-up from lr/warmup_steps to lr")


class CosineConfig(SchedulerConfig):
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="final lr as a fraction of lr")


class StepConfig(SchedulerConfig):
    step_size: int = Field(default=1000, ge=1)
    gamma: float = Field(default=0.1, gt=0.0)


class InverseDecayConfig(SchedulerConfig):
    gamma: float = Field(default=0.001, ge=0.0)
    power: float = Field(default=0.75, ge=0.0)


class LinearConfig(SchedulerConfig):
    end_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


@SCHEDULERS.register("constant", config=SchedulerConfig)
def constant(config: SchedulerConfig, total: int) -> Callable[[int], float]:
    """The same rate throughout (after any warm-up)."""
    return lambda step: 1.0


@SCHEDULERS.register("cosine", config=CosineConfig)
def cosine(config: CosineConfig, total: int) -> Callable[[int], float]:
    """Cosine annealing to min_lr_ratio (Loshchilov & Hutter 2017, without restarts)."""
    span = max(1, total - config.warmup_steps)

    def factor(step: int) -> float:
        progress = min(1.0, max(0, step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULERS.register("step", config=StepConfig)
def step_decay(config: StepConfig, total: int) -> Callable[[int], float]:
    """Multiply the rate by gamma every step_size steps."""
    return lambda step: config.gamma ** (step // config.step_size)


@SCHEDULERS.register("inverse_decay", config=InverseDecayConfig)
def inverse_decay(config: InverseDecayConfig, total: int) -> Callable[[int], float]:
    """lr·(1 + gamma·step)^(-power), the annealing of DANN (Ganin et al. 2016) and the Transfer-Learning-Library."""
    return lambda step: (1.0 + config.gamma * step) ** (-config.power)


@SCHEDULERS.register("linear", config=LinearConfig)
def linear(config: LinearConfig, total: int) -> Callable[[int], float]:
    """Linear decay from lr to end_ratio·lr over the run."""
    span = max(1, total - config.warmup_steps)
    return lambda step: 1.0 - (1.0 - config.end_ratio) * min(1.0, max(0, step - config.warmup_steps) / span)


def build_scheduler(
    config: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    shape = SCHEDULERS.get(config.name).obj(config, total_steps)
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * shape(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
