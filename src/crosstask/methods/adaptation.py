"""The common base of domain-adaptation methods: a labeled source, an unlabeled target, named losses.

A step draws a batch from the source stream (labeled), the target stream (unlabeled) and, for
semi-supervised adaptation, a stream with a few target labels. The batches go through the model in one
forward pass when their inputs have the same shape (normalization layers then see both domains, as in the
Transfer-Learning-Library), else in one pass each. The supervised objectives are ``source`` (and ``target``
with target labels); a method adds its own terms in :meth:`Adaptation.transfer`: objectives
(:attr:`~Adaptation.transfer_losses`, balanced by the weighting with the supervised ones) and penalties
(:attr:`~Adaptation.transfer_penalties`, added with their own coefficient). The paper's trade-off λ on the
method's adaptation term is ``method.trade_off``, multiplied into it by the method, so it holds under every
weighting (``static``'s weights then scale from 1; a dynamic weighting balances ``λ·L_transfer``).

Stream names default to ``source`` / ``target``; with other names, the only labeled stream is the source
and the only unlabeled one the target, or name them with ``method.source`` / ``method.target``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.inputs import Inputs, batch_size, can_concat, concat
from crosstask.data.streams import Batch
from crosstask.engine.method import Method, Representation, StepOutput, StreamSpec
from crosstask.engine.strategy import FinetuneOptions
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss


class AdaptationConfig(FinetuneOptions):
    """Keys every adaptation method takes (``finetune`` too: ``linear_probe`` adapts a frozen encoder's
    features)."""

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
    trade_off: float = Field(
        default=1.0, ge=0.0, description="λ: the paper's weight of the method's adaptation term"
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
    representation: Tensor | tuple[Tensor, ...]  # the joint forward pass's features, or one per pass


class Adaptation(Method):
    """Base class: subclasses implement :meth:`transfer` and set :attr:`transfer_losses` (objectives) and
    :attr:`transfer_penalties`."""

    config: AdaptationConfig
    transfer_losses: ClassVar[tuple[str, ...]] = ("transfer",)
    transfer_penalties: ClassVar[tuple[str, ...]] = ()
    needs_source: ClassVar[bool] = True  # False: source-free methods (test-time adaptation)
    aligns_features: ClassVar[bool] = True  # False: methods that adapt the outputs (heads) or statistics only
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

    def setup(self) -> None:
        super().setup()  # the fine-tuning strategy
        shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        if self.aligns_features and not shared:
            raise ConfigError(
                f"method '{self.name}' adapts the shared features, but every shared parameter is frozen "
                f"(finetune: {self.config.finetune.name} without a bottleneck), so it would change nothing; add "
                "model.bottleneck: {dim: 256} to adapt on top of the frozen encoder, or fine-tune it"
            )

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
    def objective_names(self) -> list[str]:
        supervised = ["source"] if self.needs_source else []
        supervised += ["target"] if self.labeled_target is not None else []
        return [*supervised, *self.transfer_losses]

    @property
    def penalty_names(self) -> list[str]:
        return list(self.transfer_penalties)

    # ------------------------------------------------------------------ the step

    def forward_views(self, inputs: list[Inputs]) -> tuple[list[tuple[Tensor, Tensor]], Representation]:
        """``(logits, features)`` of every input batch, in one forward pass when their shapes allow, and the
        step's shared representation: that pass's features (before they are split), or one tensor per pass."""
        if can_concat(inputs):
            output = self.model.forward_all(concat(inputs))
            joint = self._features(output)
            sizes = [batch_size(x) for x in inputs]
            return list(zip(output.outputs[self.task].split(sizes), joint.split(sizes), strict=True)), joint
        outputs = [self.model.forward_all(x) for x in inputs]
        pairs = [(o.outputs[self.task], self._features(o)) for o in outputs]
        return pairs, tuple(f for _, f in pairs)

    def views(self, batch: dict[str, Batch]) -> Views:
        """The model's outputs for every stream of the step (see :meth:`forward_views`)."""
        specs = self.train_streams
        pairs, representation = self.forward_views([batch[s.name].x for s in specs])
        views = {}
        for spec, (logits, features) in zip(specs, pairs, strict=True):
            data = batch[spec.name]
            y = data.y.get(self.task) if spec.labeled else None
            views[spec.name] = View(logits, features, y, self.task in data.complete)
        return Views(
            views.get(self.source.name) if self.source else None,
            views[self.target.name],
            views.get(self.labeled_target.name) if self.labeled_target else None,
            representation,
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
        """The method's own terms, named as in :attr:`transfer_losses` and :attr:`transfer_penalties`."""
        raise NotImplementedError

    def step_output(
        self, views: Views, terms: dict[str, Tensor], logs: dict[str, Tensor] | None = None
    ) -> StepOutput:
        """The supervised objectives of ``views`` and the method's ``terms``, sorted into objectives and
        penalties."""
        penalty_names = set(self.penalty_names)
        objectives = {**self.supervised(views), **{k: v for k, v in terms.items() if k not in penalty_names}}
        penalties = {k: v for k, v in terms.items() if k in penalty_names}
        return StepOutput(objectives, penalties, logs or {}, views.representation)

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        views = self.views(batch)
        return self.step_output(views, self.transfer(views))
