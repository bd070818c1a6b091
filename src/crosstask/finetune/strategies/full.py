"""Full fine-tuning: every parameter trains. Combine with ``optim.backbone_lr_mult`` for discriminative
learning rates, and ``optim.layer_decay`` for a rate that shrinks stage by stage toward the input."""

from __future__ import annotations

from crosstask.engine.strategy import Strategy
from crosstask.errors import ConfigError
from crosstask.models.lora import has_lora
from crosstask.registry import FINETUNE, ComponentConfig


@FINETUNE.register("full", config=ComponentConfig)
class Full(Strategy):
    """Every parameter trains (the default)."""

    def setup(self) -> None:
        refuse_lora(self)


def refuse_lora(strategy: Strategy) -> None:
    if has_lora(strategy.model):
        raise ConfigError(
            f"the model has LoRA adapters (model.lora), which train with method.finetune: lora, not "
            f"'{strategy.name}'"
        )
