"""Optimizers by name, over parameter groups: the backbone (optionally at a smaller rate) and the rest.

``backbone_lr_mult`` gives discriminative learning rates for fine-tuning: the pretrained backbone learns
at ``lr * backbone_lr_mult`` while new layers (bottleneck, heads, a method's own modules) learn at ``lr``.
``layer_decay`` refines this per backbone stage (layer-wise learning-rate decay, as in ULMFiT's
discriminative fine-tuning, Howard & Ruder 2018, ACL, and BEiT, Bao et al. 2022, ICLR): the stage
``k`` steps below the new layers learns at ``lr * backbone_lr_mult * layer_decay**k`` (the top stage at
``k = 1``, the bottom one at ``k = number of stages``), in groups ``backbone.0`` (input) ... ``backbone.{S-1}``.
Frozen parameters are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    layer_decay: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="layer-wise lr decay: backbone stage k below the heads (top stage k=1) learns at "
        "lr * backbone_lr_mult * layer_decay**k (e.g. 0.75)",
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


@dataclass
class Stage:
    """One depth of the backbone(s): its modules (views, as ``Backbone.stages`` returns them) and parameters."""

    modules: list[nn.Module]
    parameters: list[nn.Parameter]


def backbone_stages(model: MultiTaskModel) -> list[Stage]:
    """The backbone stages that hold parameters, input to output (what layer decay and gradual unfreezing
    step through).

    A backbone whose ``stages()`` hold no parameters (a custom module is one opaque stage) falls back to its
    named layers (``layer_names()``). Parameters that no stage covers join the bottom stage (the most
    general features). With several backbones (experts, towers), stages of the same depth counted from the
    top form one stage.
    """
    from_top: list[Stage] = []
    for backbone in model.backbones():
        units = [stage for stage in backbone.stages() if _has_parameters(stage)]
        if not units:
            units = [backbone.layers_until(name)[-1] for name in backbone.layer_names()]
        stages, covered = [], set()
        for unit in units:
            params = [p for p in unit.parameters() if id(p) not in covered]
            covered.update(id(p) for p in params)
            stages.append(Stage([unit], params))
        rest = [p for p in backbone.parameters() if id(p) not in covered]
        if rest and not stages:
            stages.append(Stage([backbone], []))
        if rest:
            stages[0].parameters[:0] = rest
        for depth, stage in enumerate(reversed(stages)):
            if depth == len(from_top):
                from_top.append(Stage([], []))
            from_top[depth].modules += stage.modules
            from_top[depth].parameters += stage.parameters
    return from_top[::-1]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def parameter_groups(
    model: MultiTaskModel, extra: Iterable[nn.Parameter], config: OptimizerConfig
) -> list[dict]:
    """Trainable parameters split into a ``backbone`` group (one group per stage, ``backbone.0`` at the input,
    with ``layer_decay``) and a ``new`` group (bottleneck, heads, method)."""
    if config.layer_decay is None:
        backbone_ids = {id(p): 0 for p in model.backbone_parameters()}
        names, mults = ["backbone"], [config.backbone_lr_mult]
    else:
        stages = backbone_stages(model)
        backbone_ids = {id(p): i for i, stage in enumerate(stages) for p in stage.parameters}
        names = [f"backbone.{i}" for i in range(len(stages))]
        mults = [
            config.backbone_lr_mult * config.layer_decay ** (len(stages) - i) for i in range(len(stages))
        ]
    backbone: list[list[nn.Parameter]] = [[] for _ in names]
    new, seen = [], set()
    for p in [*model.parameters(), *extra]:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in backbone_ids:
            backbone[backbone_ids[id(p)]].append(p)
        else:
            new.append(p)
    if config.backbone_lr_mult == 0:
        backbone = [[] for _ in names]
    groups = [
        {"params": params, "lr": config.lr * mult, "name": name}
        for name, params, mult in [*zip(names, backbone, mults, strict=True), ("new", new, 1.0)]
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
