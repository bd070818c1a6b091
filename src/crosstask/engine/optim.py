"""Optimizers by name, over parameter groups: the backbone (optionally at a smaller rate) and the rest.

``backbone_lr_mult`` gives discriminative learning rates for fine-tuning: the pretrained backbone learns
at ``lr * backbone_lr_mult`` while new layers (bottleneck, heads, a method's own modules) learn at ``lr``.
Frozen parameters are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field, model_validator
from torch import nn

from crosstask.errors import ConfigError
from crosstask.models.model import MultiTaskModel
from crosstask.registry import OPTIMIZERS, ComponentConfig


class OptimizerConfig(ComponentConfig):
    """Keys every optimizer accepts."""

    lr: float = Field(default=0.01, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    backbone_lr_mult: float = Field(
        default=1.0,
        ge=0.0,
        description="backbone lr = lr * this (0: not optimized; method.finetune freezes it)",
    )


class SGDConfig(OptimizerConfig):
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class AdamConfig(OptimizerConfig):
    lr: float = Field(default=1e-3, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)


@OPTIMIZERS.register("sgd", config=SGDConfig)
def sgd(groups: list[dict], config: SGDConfig) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (Nesterov) momentum."""
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


@OPTIMIZERS.register("adam", config=AdamConfig)
def adam(groups: list[dict], config: AdamConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015), L2 penalty as weight decay."""
    return torch.optim.Adam(
        groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )


@OPTIMIZERS.register("adamw", config=AdamConfig)
def adamw(groups: list[dict], config: AdamConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )


def parameter_groups(
    model: MultiTaskModel, extra: Iterable[nn.Parameter], config: OptimizerConfig
) -> list[dict]:
    """Trainable parameters split into a ``backbone`` group and a ``new`` group (bottleneck, heads, method)."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    backbone, new, seen = [], [], set()
    for p in [*model.parameters(), *extra]:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (backbone if id(p) in backbone_ids else new).append(p)
    if config.backbone_lr_mult == 0:
        backbone = []
    groups = [
        {"params": params, "lr": config.lr * mult, "name": name}
        for name, params, mult in (("backbone", backbone, config.backbone_lr_mult), ("new", new, 1.0))
        if params
    ]
    if not groups:
        raise ConfigError(
            "nothing to train: every parameter is frozen (check method.finetune and optim.backbone_lr_mult)"
        )
    return groups


def build_optimizer(
    config: OptimizerConfig, model: MultiTaskModel, extra: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(config.name).obj(parameter_groups(model, extra, config), config)
