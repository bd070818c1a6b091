"""Empirical risk minimization on the labeled streams: source-only training and fine-tuning.

One loss per labeled stream (``source``, ``target``, ...), so ``λ1·L_source + λ2·L_target`` is the
``static`` weighting with ``weights: {source: λ1, target: λ2}``. Fine-tuning strategies:

- ``full``: every parameter trains (combine with ``optim.backbone_lr_mult`` for discriminative learning
  rates: a smaller rate for the pretrained backbone than for the new heads);
- ``linear_probe``: the backbone is frozen (also its normalization statistics); only heads train;
- ``partial``: the backbone is frozen from the input up to ``freeze_until`` (a layer name, see
  ``crosstask list backbone``); the layers above it train.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput
from crosstask.errors import ConfigError
from crosstask.registry import METHODS, ComponentConfig

log = logging.getLogger(__name__)


class ERMConfig(ComponentConfig):
    finetune: Literal["full", "linear_probe", "partial"] = "full"
    freeze_until: str | None = Field(
        default=None, description="last frozen backbone layer (finetune: partial)"
    )
    streams: list[str] | None = Field(default=None, description="labeled streams to train on (default: all)")

    @model_validator(mode="after")
    def _partial(self) -> ERMConfig:
        if self.finetune == "partial" and not self.freeze_until:
            raise ValueError("finetune: partial needs freeze_until: <layer name>")
        if self.freeze_until and self.finetune != "partial":
            raise ValueError("freeze_until applies to finetune: partial only")
        return self


@METHODS.register("erm", config=ERMConfig)
class ERM(Method):
    """Supervised training on labeled streams (source-only, fine-tuning); one loss per stream."""

    config: ERMConfig

    def __init__(self, config: ERMConfig, model, streams):
        super().__init__(config, model, streams)
        labeled = self.labeled_streams()
        if config.streams is not None:
            unknown = [s for s in config.streams if s not in {spec.name for spec in labeled}]
            if unknown:
                raise ConfigError(
                    f"method.streams names {unknown}, which are not labeled training streams "
                    f"({', '.join(spec.name for spec in labeled)})"
                )
            labeled = [spec for spec in labeled if spec.name in config.streams]
        self.train_streams = labeled

    @property
    def loss_names(self) -> list[str]:
        return [s.name for s in self.train_streams]

    def setup(self) -> None:
        if self.config.finetune == "linear_probe":
            self.model.freeze_backbone()
            log.info("linear probe: backbone frozen")
        elif self.config.finetune == "partial":
            frozen = self.model.freeze_backbone(self.config.freeze_until)
            log.info("partial fine-tuning: frozen %s", ", ".join(frozen))

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        pair_losses, shared = self.supervised_losses(batch, self.train_streams)
        losses = {}
        for (stream, _task), loss in pair_losses.items():
            losses[stream] = losses[stream] + loss if stream in losses else loss
        return StepOutput(losses, shared=shared)
