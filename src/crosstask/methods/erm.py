"""Empirical risk minimization on the labeled streams: source-only training and fine-tuning.

One loss per labeled stream (``source``, ``target``, ...), so ``λ1·L_source + λ2·L_target`` is the
``static`` weighting with ``weights: {source: λ1, target: λ2}``. Fine-tuning strategies (``finetune``):

- ``full``: every parameter trains (combine with ``optim.backbone_lr_mult`` for discriminative learning
  rates, and ``optim.layer_decay`` for a rate that shrinks stage by stage toward the input);
- ``linear_probe``: the backbone is frozen (also its normalization statistics); only heads train;
- ``partial``: the backbone is frozen from the input up to ``freeze_until`` (a layer name, see
  ``crosstask list backbone``); the layers above it train;
- ``gradual``: gradual unfreezing (Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text
  Classification", ACL): the first ``unfreeze_every`` steps train the new layers (heads, bottleneck) only,
  then every ``unfreeze_every`` steps one more backbone stage trains, from the top (``Backbone.stages()``).
  Frozen stages get no gradient, so the optimizer leaves them untouched (no weight decay, no momentum) and
  they keep their normalization statistics; the state follows from the step, so a resume is exact;
- ``lora``: only LoRA adapters (and the heads) train: the model must carry adapters
  (:func:`crosstask.models.lora.apply_lora`, ``model.lora`` in a config).

``regularizers`` pull the model toward its starting point (the weights when training starts, after
``model.init_from``): ``l2sp``, ``delta``, ``bss``, ``lwf`` (:mod:`crosstask.finetune`). Each adds one
penalty named after it, scaled by its own coefficients (the paper's α, β, η, λ_o) and added as it is under
every weighting; the weighting balances the streams' objectives only. The starting point is one frozen copy
of the model, saved with the method's state (a resume keeps it); what a regularizer computes from data
first (DELTA's attention) is done when a fresh run starts (the ``on_fit_start`` event), never on resume.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor

from crosstask.config import component
from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput, labeled_losses, representation_of
from crosstask.engine.optim import Stage, backbone_stages
from crosstask.errors import ConfigError
from crosstask.finetune.base import Regularizer, StreamForward, frozen_copy
from crosstask.models.lora import has_lora
from crosstask.registry import METHODS, REGULARIZERS, ComponentConfig

log = logging.getLogger(__name__)


class ERMConfig(ComponentConfig):
    finetune: Literal["full", "linear_probe", "partial", "gradual", "lora"] = "full"
    freeze_until: str | None = Field(
        default=None, description="last frozen backbone layer (finetune: partial)"
    )
    unfreeze_every: int | None = Field(
        default=None,
        ge=1,
        description="steps between unfreezing backbone stages, from the top (finetune: gradual)",
    )
    regularizers: list[component(REGULARIZERS)] = Field(
        default_factory=list,
        description="penalties toward the starting point (l2sp, delta, bss, lwf), one named loss each",
    )
    streams: list[str] | None = Field(default=None, description="labeled streams to train on (default: all)")

    @model_validator(mode="after")
    def _options(self) -> ERMConfig:
        if self.finetune == "partial" and not self.freeze_until:
            raise ValueError("finetune: partial needs freeze_until: <layer name>")
        if self.freeze_until and self.finetune != "partial":
            raise ValueError("freeze_until applies to finetune: partial only")
        if self.finetune == "gradual" and not self.unfreeze_every:
            raise ValueError("finetune: gradual needs unfreeze_every: <steps>")
        if self.unfreeze_every and self.finetune != "gradual":
            raise ValueError("unfreeze_every applies to finetune: gradual only")
        names = [r.name for r in self.regularizers]
        if len(set(names)) != len(names):
            raise ValueError(f"regularizers lists a name twice ({', '.join(names)}); give each one once")
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
        clash = [r.name for r in config.regularizers if r.name in {s.name for s in labeled}]
        if clash:
            raise ConfigError(
                f"training stream(s) {clash} have the name of a regularizer's loss; rename the stream(s)"
            )
        # the starting point: one frozen copy of the model as training finds it (init_from, backbone weights)
        entries = [REGULARIZERS.get(r.name).obj for r in config.regularizers]
        self.start = frozen_copy(model) if any(entry.needs_start for entry in entries) else None
        self.regularizers: dict[str, Regularizer] = {
            r.name: entry(r, model, self.start if entry.needs_start else None)
            for r, entry in zip(config.regularizers, entries, strict=True)
        }
        self.stages: list[Stage] = []  # finetune: gradual, input to output
        self.unfrozen: int | None = None  # how many stages (from the top) train now

    @property
    def objective_names(self) -> list[str]:
        return [s.name for s in self.train_streams]

    @property
    def penalty_names(self) -> list[str]:
        return list(self.regularizers)

    def penalty_coefficient(self, name: str) -> str:
        return f"the coefficients of method.regularizers' '{name}' entry"

    def setup(self) -> None:
        trained = {task for spec in self.train_streams for task in spec.tasks}
        for regularizer in self.regularizers.values():
            regularizer.setup(trained)
        finetune = self.config.finetune
        if has_lora(self.model) != (finetune == "lora"):
            raise ConfigError(
                "method.finetune: lora needs a model with LoRA adapters (model.lora: {r: 8, alpha: 16}, or "
                "crosstask.models.lora.apply_lora(model) before fit)"
                if finetune == "lora"
                else f"the model has LoRA adapters (model.lora), which train with method.finetune: lora, "
                f"not '{finetune}'"
            )
        if finetune == "linear_probe":
            self.model.freeze_backbone()
            log.info("linear probe: backbone frozen")
        elif finetune == "partial":
            frozen = self.model.freeze_backbone(self.config.freeze_until)
            log.info("partial fine-tuning: frozen %s", ", ".join(frozen))
        elif finetune == "gradual":
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
        """How many backbone stages (counted from the top) train at ``step`` (finetune: gradual)."""
        return min(len(self.stages), step // self.config.unfreeze_every)

    def _unfreeze(self) -> None:
        """Set which stages train at this step; frozen ones also stay in eval mode (an evaluation may have
        switched them back to train mode)."""
        count = self.unfrozen_stages(self.step)
        if count != self.unfrozen:
            if self.unfrozen is not None:
                log.info("step %d: %d of %d backbone stages train", self.step, count, len(self.stages))
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

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        if self.stages:
            self._unfreeze()
        with ExitStack() as watching:
            for regularizer in self.regularizers.values():
                watching.enter_context(regularizer.watch())
            pair_losses, outputs = labeled_losses(self.model, batch, self.train_streams)
        objectives: dict[str, Tensor] = {}
        for (stream, _task), loss in pair_losses.items():  # one objective per stream: the sum over its tasks
            objectives[stream] = objectives[stream] + loss if stream in objectives else loss
        forwards = [StreamForward(s.name, batch[s.name].x, outputs[s.name]) for s in self.train_streams]
        penalties = {name: regularizer.penalty(forwards) for name, regularizer in self.regularizers.items()}
        return StepOutput(objectives, penalties, representation=representation_of(outputs.values()))

    def on_fit_start(self, trainer) -> None:
        if trainer.fresh:  # what regularizers compute from data before training; kept in the checkpoint
            for regularizer in self.regularizers.values():
                regularizer.prepare(trainer.draw, self.train_streams)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.start is not None:
            state["start"] = self.start.state_dict()
        state["regularizers"] = {name: r.state_dict() for name, r in self.regularizers.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.start is not None:
            self.start.load_state_dict(state["start"])
        for name, regularizer in self.regularizers.items():
            regularizer.load_state_dict(state.get("regularizers", {}).get(name, {}))
