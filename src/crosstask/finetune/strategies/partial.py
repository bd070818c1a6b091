"""Partial fine-tuning: the backbone is frozen from the input up to ``freeze_until`` (a layer name, see
``crosstask list backbone``); the layers above it train."""

from __future__ import annotations

import logging

from pydantic import Field

from crosstask.engine.strategy import Strategy
from crosstask.finetune.strategies.full import refuse_lora
from crosstask.registry import FINETUNE, ComponentConfig

log = logging.getLogger(__name__)


class PartialConfig(ComponentConfig):
    freeze_until: str = Field(description="the last frozen backbone layer, from the input")


@FINETUNE.register("partial", config=PartialConfig)
class Partial(Strategy):
    """Freeze the backbone up to a layer; the layers above it train."""

    config: PartialConfig

    def setup(self) -> None:
        refuse_lora(self)
        frozen = self.model.freeze_backbone(self.config.freeze_until)
        log.info("partial fine-tuning: frozen %s", ", ".join(frozen))
