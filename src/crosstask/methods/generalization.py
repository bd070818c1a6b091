"""The common base of domain-generalization methods: several labeled source domains, no target data.

Every labeled training stream is a source domain (``method.domains`` picks some of them); the target domain
is never seen in training (evaluate it with ``data.eval``, or run :func:`crosstask.lodo.leave_one_domain_out`,
which holds each domain out in turn). A step draws one batch per domain and sends them through the model in
one joint forward pass when their inputs have the same shape (normalization layers then see every domain,
as in DomainBed), else in one pass per domain. Subclasses get the per-domain outputs as :class:`DomainView`
objects and the per-domain risks from :meth:`Generalization.risks`, and return their named terms from
:meth:`Generalization.objective`: objectives (:attr:`~Generalization.objective_losses`; the supervised part
is named ``risk``) and penalties (:attr:`~Generalization.penalty_losses`, usually ``penalty``, whose
coefficient λ is ``method.penalty_weight`` and holds under every weighting). The step's shared
representation is the joint pass's features (or one tensor per pass), which the losses go through.

Penalties that start small and switch to their full weight after ``anneal_steps`` (IRM, V-REx) share
:class:`PenaltyAnnealConfig`. At the switch the papers' code (and DomainBed) start the optimizer afresh: the
method clears the optimizer's state when the switch step starts (its ``on_step_start`` handler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.inputs import batch_size, can_concat, concat
from crosstask.data.streams import Batch
from crosstask.engine.method import Method, Representation, StepOutput, StreamSpec, representation_of
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss
from crosstask.registry import ComponentConfig


class GeneralizationConfig(ComponentConfig):
    """Keys every domain-generalization method takes."""

    task: str | None = Field(default=None, description="the task to learn (default: the first task)")
    domains: list[str] | None = Field(
        default=None,
        description="the labeled streams that are source domains (default: every labeled stream)",
    )


class PenaltyAnnealConfig(ComponentConfig):
    """The penalty anneal of IRM and V-REx: the penalty is multiplied by ``anneal_scale`` before
    ``anneal_steps``, then counts with its full weight λ (``penalty_weight``)."""

    penalty_weight: float = Field(default=1.0, ge=0.0, description="λ: the weight of the penalty")
    anneal_steps: int = Field(
        default=500, ge=0, description="steps before the penalty counts fully (0: from the start)"
    )
    anneal_scale: float = Field(
        default=0.01,
        ge=0.0,
        description="multiplier on the penalty before anneal_steps; 1/λ gives the papers' weight 1 before",
    )
    reset_optimizer: bool = Field(
        default=True, description="clear the optimizer's state (Adam's moments) when the full weight starts"
    )

    def penalty_factor(self, step: int) -> float:
        """The penalty's coefficient at ``step``: λ times the anneal's multiplier."""
        return self.penalty_weight * (self.anneal_scale if step < self.anneal_steps else 1.0)


@dataclass
class DomainView:
    """One source domain's part of a step: the task's outputs, the shared features, the labels."""

    name: str
    logits: Tensor
    features: Tensor | None
    y: Tensor
    complete: bool  # labels known to have no missing values


class Generalization(Method):
    """Base class: subclasses implement :meth:`objective` and set :attr:`objective_losses` (and
    :attr:`penalty_losses`)."""

    config: GeneralizationConfig
    objective_losses: ClassVar[tuple[str, ...]] = ("risk",)
    penalty_losses: ClassVar[tuple[str, ...]] = ()
    min_domains: ClassVar[int] = 2  # a method comparing domains needs at least two

    def __init__(self, config: GeneralizationConfig, model, streams: list[StreamSpec]):
        super().__init__(config, model, streams)
        self.task = self._task(config.task)
        self.domains = self._domains(config.domains)
        self.train_streams = self.domains

    # ------------------------------------------------------------------ setup

    def _task(self, name: str | None) -> str:
        if name is None:
            name = next(iter(self.tasks))
        if name not in self.tasks:
            raise ConfigError(f"method.task: no task named '{name}'; tasks: {', '.join(self.tasks)}")
        return name

    def _domains(self, names: list[str] | None) -> list[StreamSpec]:
        labeled = self.labeled_streams()
        if names is not None:
            known = {s.name for s in labeled}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ConfigError(
                    f"method.domains names {unknown}, which are not labeled training streams "
                    f"({', '.join(sorted(known))})"
                )
            labeled = [s for s in labeled if s.name in names]
        missing = [s.name for s in labeled if self.task not in s.tasks]
        if missing:
            raise ConfigError(
                f"method '{self.name}': domain(s) {', '.join(missing)} have no labels for task '{self.task}'; "
                "list the domains that do in method.domains"
            )
        if len(labeled) < self.min_domains:
            raise ConfigError(
                f"method '{self.name}' needs at least {self.min_domains} labeled source domains (each "
                f"labeled stream under data.train is one); found {len(labeled)}: "
                f"{', '.join(s.name for s in labeled) or 'none'}. Add domains, or train with method: erm"
            )
        return labeled

    @property
    def objective_names(self) -> list[str]:
        return list(self.objective_losses)

    @property
    def penalty_names(self) -> list[str]:
        return list(self.penalty_losses)

    def penalty_coefficient(self, name: str) -> str:
        return "method.penalty_weight"

    def on_step_start(self, trainer) -> None:
        """IRM / V-REx: clear the optimizer's state when the penalty's full weight starts."""
        super().on_step_start(trainer)
        config = self.config
        if (
            isinstance(config, PenaltyAnnealConfig)
            and config.reset_optimizer
            and config.anneal_steps > 0
            and trainer.step == config.anneal_steps
        ):
            trainer.reset_optimizer_state()

    # ------------------------------------------------------------------ the step

    def forward_domains(
        self, batch: dict[str, Batch], domains: list[StreamSpec] | None = None
    ) -> tuple[list[DomainView], Representation]:
        """The model's outputs for every domain (default: all), in one pass when the input shapes allow, and
        the shared representation the outputs were computed from (that pass's features before the split, or
        one tensor per pass; ``None`` for an architecture without one)."""
        domains = self.domains if domains is None else domains
        inputs = [batch[d.name].x for d in domains]
        if can_concat(inputs):
            output = self.model.forward_all(concat(inputs))
            sizes = [batch_size(x) for x in inputs]
            logits = output.outputs[self.task].split(sizes)
            features = output.shared.split(sizes) if output.shared is not None else [None] * len(sizes)
            representation = output.shared
        else:
            outputs = [self.model.forward_all(x) for x in inputs]
            logits = [o.outputs[self.task] for o in outputs]
            features = [o.shared for o in outputs]
            representation = representation_of(outputs)
        views = [
            DomainView(d.name, lg, ft, batch[d.name].y[self.task], self.task in batch[d.name].complete)
            for d, lg, ft in zip(domains, logits, features, strict=True)
        ]
        return views, representation

    def views(self, batch: dict[str, Batch], domains: list[StreamSpec] | None = None) -> list[DomainView]:
        """The model's outputs for every domain (default: all); see :meth:`forward_domains`."""
        return self.forward_domains(batch, domains)[0]

    def risk(self, view: DomainView, logits: Tensor | None = None) -> Tensor:
        """The task loss of one domain (on ``logits`` if given, e.g. scaled ones)."""
        output = view.logits if logits is None else logits
        return task_loss(self.tasks[self.task], output, view.y, masked=not view.complete)

    def risks(self, views: list[DomainView]) -> Tensor:
        """The per-domain risks, stacked: shape ``(number of domains,)``."""
        return torch.stack([self.risk(v) for v in views])

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        """The method's losses, named as in :attr:`objective_losses`."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        views, representation = self.forward_domains(batch)
        return self.step_output(self.objective(views), representation)

    def step_output(self, terms: dict[str, Tensor], representation: Representation = None) -> StepOutput:
        """``terms`` sorted into objectives and penalties."""
        penalties = set(self.penalty_losses)
        return StepOutput(
            {k: v for k, v in terms.items() if k not in penalties},
            {k: v for k, v in terms.items() if k in penalties},
            representation=representation,
        )

    def features(self, view: DomainView) -> Tensor:
        """A domain's shared features, or a config error when the architecture has no single representation."""
        if view.features is None:
            raise ConfigError(
                f"method '{self.name}' needs a model with one shared representation (model.architecture: "
                "hard_sharing)"
            )
        return view.features
