"""``crosstask demo``: transfer and multi-task learning on scikit-learn's embedded 8x8 digits.

Transfer: the source domain is the digits as they are; the target domain is the digits rotated by 20
degrees with pixel noise (its test images never appear in any training split). With 5 target labels per
class we compare source-only training, training on the target labels alone, joint training
``λ_s·L_source + λ_t·L_target`` (the static weighting), and fine-tuning the source model.

Multi-task: one network for digit, parity and >= 5 against one network per task, same budget.

Every run is an ordinary crosstask run; its config.yaml in the run directory is the YAML equivalent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crosstask.experiment import RunResult, run

TARGET_SHIFT = {"rotate": 20.0, "noise": 0.1}
LABELS_PER_CLASS = 5
DIGIT = {"name": "digit", "kind": "classification", "num_classes": 10}
TASKS = [
    DIGIT,
    {"name": "parity", "kind": "classification", "num_classes": 2},
    {"name": "ge5", "kind": "classification", "num_classes": 2},
]


def _experiment(
    name: str, output_dir: Path, tasks: list[dict], streams: dict, evaluate: dict, **extra: Any
) -> dict:
    config = {
        "name": name,
        "seed": 0,
        "output_dir": str(output_dir),
        "tasks": tasks,
        "data": {"train": streams, "eval": evaluate},
        "model": {"backbone": {"name": "mlp", "hidden": [128, 64]}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"steps": 400, "batch_size": 64, "log_every": 100},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def _digits(split: str, **params: Any) -> dict:
    return {"dataset": {"name": "digits", "split": split, **params}}


def run_demo(output_dir: Path, console: Console) -> dict[str, RunResult]:
    """Run the demo's experiments and print one results table; returns the runs by name."""
    started = time.perf_counter()
    output_dir = Path(output_dir) / time.strftime("demo-%Y%m%d-%H%M%S")
    source_test, target_test = _digits("test"), _digits("test", **TARGET_SHIFT)
    few_target = _digits(
        "train", **TARGET_SHIFT, per_class=LABELS_PER_CLASS, per_class_label="digit", split_seed=1
    )
    few_target["batch_size"] = 32
    runs: dict[str, RunResult] = {}

    def go(config: dict) -> RunResult:
        with console.status(f"training {config['name']} ..."):
            runs[config["name"]] = result = run(config)
        return result

    # transfer: source-only, target-only and fine-tuning on a few target labels
    go(
        _experiment(
            "source_only",
            output_dir,
            [DIGIT],
            {"source": _digits("train")},
            {"source_test": source_test, "target_test": target_test},
        )
    )
    go(
        _experiment(
            "target_only",
            output_dir,
            [DIGIT],
            {"target": few_target},
            {"target_test": target_test},
            train={"steps": 200},
        )
    )
    go(
        _experiment(
            "joint",
            output_dir,
            [DIGIT],
            {"source": _digits("train"), "target": few_target},
            {"target_test": target_test},
            weighting={"name": "static", "weights": {"source": 1.0, "target": 1.0}},
        )
    )
    go(
        _experiment(
            "fine_tuned",
            output_dir,
            [DIGIT],
            {"target": few_target},
            {"target_test": target_test},
            model={"init_from": str(runs["source_only"].run_dir)},
            optim={"lr": 0.02, "backbone_lr_mult": 0.5},
            train={"steps": 200},
        )
    )
    # multi-task: one network for three tasks vs one network per task
    go(
        _experiment(
            "multitask",
            output_dir,
            TASKS,
            {"train": _digits("train")},
            {"test": _digits("test")},
            method="multitask",
        )
    )
    for task in TASKS:
        go(
            _experiment(
                f"single_{task['name']}",
                output_dir,
                [task],
                {"train": _digits("train")},
                {"test": _digits("test")},
            )
        )

    for table in _results_tables(runs):
        console.print(table)
    console.print(f"run directories: {output_dir}  (total {time.perf_counter() - started:.0f} s)")
    return runs


def _results_tables(runs: dict[str, RunResult]) -> list[Table]:
    def acc(run_name: str, key: str) -> str:
        value = runs[run_name].metrics.get(key)
        return "-" if value is None else f"{value:.1f}"

    shift = ", ".join(f"{k} {v:g}" for k, v in TARGET_SHIFT.items())
    transfer = Table(title=f"Transfer: digits -> digits with {shift} (accuracy %)", title_justify="left")
    for column in ("training", "source test", "target test"):
        transfer.add_column(column, justify="left" if column == "training" else "right")
    few = f"{LABELS_PER_CLASS} target labels/class"
    transfer.add_row(
        "source only (all source labels)",
        acc("source_only", "source_test/digit/accuracy"),
        acc("source_only", "target_test/digit/accuracy"),
    )
    transfer.add_row(f"target only ({few})", "-", acc("target_only", "target_test/digit/accuracy"))
    transfer.add_row(f"joint: L_source + L_target ({few})", "-", acc("joint", "target_test/digit/accuracy"))
    transfer.add_row(f"fine-tuned source model ({few})", "-", acc("fine_tuned", "target_test/digit/accuracy"))

    multitask = Table(
        title="Multi-task: one MLP for three tasks vs one MLP per task (accuracy %)", title_justify="left"
    )
    for column in ("task", "single-task", "multi-task"):
        multitask.add_column(column, justify="left" if column == "task" else "right")
    for task in TASKS:
        name = task["name"]
        multitask.add_row(
            name, acc(f"single_{name}", f"test/{name}/accuracy"), acc("multitask", f"test/{name}/accuracy")
        )
    return [transfer, multitask]
