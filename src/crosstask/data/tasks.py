"""A task: what a head predicts, how it is trained and how it is scored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from crosstask.registry import LOSSES, METRICS, StrictModel

TaskKind = Literal["classification", "multilabel", "regression"]

DEFAULT_LOSS: dict[str, str] = {"classification": "cross_entropy", "multilabel": "bce", "regression": "mse"}
DEFAULT_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy"],
    "multilabel": ["f1_micro", "subset_accuracy"],
    "regression": ["mse", "mae"],
}


class Task(StrictModel):
    """One prediction task.

    Args:
        name: unique task name; also the default label key in ``(x, {label: y})`` samples.
        kind: ``classification`` (one class out of ``num_classes``), ``multilabel`` (``outputs`` independent
            binary labels) or ``regression`` (``outputs`` real values).
        num_classes: number of classes (classification only).
        outputs: number of outputs (multilabel and regression; regression defaults to 1).
        loss: a registered loss (``crosstask list loss``); defaults by kind.
        metrics: registered metrics (``crosstask list metric``); the first is the task's main metric.
        label: the label key to read from samples whose label is a dict; defaults to ``name``.

    Missing labels are allowed: ``-1`` for a class index, ``NaN`` for multilabel and regression targets.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$", description="letters, digits, '_' and '-'")
    kind: TaskKind = "classification"
    num_classes: int | None = Field(default=None, ge=2)
    outputs: int | None = Field(default=None, ge=1)
    loss: str | None = None
    metrics: list[str] | None = None
    label: str | None = None

    def __init__(self, name: str | None = None, kind: TaskKind | None = None, /, **data: Any):
        if name is not None:
            data["name"] = name
        if kind is not None:
            data["kind"] = kind
        super().__init__(**data)

    @model_validator(mode="after")
    def _complete(self) -> Task:
        if self.kind == "classification":
            if self.num_classes is None:
                raise ValueError(f"task '{self.name}': a classification task needs num_classes (>= 2)")
            if self.outputs not in (None, self.num_classes):
                raise ValueError(f"task '{self.name}': set num_classes, not outputs, for classification")
        elif self.num_classes is not None:
            raise ValueError(f"task '{self.name}': num_classes is only for classification; use outputs")
        elif self.kind == "multilabel" and self.outputs is None:
            raise ValueError(f"task '{self.name}': a multilabel task needs outputs (the number of labels)")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(LOSSES.unknown_message(self.loss))
        for metric in self.metrics or []:
            if metric not in METRICS:
                raise ValueError(METRICS.unknown_message(metric))
            kinds = METRICS.get(metric).obj.kinds
            if self.kind not in kinds:
                raise ValueError(
                    f"metric '{metric}' does not apply to {self.kind} (it scores {', '.join(kinds)})"
                )
        if self.metrics is not None and not self.metrics:
            raise ValueError(f"task '{self.name}': metrics must name at least one metric")
        return self

    @property
    def num_outputs(self) -> int:
        """Width of the head's output layer."""
        if self.kind == "classification":
            return int(self.num_classes)  # type: ignore[arg-type]
        return self.outputs or 1

    @property
    def loss_name(self) -> str:
        return self.loss or DEFAULT_LOSS[self.kind]

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics or DEFAULT_METRICS[self.kind])

    @property
    def main_metric(self) -> str:
        return self.metric_names[0]

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger main metric is better (accuracy: yes; mse: no)."""
        return METRICS.get(self.main_metric).obj.higher_is_better

    @property
    def label_key(self) -> str:
        return self.label or self.name
