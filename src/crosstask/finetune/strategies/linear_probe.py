"""Linear probing: the backbone is frozen, normalization statistics included (it stays in eval mode); only the
new layers (bottleneck, heads) train."""

from __future__ import annotations

import logging

from crosstask.engine.strategy import Strategy
from crosstask.finetune.strategies.full import refuse_lora
from crosstask.registry import FINETUNE, ComponentConfig

log = logging.getLogger(__name__)


@FINETUNE.register("linear_probe", config=ComponentConfig)
class LinearProbe(Strategy):
    """The backbone frozen; heads (and bottleneck) train."""

    def setup(self) -> None:
        refuse_lora(self)
        self.model.freeze_backbone()
        log.info("linear probe: backbone frozen")
