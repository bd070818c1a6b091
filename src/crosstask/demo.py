"""``crosstask demo``: transfer and multi-task learning on scikit-learn's embedded 8x8 digits.

Transfer: the source domain is the digits as they are; the target domain is other digits rotated by 20
degrees with pixel noise. The 1797 images are split once (``split_seed`` 0) into disjoint parts: source
training images (``train``), the pool the few target labels are drawn from (``val``), and test images
(``test``, shown unshifted as the source test set and shifted as the target test set). With 5 target
labels per class we compare source-only training, training on the target labels alone, joint training
``λ_s·L_source + λ_t·L_target`` (the static weighting), and fine-tuning the source model.

Multi-task: one network for digit, parity and >= 5 against one network per task, same budget.

Every run is an ordinary crosstask run; the config.yaml in its run directory is the YAML equivalent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crosstask.experiment import RunResult, run
from crosstask.tables import print_table

TARGET_SHIFT = {"rotate": 20.0, "noise": 0.1}
LABELS_PER_CLASS = 5
TRANSFER_SPLIT = {"val_fraction": 0.4, "test_fraction": 0.2}  # train 40 % / val 40 % / test 20 %
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


class _Interrupted(Exception):
    """A sub-run was stopped by Ctrl-C/SIGTERM: the demo stops there."""


def run_demo(output_dir: Path, console: Console) -> dict[str, RunResult]:
    """Run the demo's experiments and print one results table; returns the runs by name.

    A run stopped by Ctrl-C or SIGTERM (summary status ``interrupted``) ends the demo: the table shows the
    runs that finished, and the interrupted run is among the returned ones."""
    started = time.perf_counter()
    output_dir = Path(output_dir) / time.strftime("demo-%Y%m%d-%H%M%S")
    runs: dict[str, RunResult] = {}

    def go(config: dict) -> RunResult:
        with console.status(f"training {config['name']} ..."):
            result = run(config)
        runs[config["name"]] = result
        if result.summary.get("status") == "interrupted":
            raise _Interrupted(config["name"])
        return result

    def stopped(during: str, unfinished: str | None = None) -> None:
        done = {name: result for name, result in runs.items() if name != unfinished}
        if done:
            print_table(results_table(done), console)
        console.print(
            f"demo interrupted {during}; finished: {', '.join(done) or 'nothing'}. Run directories: {output_dir}",
            highlight=False,
        )

    try:
        _run_all(go, output_dir)
    except _Interrupted as interrupted:
        name = str(interrupted)
        stopped(f"during '{name}' at step {runs[name].summary.get('step')}", name)
        return runs
    except KeyboardInterrupt:  # between two runs' training loops: the CLI exits with 130
        stopped("between runs")
        raise
    print_table(results_table(runs), console)
    console.print(
        f"run directories: {output_dir}  (total {time.perf_counter() - started:.0f} s)", highlight=False
    )
    return runs


def _run_all(go: Callable[[dict], RunResult], output_dir: Path) -> None:
    """The demo's runs, in order (``go`` trains one)."""
    source = _digits("train", **TRANSFER_SPLIT)
    few_target = _digits(
        "val", **TRANSFER_SPLIT, **TARGET_SHIFT, per_class=LABELS_PER_CLASS, per_class_label="digit"
    )
    few_target["batch_size"] = 32
    source_test = _digits("test", **TRANSFER_SPLIT)
    target_test = _digits("test", **TRANSFER_SPLIT, **TARGET_SHIFT)

    # transfer: with 5 target labels per class
    source_only = go(
        _experiment(
            "source_only",
            output_dir,
            [DIGIT],
            {"source": source},
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
            {"source": source, "target": few_target},
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
            model={"init_from": str(source_only.run_dir)},
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


def results_table(runs: dict[str, RunResult]) -> Table:
    """One table: the transfer comparison (digit accuracy) and the multi-task comparison (three tasks)."""

    def acc(run_name: str, key: str) -> str:
        value = runs[run_name].metrics.get(key) if run_name in runs else None
        return "" if value is None else f"{value:.1f}"

    shift = ", ".join(f"{k} {v:g}" for k, v in TARGET_SHIFT.items())
    few = f"{LABELS_PER_CLASS}/class"
    table = Table(title="crosstask demo: scikit-learn digits, test accuracy %", title_justify="left")
    for column, justify in (
        ("", "left"),
        ("training", "left"),
        ("test set", "left"),
        ("digit", "right"),
        ("parity", "right"),
        ("ge5", "right"),
    ):
        table.add_column(column, justify=justify)
    rows = [
        ("transfer", "source only", "source", acc("source_only", "source_test/digit/accuracy")),
        ("", "source only", "target", acc("source_only", "target_test/digit/accuracy")),
        ("", f"target labels only ({few})", "target", acc("target_only", "target_test/digit/accuracy")),
        ("", f"source + target ({few})", "target", acc("joint", "target_test/digit/accuracy")),
        ("", f"fine-tuned source ({few})", "target", acc("fine_tuned", "target_test/digit/accuracy")),
    ]
    for i, row in enumerate(rows):
        table.add_row(*row, "", "", end_section=i == len(rows) - 1)
    names = [t["name"] for t in TASKS]
    table.add_row(
        "multi-task", "one model per task", "test", *(acc(f"single_{n}", f"test/{n}/accuracy") for n in names)
    )
    table.add_row(
        "", "one model, three tasks", "test", *(acc("multitask", f"test/{n}/accuracy") for n in names)
    )
    table.caption = f"target = digits with {shift}; {LABELS_PER_CLASS} target labels per class"
    return table
