"""Transferability scores against the accuracy they are meant to predict, on model zoos made by crosstask
(part of the ``diagnostics`` suite).

A zoo (``ZOOS``) is a set of source models, each trained on one variant of a dataset (rotations, inversion,
noise, blur, fewer samples), and a target with a few labels per class. Each source model is scored on the
target's labeled samples before training (LogME and H-score on its shared features, also H-score with
Ledoit-Wolf shrinkage, which a covariance estimated from fewer samples than features needs; LEEP and NCE on its
softmax), then fine-tuned on them (all layers, the digit head kept) and tested on the target's test split.
The record per score is the rank correlation between the score and the fine-tuned accuracy over the zoo:
Kendall's τ and the weighted τ the LogME paper reports (You et al. 2021, hyperbolic weights on the top
ranks). Several seeds: the fine-tuning seed (the zoo is trained once, seed 0).

- ``digits_zoo``: MLPs on nine variants of scikit-learn's digits; target: digits rotated by 45° and blurred,
  5 labels per class (no data root needed).
- ``mnist_usps_zoo``: LeNets on nine variants of MNIST; target: USPS (real data, another dataset), 10 labels
  per class, tested on USPS's 2007 test images. Left out when the data root lacks MNIST or USPS.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import crosstask as ct
from benchmarks.records import Record
from crosstask.analysis.interpret import collect
from crosstask.analysis.transferability import transferability
from crosstask.data.datasets.base import load_dataset
from crosstask.data.domains import Domain
from crosstask.errors import DataError

SCORES = ["logme", "h_score", "h_score_shrunk", "leep", "nce"]  # h_score_shrunk: shrinkage "auto"
TASK = [ct.Task("digit", num_classes=10)]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Zoo:
    """Source models (one dataset config each), a few-label target, and how to train and fine-tune."""

    dataset: str
    backbone: dict[str, Any]
    input_shape: tuple[int, int, int]
    sources: dict[str, dict[str, Any]]
    target: dict[str, Any]
    shots: int
    source_steps: int
    finetune_steps: int
    source_optim: dict[str, Any] = field(default_factory=lambda: {"name": "sgd", "lr": 0.05, "momentum": 0.9})
    finetune_optim: dict[str, Any] = field(
        default_factory=lambda: {"name": "sgd", "lr": 0.02, "momentum": 0.9}
    )

    def load(self, config: dict[str, Any], split: str, **extra: Any) -> Any:
        return load_dataset({"name": self.dataset, "split": split, **config, **extra})


ZOOS: dict[str, Zoo] = {
    "digits_zoo": Zoo(
        dataset="digits",
        backbone={"name": "mlp", "hidden": [64, 32]},
        input_shape=(1, 8, 8),
        sources={
            "plain": {},
            "rotate15": {"rotate": 15},
            "rotate30": {"rotate": 30},
            "rotate60": {"rotate": 60},
            "rotate90": {"rotate": 90},
            "rotate180": {"rotate": 180},
            "inverted": {"invert": True},
            "noisy": {"noise": 0.3},
            "blurred": {"blur": 1.0},
        },
        target={"name": "digits", "rotate": 45, "blur": 0.5, "per_class_label": "digit"},
        shots=5,
        source_steps=400,
        finetune_steps=150,
    ),
    "mnist_usps_zoo": Zoo(
        dataset="mnist",
        backbone={"name": "lenet"},
        input_shape=(1, 28, 28),
        sources={
            "plain": {},
            "small": {"limit": 600},
            "rotate30": {"rotate": 30},
            "rotate60": {"rotate": 60},
            "rotate90": {"rotate": 90},
            "rotate180": {"rotate": 180},
            "inverted": {"invert": True},
            "noisy": {"noise": 0.5},
            "blurred": {"blur": 1.5},
        },
        target={"name": "usps"},
        shots=10,
        source_steps=1000,
        finetune_steps=200,
        source_optim={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        finetune_optim={"name": "sgd", "lr": 0.01, "momentum": 0.9},
    ),
}


def train_source(zoo: Zoo, name: str, variant: dict[str, Any], output: Path) -> Path:
    torch.manual_seed(0)  # the initial weights too: fit's seed applies from training on
    model = ct.TransferModel(zoo.backbone, TASK, input_shape=zoo.input_shape)
    result = ct.fit(
        model,
        method="erm",
        source=zoo.load(variant, "train"),
        steps=zoo.source_steps,
        batch_size=64,
        optim=zoo.source_optim,
        name=name,
        output_dir=output,
        seed=0,
    )
    return result.run_dir


def scores_of(run_dir: Path, target: Any) -> dict[str, float]:
    model = ct.TransferModel.from_run(run_dir).eval()
    seen = collect(model, Domain("target", target))
    probabilities = torch.softmax(seen.outputs["digit"], 1)
    labels = seen.labels["digit"]
    out = transferability(["logme", "h_score"], features=seen.features, labels=labels)
    out["h_score_shrunk"] = transferability("h_score", seen.features, labels, shrinkage="auto")["h_score"]
    out |= transferability(["leep", "nce"], labels=labels, source_probabilities=probabilities)
    return out


def fine_tuned_accuracy(zoo: Zoo, run_dir: Path, target: Any, test: Any, seed: int, output: Path) -> float:
    model = ct.TransferModel.from_run(run_dir, tasks=TASK)
    result = ct.fit(
        model,
        method="erm",
        source=target,
        eval={"test": test},
        steps=zoo.finetune_steps,
        batch_size=25,
        optim=zoo.finetune_optim,
        name=f"finetune_{run_dir.name}_seed{seed}",
        output_dir=output,
        seed=seed,
    )
    return result.metrics["test/digit/accuracy"]  # in %


def zoo_records(seeds: list[int], name: str = "digits_zoo") -> list[Record]:
    from scipy.stats import kendalltau, weightedtau

    zoo = ZOOS[name]
    try:
        target = load_dataset({**zoo.target, "split": "train", "per_class": zoo.shots})
        test = load_dataset({**zoo.target, "split": "test"})
        zoo.load({"limit": 1}, "test")  # the sources' data is there too
    except DataError as exc:
        log.warning("%s left out: %s", name, exc)
        return []
    taus: dict[str, list[float]] = {s: [] for s in SCORES}
    weighted: dict[str, list[float]] = {s: [] for s in SCORES}
    notes: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="crosstask-zoo-") as tmp:
        output = Path(tmp)
        models = {
            source: train_source(zoo, source, variant, output) for source, variant in zoo.sources.items()
        }
        scored = {source: scores_of(path, target) for source, path in models.items()}
        for seed in seeds:
            accuracy = {
                source: fine_tuned_accuracy(zoo, path, target, test, seed, output)
                for source, path in models.items()
            }
            log.info(
                "%s seed %d fine-tuned accuracy: %s",
                name,
                seed,
                {k: round(v, 1) for k, v in accuracy.items()},
            )
            names = list(models)
            acc = np.array([accuracy[n] for n in names])
            for score in SCORES:
                values = np.array([scored[n][score] for n in names])
                taus[score].append(float(kendalltau(values, acc).statistic))
                weighted[score].append(float(weightedtau(values, acc).statistic))
            notes[seed] = ", ".join(f"{n} {accuracy[n]:.1f}" for n in names)
    records = []
    for score in SCORES:
        detail = "; ".join(f"{n}: {scored[n][score]:.3f}" for n in models)
        records.append(
            Record.measured(
                f"transferability/{name}",
                score,
                "Kendall tau (score vs fine-tuned accuracy)",
                taus[score],
                seeds,
                True,
                f"{len(models)} source models; scores {detail}",
            )
        )
        records.append(
            Record.measured(
                f"transferability/{name}",
                score,
                "weighted tau (score vs fine-tuned accuracy)",
                weighted[score],
                seeds,
                True,
                "fine-tuned accuracy per seed: " + " | ".join(notes.values()),
            )
        )
    return records
