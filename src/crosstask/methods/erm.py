"""Empirical risk minimization on the labeled streams: source-only training and fine-tuning.

One objective per labeled stream (``source``, ``target``, ...), so ``λ1·L_source + λ2·L_target`` is the
``static`` weighting with ``weights: {source: λ1, target: λ2}``. The fine-tuning strategy (``finetune``,
registry ``finetune``: ``crosstask list finetune``) says which parameters train and when: ``full`` (the
default), ``linear_probe``, ``{name: partial, freeze_until: <layer>}``, ``{name: gradual, unfreeze_every:
<steps>}``, ``lora`` (:mod:`crosstask.finetune.strategies`). ``freeze_until`` and ``unfreeze_every`` given
at the method level (the older form) still work.

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
from typing import Any

from pydantic import Field, model_validator
from torch import Tensor

from crosstask.components import component
from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput, labeled_losses, representation_of
from crosstask.engine.strategy import FinetuneOptions
from crosstask.errors import ConfigError
from crosstask.finetune.base import Regularizer, StreamForward, frozen_copy
from crosstask.registry import METHODS, REGULARIZERS

log = logging.getLogger(__name__)


class ERMConfig(FinetuneOptions):
    regularizers: list[component(REGULARIZERS)] = Field(
        default_factory=list,
        description="penalties toward the starting point (l2sp, delta, bss, lwf), one named loss each",
    )
    streams: list[str] | None = Field(default=None, description="labeled streams to train on (default: all)")

    @model_validator(mode="after")
    def _options(self) -> ERMConfig:
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
        super().setup()  # the fine-tuning strategy

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
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
