"""LwF: Li & Hoiem 2016, "Learning without Forgetting", ECCV; the old-task loss:

    L_old = λ_o · Σ_tasks KL(softmax(y_o / T) ‖ softmax(ŷ_o / T)),   T = 2

``y_o`` are the starting model's outputs (its heads, frozen) on the new training data, ``ŷ_o`` the current
model's outputs for the same heads. The paper writes the cross-entropy ``−Σ y'_o log ŷ'_o``; the KL divergence
differs from it by the entropy of the fixed targets, so the gradients are the same and the loss is 0 when the
model equals the old one. Batch mean, no T² factor (as in the paper); the mean over the training streams.

The distilled tasks keep their behaviour of the start. By default they are the paper's **old tasks**: every
classification task of the model that no training stream of the run labels. Put the old and the new tasks
in the model's ``tasks`` (the old heads loaded by ``model.init_from``) and label only the new task in
``data.train`` (a domain's ``tasks:``): the new task trains on its labels while LwF keeps the old heads'
outputs. ``tasks: [...]`` names the distilled tasks explicitly (a trained head too, if you want to keep it
near its start). The penalty is named ``lwf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.errors import ConfigError
from crosstask.finetune.base import Regularizer, StreamForward
from crosstask.registry import REGULARIZERS, ComponentConfig


class LwFConfig(ComponentConfig):
    lambda_old: float = Field(default=1.0, ge=0.0, description="λ_o: weight of the old tasks' outputs")
    temperature: float = Field(default=2.0, gt=0.0, description="T: softens both distributions")
    tasks: list[str] | None = Field(
        default=None,
        description="tasks whose outputs are kept (default: the old tasks: classification tasks no training "
        "stream labels)",
    )


def distillation(current: Tensor, old: Tensor, temperature: float) -> Tensor:
    """KL(softmax(old / T) ‖ softmax(current / T)), averaged over the batch."""
    log_current = F.log_softmax(current.float() / temperature, dim=-1)
    log_old = F.log_softmax(old.float() / temperature, dim=-1)
    return F.kl_div(log_current, log_old, reduction="batchmean", log_target=True)


@REGULARIZERS.register("lwf", config=LwFConfig)
class LwF(Regularizer):
    """Distillation of the starting model's outputs on the new data, T = 2 (Li & Hoiem 2016, ECCV)."""

    config: LwFConfig

    def __init__(self, config: LwFConfig, model, start):
        super().__init__(config, model, start)
        kinds = {t.name: t.kind for t in model.tasks}
        self.tasks: list[str] = []
        if config.tasks is not None:
            unknown = [t for t in config.tasks if t not in kinds]
            if unknown:
                raise ConfigError(
                    f"method.regularizers.lwf.tasks names {unknown}, which the model does not have "
                    f"({', '.join(kinds)})"
                )
            wrong = [t for t in config.tasks if kinds[t] != "classification"]
            if wrong:
                raise ConfigError(
                    f"method.regularizers.lwf.tasks: {wrong} are not classification tasks; LwF distils class "
                    "probabilities"
                )
            self.tasks = list(config.tasks)

    def setup(self, trained_tasks) -> None:
        if self.config.tasks is not None:
            return
        kinds = {t.name: t.kind for t in self.model.tasks}
        self.tasks = [n for n, kind in kinds.items() if kind == "classification" and n not in trained_tasks]
        if not self.tasks:
            raise ConfigError(
                "regularizer lwf keeps the outputs of the old tasks (classification tasks that no training stream "
                f"labels), but the training streams label every one ({', '.join(kinds)}). Add the old tasks to "
                "the model's tasks and label only the new one in data.train (a domain's tasks: [...]), or name "
                "the tasks to distil: method.regularizers: [{name: lwf, tasks: [...]}]"
            )

    def penalty(self, forwards: Sequence[StreamForward]) -> Tensor:
        total = 0.0
        for forward in forwards:
            with torch.no_grad():
                old = self.start(forward.x)
            for task in self.tasks:
                total = total + distillation(forward.output.outputs[task], old[task], self.config.temperature)
        return self.config.lambda_old * total / len(forwards)
