"""Loss weightings of one multi-task config against single-task baselines trained by the same tool from the same
config (``crosstask.baselines.single_task_config``): each task's test score and Δm% per weighting.

Shared by the multi-task suites (MultiMNIST, Amazon reviews). Runs go through :func:`benchmarks.runs.run_experiment`,
so a suite split across processes with ``--methods`` reuses the finished runs of the same commit and config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import crosstask as ct
from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment
from crosstask.baselines import single_task_config
from crosstask.config import load_config
from crosstask.evaluation.delta_m import delta_m
from crosstask.registry import METRICS

DELTA_M = "Δm% vs our single-task (lower is better)"
log = logging.getLogger(__name__)


def label(task: str, metric: str) -> str:
    return f"{task} {metric}" + (" %" if metric == "accuracy" else "")


def test_metrics(result: ct.RunResult) -> dict[str, float]:
    return {k: v for k, v in result.metrics.items() if k.startswith("test/")}


def compare_weightings(
    benchmark: str,
    config_path: Path,
    scores: Mapping[str, str],
    weightings: Mapping[str, dict],
    options: dict,
    extra: list[str],
    output: str,
    protocol: str | None = None,
) -> list[Record]:
    """Single-task runs of every task in ``scores`` (task -> the metric its records report, read from the
    ``test`` evaluation set), then one multi-task run per weighting (label -> weighting config), for each
    seed. ``extra``: overrides applied to every run (``--quick``'s shorter training)."""
    seeds, reuse = options["seeds"], options.get("reuse_runs", False)
    better = {task: METRICS.get(metric).obj.higher_is_better for task, metric in scores.items()}
    records: list[Record] = []

    def base(seed: int) -> list[str]:
        return [*extra, f"seed={seed}", f"output_dir={output}"]

    single: dict[str, list[float]] = {task: [] for task in scores}
    single_runs: dict[str, list[RunProvenance]] = {task: [] for task in scores}
    baselines: list[dict[str, float]] = []
    for seed in seeds:
        experiment = load_config(config_path, base(seed))
        merged: dict[str, float] = {}
        for task, metric in scores.items():
            config = single_task_config(experiment, task)
            result, provenance = run_experiment(config, [f"name=single_{task}_seed{seed}"], reuse=reuse)
            single_runs[task].append(provenance)
            single[task].append(result.metrics[f"test/{task}/{metric}"])
            merged.update(test_metrics(result))
        baselines.append(merged)
    for task, metric in scores.items():
        records.append(
            Record.measured(
                benchmark,
                "single_task",
                label(task, metric),
                single[task],
                seeds,
                better[task],
                protocol=protocol,
                runs=single_runs[task],
            )
        )
    all_single = [run for runs in single_runs.values() for run in runs]

    for name, weighting in weightings.items():
        values: dict[str, list[float]] = {task: [] for task in scores}
        deltas: list[float] = []
        runs: list[RunProvenance] = []
        try:
            for seed, baseline in zip(seeds, baselines, strict=True):
                config = load_config(config_path, [*base(seed), f"name={name}_seed{seed}"]).model_dump(
                    mode="json"
                )
                config["weighting"] = weighting
                result, provenance = run_experiment(config, reuse=reuse)
                runs.append(provenance)
                for task, metric in scores.items():
                    values[task].append(result.metrics[f"test/{task}/{metric}"])
                deltas.append(delta_m(test_metrics(result), baseline))
        except ct.CrosstaskError as exc:
            log.warning("%s failed: %s", name, exc)
            records.append(
                Record.measured(
                    benchmark,
                    name,
                    "failed",
                    [float("nan")],
                    seeds,
                    True,
                    str(exc)[:300],
                    protocol=protocol,
                    runs=runs,
                )
            )
            continue
        for task, metric in scores.items():
            records.append(
                Record.measured(
                    benchmark,
                    name,
                    label(task, metric),
                    values[task],
                    seeds,
                    better[task],
                    f"weighting {weighting}",
                    protocol=protocol,
                    runs=runs,
                )
            )
        records.append(
            Record.measured(
                benchmark, name, DELTA_M, deltas, seeds, False, protocol=protocol, runs=[*runs, *all_single]
            )
        )
        log.info("%s: %s, Δm %s", name, values, deltas)
    return records
