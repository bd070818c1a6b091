"""The validator contract and the data it reads.

At every evaluation the Trainer collects, once for all validators, the model's outputs (logits of the
adapted task) and shared features on a fixed subset of the source validation domain (with its labels) and
of the target domain (inputs only), and asks each validator for a score. Each validator says whether
higher is better; the Trainer keeps, per validator, the step with the best score, the metrics evaluated at
that step (what the choice scores where target labels exist), and ``checkpoints/best_<validator>.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from crosstask.data.domains import Domain
from crosstask.data.inputs import as_inputs, to_device
from crosstask.data.streams import LabelReader, iterate_batches
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.models.model import MultiTaskModel
from crosstask.registry import ComponentConfig


@dataclass
class Outputs:
    """Logits of the adapted task, shared features and (source only) labels, on the CPU in float32."""

    logits: Tensor
    features: Tensor
    labels: Tensor | None = None


@dataclass
class ValidationData:
    source: Outputs | None
    target: Outputs
    task: Task


class Validator:
    """Base class: :meth:`score` maps the model's outputs to one number; ``higher_is_better`` orders them."""

    higher_is_better: ClassVar[bool] = True
    needs_source: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def score(self, data: ValidationData) -> float:
        raise NotImplementedError


def fixed_subset(dataset: Dataset, max_samples: int) -> Dataset:
    """At most ``max_samples`` samples, the same ones at every evaluation (a seeded permutation)."""
    n = len(dataset)
    if n <= max_samples:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples]
    return Subset(dataset, sorted(order.tolist()))


class Validation:
    """Scores a model with several validators on a source validation domain and a target domain.

    Args:
        validators: the validators.
        task: the adapted classification task.
        target: the target domain (its labels, if any, are not read).
        source: the labeled source validation domain (needed by ``source_accuracy`` and ``dev``).
        max_samples: at most this many samples per domain, the same ones each time (SND is quadratic).
    """

    def __init__(
        self,
        validators: list[Validator],
        task: Task,
        target: Domain,
        source: Domain | None = None,
        *,
        max_samples: int = 2000,
        device: torch.device | str = "cpu",
        batch_size: int = 512,
    ):
        self.validators = validators
        self.task = task
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.target = fixed_subset(target.dataset, max_samples)
        self.source = fixed_subset(source.dataset, max_samples) if source is not None else None
        self.reader = LabelReader(source, [task], labeled=True) if source is not None else None

    @torch.no_grad()
    def scores(self, model: MultiTaskModel) -> dict[str, float]:
        """``{validator name: score}`` for the model in eval mode."""
        was_training = model.training
        model.eval()
        try:
            data = ValidationData(
                self._collect(model, self.source, self.reader) if self.source is not None else None,
                self._collect(model, self.target, None),
                self.task,
            )
        finally:
            model.train(was_training)
        return {v.name: v.score(data) for v in self.validators}

    def _collect(self, model: MultiTaskModel, dataset: Dataset, reader: LabelReader | None) -> Outputs:
        logits, features, labels = [], [], []
        for batch in iterate_batches(dataset, self.batch_size):
            x, y = (batch[0], batch[1]) if isinstance(batch, tuple | list) else (batch, None)
            output = model.forward_all(to_device(as_inputs(x), self.device))
            if output.shared is None:
                raise ConfigError(
                    "train.validation needs a model with one shared representation (model.architecture: "
                    "hard_sharing)"
                )
            logits.append(output.outputs[self.task.name].float().cpu())
            features.append(output.shared.float().flatten(1).cpu())
            if reader is not None:
                labels.append(torch.as_tensor(reader(y)[self.task.name]).long().cpu())
        return Outputs(torch.cat(logits), torch.cat(features), torch.cat(labels) if labels else None)
