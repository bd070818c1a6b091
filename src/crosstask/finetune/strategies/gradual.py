"""Gradual unfreezing (Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification",
ACL): the first ``unfreeze_every`` steps train the new layers (heads, bottleneck) only, then every
``unfreeze_every`` steps one more backbone stage trains, from the top (``Backbone.stages()``).

Every stage stays in the optimizer; frozen stages get no gradient (``requires_grad`` off), so the optimizer
leaves them untouched (no weight decay, no momentum), and they keep their normalization statistics (eval
mode). What trains follows from the step, so a resume needs no extra state.
"""

from __future__ import annotations

import logging

from pydantic import Field

from crosstask.engine.optim import Stage, backbone_stages
from crosstask.engine.strategy import Strategy
from crosstask.errors import ConfigError
from crosstask.finetune.strategies.full import refuse_lora
from crosstask.registry import FINETUNE, ComponentConfig

log = logging.getLogger(__name__)


class GradualConfig(ComponentConfig):
    unfreeze_every: int = Field(ge=1, description="steps between unfreezing backbone stages, from the top")


@FINETUNE.register("gradual", config=GradualConfig)
class Gradual(Strategy):
    """Unfreeze one backbone stage every ``unfreeze_every`` steps, from the top (Howard & Ruder 2018)."""

    config: GradualConfig

    def __init__(self, config: GradualConfig, model):
        super().__init__(config, model)
        self.stages: list[Stage] = []  # input to output
        self.unfrozen: int | None = None  # how many stages (from the top) train now

    def setup(self) -> None:
        refuse_lora(self)
        # stages stay trainable until the first step: the optimizer, built next, must hold them all
        self.stages = backbone_stages(self.model)
        if not self.stages:
            raise ConfigError("finetune: gradual needs a backbone with parameters to unfreeze")
        for stage in self.stages:
            for param in stage.parameters:
                param.requires_grad_(True)
        log.info(
            "gradual unfreezing: %d backbone stages, one more every %d steps from step %d",
            len(self.stages),
            self.config.unfreeze_every,
            self.config.unfreeze_every,
        )

    def unfrozen_stages(self, step: int) -> int:
        """How many backbone stages (counted from the top) train at ``step``."""
        return min(len(self.stages), step // self.config.unfreeze_every)

    def on_step_start(self, step: int) -> None:
        """Set which stages train at this step; frozen ones also stay in eval mode (an evaluation may have
        switched them back to train mode)."""
        count = self.unfrozen_stages(step)
        if count != self.unfrozen:
            if self.unfrozen is not None:
                log.info("step %d: %d of %d backbone stages train", step, count, len(self.stages))
            for i, stage in enumerate(self.stages):
                trainable = i >= len(self.stages) - count
                for param in stage.parameters:
                    param.requires_grad_(trainable)
                for module in stage.modules:
                    module.train(trainable and self.model.training)
            self.unfrozen = count
        for stage in self.stages[: len(self.stages) - count]:
            for module in stage.modules:
                module.eval()
