"""The common base of domain-adaptation methods: a labeled source, an unlabeled target, named losses.

A step draws a batch from the source stream (labeled), the target stream (unlabeled) and, for
semi-supervised adaptation, a stream with a few target labels. The batches go through the model in one
forward pass when their inputs have the same shape (normalization layers then see both domains, as in the
Transfer-Learning-Library), else in one pass each. The supervised losses are ``source`` (and ``target``
with target labels); a method adds its own (``transfer``, ...) in :meth:`Adaptation.transfer`. The weighting
combines them: ``static`` weights are the papers' trade-off λ (``weighting: {name: static, weights:
{transfer: 0.3}}``), and any dynamic weighting works too.

Stream names default to ``source`` / ``target``; with other names, the only labeled stream is the source
and the only unlabeled one the target, or name them with ``method.source`` / ``method.target``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput, StreamSpec
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss
from crosstask.registry import ComponentConfig


class AdaptationConfig(ComponentConfig):
    """Keys every adaptation method takes."""

    task: str | None = Field(default=None, description="the task to adapt (default: the first task)")
    source: str | None = Field(
        default=None, description="labeled source stream (default: 'source', or the only labeled stream)"
    )
    target: str | None = Field(
        default=None, description="unlabeled target stream (default: 'target', or the only unlabeled stream)"
    )
    labeled_target: str | None = Field(
        default=None, description="a stream with a few target labels: semi-supervised adaptation"
    )


@dataclass
class View:
    """One domain's part of a step: the adapted task's outputs (logits), the shared features, the labels."""

    logits: Tensor
    features: Tensor
    y: Tensor | None = None
    complete: bool = False  # labels known to have no missing values

    @property
    def probabilities(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=1)


@dataclass
class Views:
    """A step's views: ``source``, ``target`` (unlabeled) and, semi-supervised, ``labeled_target``."""

    source: View | None
    target: View
    labeled_target: View | None
    features: Tensor  # every view's features, concatenated (the shared representation of the step)


class Adaptation(Method):
    """Base class: subclasses implement :meth:`transfer` and set :attr:`transfer_losses`."""

    config: AdaptationConfig
    transfer_losses: ClassVar[tuple[str, ...]] = ("transfer",)
    needs_source: ClassVar[bool] = True  # False: source-free methods (test-time adaptation)
    classification_only: ClassVar[bool] = True

    def __init__(self, config: AdaptationConfig, model, streams: list[StreamSpec]):
        super().__init__(config, model, streams)
        self.task = self._task(config.task)
        self.labeled_target = (
            self._stream(config.labeled_target, None, labeled=True) if config.labeled_target else None
        )
        taken = {self.labeled_target.name} if self.labeled_target else set()
        self.source = (
            self._stream(config.source, "source", labeled=True, exclude=taken) if self.needs_source else None
        )
        self.target = self._stream(config.target, "target", labeled=False)
        self.train_streams = [s for s in (self.source, self.target, self.labeled_target) if s is not None]
        for spec in (self.source, self.labeled_target):
            if spec is not None and self.task not in spec.tasks:
                raise ConfigError(
                    f"method '{self.name}': stream '{spec.name}' has no labels for task '{self.task}' "
                    f"(it labels {', '.join(spec.tasks) or 'nothing'})"
                )

    # ------------------------------------------------------------------ setup

    def _task(self, name: str | None) -> str:
        if name is None:
            name = next(iter(self.tasks))
        if name not in self.tasks:
            raise ConfigError(f"method.task: no task named '{name}'; tasks: {', '.join(self.tasks)}")
        task = self.tasks[name]
        if self.classification_only and task.kind != "classification":
            raise ConfigError(
                f"method '{self.name}' adapts a classification task; task '{name}' is {task.kind}"
            )
        return name

    def _stream(
        self, name: str | None, default: str | None, labeled: bool, exclude: set[str] = frozenset()
    ) -> StreamSpec:
        kind = "labeled" if labeled else "unlabeled"
        key = "labeled_target" if default is None else default
        candidates = [s for s in self.available.values() if s.labeled == labeled and s.name not in exclude]
        if name is None:
            if default in self.available and self.available[default].labeled == labeled:
                return self.available[default]
            if len(candidates) == 1:
                return candidates[0]
            raise ConfigError(
                f"method '{self.name}' needs one {kind} {key} stream in data.train; found "
                f"{', '.join(s.name for s in candidates) or 'none'}. Name it '{default}' or set method.{key}"
            )
        if name not in self.available:
            raise ConfigError(
                f"method.{key}: no training stream named '{name}'; data.train has {', '.join(self.available)}"
            )
        spec = self.available[name]
        if spec.labeled != labeled:
            raise ConfigError(
                f"method.{key}: stream '{name}' must be {kind} (set labeled: {str(labeled).lower()})"
            )
        return spec

    @property
    def loss_names(self) -> list[str]:
        supervised = ["source"] if self.needs_source else []
        supervised += ["target"] if self.labeled_target is not None else []
        return [*supervised, *self.transfer_losses]

    # ------------------------------------------------------------------ the step

    def forward_views(self, inputs: list[Tensor]) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """``(logits, features)`` of every input batch, in one forward pass when their shapes allow, and
        the features of all of them concatenated (the step's shared representation)."""
        if all(x.shape[1:] == inputs[0].shape[1:] for x in inputs):
            output = self.model.forward_all(torch.cat(inputs))
            joint = self._features(output)
            sizes = [len(x) for x in inputs]
            return list(zip(output.outputs[self.task].split(sizes), joint.split(sizes), strict=True)), joint
        outputs = [self.model.forward_all(x) for x in inputs]
        pairs = [(o.outputs[self.task], self._features(o)) for o in outputs]
        return pairs, torch.cat([f for _, f in pairs])

    def views(self, batch: dict[str, Batch]) -> Views:
        """The model's outputs for every stream of the step (see :meth:`forward_views`)."""
        specs = self.train_streams
        pairs, joint = self.forward_views([batch[s.name].x for s in specs])
        views = {}
        for spec, (logits, features) in zip(specs, pairs, strict=True):
            data = batch[spec.name]
            y = data.y.get(self.task) if spec.labeled else None
            views[spec.name] = View(logits, features, y, self.task in data.complete)
        return Views(
            views.get(self.source.name) if self.source else None,
            views[self.target.name],
            views.get(self.labeled_target.name) if self.labeled_target else None,
            joint,
        )

    def _features(self, output) -> Tensor:
        if output.shared is None:
            raise ConfigError(
                f"method '{self.name}' needs a model with one shared representation (model.architecture: "
                "hard_sharing)"
            )
        return output.shared

    def supervised(self, views: Views) -> dict[str, Tensor]:
        """``source`` (and ``target`` with target labels): the task loss on the labeled views."""
        out = {}
        task = self.tasks[self.task]
        for name, view in (("source", views.source), ("target", views.labeled_target)):
            if view is not None:
                out[name] = task_loss(task, view.logits, view.y, masked=not view.complete)
        return out

    def transfer(self, views: Views) -> dict[str, Tensor]:
        """The method's own losses, named as in :attr:`transfer_losses`."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        views = self.views(batch)
        losses = {**self.supervised(views), **self.transfer(views)}
        return StepOutput(losses, shared=views.features)
