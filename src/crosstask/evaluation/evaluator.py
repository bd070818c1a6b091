"""Evaluation per domain and per task: ``{"<domain>/<task>/<metric>": value}``.

A domain read as few-shot episodes (``episodes:``) is scored on episodes instead (mean query accuracy and its
95 % interval, :mod:`crosstask.evaluation.episodes`), with the method's episode procedure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from crosstask.data.domains import Domain
from crosstask.data.episodes import episode_sampler
from crosstask.data.inputs import as_inputs, to_device
from crosstask.data.streams import LabelReader, iterate_batches
from crosstask.data.tasks import Task
from crosstask.evaluation.episodes import (
    EPISODE_METRICS,
    EpisodePredictor,
    evaluate_episodes,
    nearest_prototype,
)
from crosstask.models.model import MultiTaskModel
from crosstask.registry import METRICS

Predictor = Callable[[Any], dict[str, Tensor]]


class Evaluator:
    """Scores a model on labeled evaluation domains with each task's metrics."""

    def __init__(
        self,
        domains: Mapping[str, Domain],
        tasks: list[Task],
        *,
        batch_size: int = 512,
        device: torch.device | str = "cpu",
        bf16: bool = False,
        num_workers: int = 0,
    ):
        self.domains = {name: d for name, d in domains.items() if d.episodes is None}
        self.tasks = {t.name: t for t in tasks}
        self.episodic = {
            name: episode_sampler(d, tasks, seed=0) for name, d in domains.items() if d.episodes is not None
        }
        self.readers = {name: LabelReader(d, tasks, labeled=True) for name, d in self.domains.items()}
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.bf16 = bf16
        self.num_workers = num_workers

    def metric_keys(self) -> list[str]:
        keys = [
            f"{d}/{t}/{m}"
            for d, r in self.readers.items()
            for t in r.keys
            for m in self.tasks[t].metric_names
        ]
        return keys + [
            f"{d}/{task}/{m}"
            for d, (task, _) in self.episodic.items()
            for m in EPISODE_METRICS[self.tasks[task].kind]
        ]

    @torch.no_grad()
    def predict(
        self, model: MultiTaskModel, domain: str, predictor: Predictor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Outputs and targets by task over a whole evaluation domain (on the CPU). ``predictor`` replaces
        ``model(x)``: a method's test-time procedure (adaptation on each batch, say)."""
        forward = predictor or model
        reader = self.readers[domain]
        outputs: dict[str, list[Tensor]] = {t: [] for t in reader.keys}
        targets: dict[str, list[Tensor]] = {t: [] for t in reader.keys}
        for x, y in iterate_batches(self.domains[domain].dataset, self.batch_size, self.num_workers):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = forward(to_device(as_inputs(x), self.device))
            for task, target in reader(y).items():
                outputs[task].append(out[task].float().cpu())
                targets[task].append(torch.as_tensor(target).cpu())
        return {t: torch.cat(v) for t, v in outputs.items()}, {t: torch.cat(v) for t, v in targets.items()}

    def evaluate(
        self,
        model: MultiTaskModel,
        predictor: Predictor | None = None,
        episode_predictor: EpisodePredictor | None = None,
    ) -> dict[str, float]:
        """Every metric of every task on every domain; ``predictor`` as in :meth:`predict`;
        ``episode_predictor`` scores the episodic domains (default: the nearest prototype of the features)."""
        was_training = model.training
        model.eval()
        try:
            metrics = {}
            for domain in self.domains:
                outputs, targets = self.predict(model, domain, predictor)
                for task, output in outputs.items():
                    for metric in self.tasks[task].metric_names:
                        metrics[f"{domain}/{task}/{metric}"] = METRICS.get(metric).obj(output, targets[task])
            for domain, (task, sampler) in self.episodic.items():
                scores = evaluate_episodes(
                    episode_predictor or nearest_prototype(model),
                    sampler,
                    sampler.count,
                    self.device,
                    self.tasks[task].kind,
                )
                metrics.update({f"{domain}/{task}/{name}": value for name, value in scores.items()})
            return metrics
        finally:
            model.train(was_training)
