"""Transferability scores against the accuracy they are meant to predict, on a model zoo made by crosstask
(part of the ``diagnostics`` suite).

The zoo: one MLP per variant of scikit-learn's digits (rotations, inversion, noise, blur: ``SOURCES``),
trained on the digit task. The target: digits rotated by 45° and blurred, with ``SHOTS`` labels per class.
Each source model is scored on the target's labeled samples before training (LogME and H-score on its
shared features, LEEP and NCE on its softmax), then fine-tuned on them (all layers, the digit head kept)
and tested on the target's test split. The record per score is the rank correlation between the score
and the fine-tuned accuracy over the zoo: Kendall's τ and the weighted τ the LogME paper reports (You et
al. 2021, hyperbolic weights on the top ranks). Several seeds: the fine-tuning seed (the zoo is fixed).
"""

from __future__ import annotations

import logging
import tempfile
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

SOURCES: dict[str, dict[str, Any]] = {
    "plain": {},
    "rotate15": {"rotate": 15},
    "rotate30": {"rotate": 30},
    "rotate60": {"rotate": 60},
    "rotate90": {"rotate": 90},
    "rotate180": {"rotate": 180},
    "inverted": {"invert": True},
    "noisy": {"noise": 0.3},
    "blurred": {"blur": 1.0},
}
TARGET = {"rotate": 45, "blur": 0.5}
SHOTS = 5
SCORES = ["logme", "h_score", "leep", "nce"]
TASK = [ct.Task("digit", num_classes=10)]
log = logging.getLogger(__name__)


def digits(split: str, **variant: Any) -> Any:
    return load_dataset({"name": "digits", "split": split, **variant})


def train_source(name: str, variant: dict[str, Any], output: Path) -> Path:
    model = ct.TransferModel({"name": "mlp", "hidden": [64, 32]}, TASK, input_shape=(1, 8, 8))
    result = ct.fit(
        model,
        method="erm",
        source=digits("train", **variant),
        steps=400,
        batch_size=64,
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
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
    out |= transferability(["leep", "nce"], labels=labels, source_probabilities=probabilities)
    return out


def fine_tuned_accuracy(run_dir: Path, target: Any, test: Any, seed: int, output: Path) -> float:
    model = ct.TransferModel.from_run(run_dir, tasks=TASK)
    result = ct.fit(
        model,
        method="erm",
        source=target,
        eval={"test": test},
        steps=150,
        batch_size=25,
        optim={"name": "sgd", "lr": 0.02, "momentum": 0.9},
        name=f"finetune_{run_dir.name}_seed{seed}",
        output_dir=output,
        seed=seed,
    )
    return result.metrics["test/digit/accuracy"]  # in %


def zoo_records(seeds: list[int]) -> list[Record]:
    from scipy.stats import kendalltau, weightedtau

    target = digits("train", per_class=SHOTS, per_class_label="digit", **TARGET)
    test = digits("test", **TARGET)
    taus: dict[str, list[float]] = {s: [] for s in SCORES}
    weighted: dict[str, list[float]] = {s: [] for s in SCORES}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="crosstask-zoo-") as tmp:
        output = Path(tmp)
        zoo = {name: train_source(name, variant, output) for name, variant in SOURCES.items()}
        scored = {name: scores_of(path, target) for name, path in zoo.items()}
        for seed in seeds:
            accuracy = {
                name: fine_tuned_accuracy(path, target, test, seed, output) for name, path in zoo.items()
            }
            log.info("seed %d fine-tuned accuracy: %s", seed, {k: round(v, 1) for k, v in accuracy.items()})
            names = list(zoo)
            acc = np.array([accuracy[n] for n in names])
            for score in SCORES:
                values = np.array([scored[n][score] for n in names])
                taus[score].append(float(kendalltau(values, acc).statistic))
                weighted[score].append(float(weightedtau(values, acc).statistic))
            notes[seed] = ", ".join(f"{n} {accuracy[n]:.1f}" for n in names)
    records = []
    for score in SCORES:
        detail = "; ".join(f"{n}: {scored[n][score]:.3f}" for n in zoo)
        records.append(
            Record.measured(
                "transferability/digits_zoo",
                score,
                "Kendall tau (score vs fine-tuned accuracy)",
                taus[score],
                seeds,
                True,
                f"{len(zoo)} source models; scores {detail}",
            )
        )
        records.append(
            Record.measured(
                "transferability/digits_zoo",
                score,
                "weighted tau (score vs fine-tuned accuracy)",
                weighted[score],
                seeds,
                True,
                "fine-tuned accuracy per seed: " + " | ".join(notes.values()),
            )
        )
    return records
