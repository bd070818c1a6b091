"""Task grouping end to end: measure the affinity in one joint run, choose the groups for a budget of
models, and (``train=True``) train the groups and compare them with all-in-one and one-per-task.

Layout of the run directory it uses (the joint run's)::

    diagnostics/task_affinity.json    the affinity (the task_affinity monitor)
    baselines/<task>/                 one-per-task runs (the same as ``crosstask run --baselines``)
    groups/<t1-t2-...>/               one run per group of two or more tasks
    grouping.json                     the matrix, the groups, their score and (trained) Δm% of each option
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from crosstask.analysis.grouping import best_grouping, check_budget
from crosstask.checkpoint import write_text
from crosstask.engine.run_dir import RunDir
from crosstask.errors import ConfigError, RunError

KINDS = ("lookahead", "cosine")
log = logging.getLogger(__name__)


def read_affinity(
    run_dir: str | os.PathLike, kind: str = "lookahead"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The objectives' names, mean affinity and its standard deviation measured by a run's task_affinity
    monitor."""
    _check_kind(kind)
    path = Path(run_dir) / "diagnostics" / "task_affinity.json"
    if not path.is_file():
        raise RunError(
            f"{run_dir} has no measured task affinity ({path} is missing): the run had no task_affinity monitor, "
            "or it measured nothing (its every larger than the steps, or fewer than two objectives). Run the "
            "experiment with train.monitors: [task_affinity], or give `crosstask group` the config instead"
        )
    try:
        report = json.loads(path.read_text())
        matrices = [
            np.asarray([[np.nan if v is None else v for v in row] for row in report[kind][part]], dtype=float)
            for part in ("mean", "std")
        ]
        return list(report["names"]), matrices[0], matrices[1]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(
            f"{path} is not a task-affinity report ({type(exc).__name__}: {exc}); measure it again"
        ) from None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"affinity kind must be one of {', '.join(KINDS)}, got '{kind}'")


def with_affinity_monitor(data: dict[str, Any], every: int | None = None) -> dict[str, Any]:
    """A config mapping with the task_affinity monitor added (about 50 measurements over the run by
    default), unless it already has one."""
    train = data.setdefault("train", {}) or {}
    data["train"] = train
    monitors = list(train.get("monitors") or [])
    names = [m if isinstance(m, str) else m.get("name") for m in monitors]
    from crosstask.config import TrainConfig

    steps = int(train.get("steps", TrainConfig.model_fields["steps"].default))
    if every is not None and not 1 <= every <= steps:
        raise ConfigError(f"--every {every}: measure between every step and once in the run's {steps} steps")
    if "task_affinity" not in names:
        monitors.append({"name": "task_affinity", "every": every or max(1, steps // 50)})
    elif every is not None:
        log.warning("the config already has a task_affinity monitor: --every %d is not used", every)
    train["monitors"] = monitors
    return data


def group_tasks(
    source: str | os.PathLike,
    budget: int,
    overrides: list[str] | None = None,
    *,
    kind: str = "lookahead",
    every: int | None = None,
    train: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Group the tasks of ``source`` (an experiment YAML, trained first with the affinity monitor, or the run
    directory of such a run) into at most ``budget`` models; returns (and writes) ``grouping.json``."""
    from crosstask.config import apply_overrides, load_config, read_yaml, validate_config
    from crosstask.experiment import run

    _check_kind(kind)
    check_budget(budget)  # both before anything trains
    source = Path(source)
    if source.is_dir():
        if overrides or every is not None:
            raise ConfigError(
                "overrides and --every apply to a config file, not to an existing run directory"
            )
        run_dir = source
        experiment = load_config(run_dir / "config.yaml")
        summary = RunDir(run_dir).read_summary(finished=True)
    else:
        data = with_affinity_monitor(apply_overrides(read_yaml(source), overrides or []), every)
        experiment = validate_config(data, source=str(source))
        if experiment.method.name != "multitask" or len(experiment.tasks) < 2:
            raise ConfigError(
                f"{source}: grouping needs a multi-task experiment (method: multitask, two or more tasks); it has "
                f"method '{experiment.method.name}' and {len(experiment.tasks)} task(s)"
            )
        result = run(experiment, progress=progress, baselines=train)
        run_dir, summary = result.run_dir, result.summary
    names, mean, std = read_affinity(run_dir, kind)
    tasks = [t.name for t in experiment.tasks]
    if sorted(names) != sorted(tasks):
        raise ConfigError(
            f"the measured objectives {names} are not the tasks {tasks}: grouping needs a multi-task method whose "
            "objectives are the tasks (method: multitask)"
        )
    grouping = best_grouping(mean, budget, names)
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "budget": budget,
        "kind": kind,
        "names": names,
        "affinity": mean.round(6).tolist(),
        "affinity_std": std.round(6).tolist(),
        "groups": grouping.names,
        "score": grouping.score,
        "exhaustive": grouping.exhaustive,
        "partitions_scored": grouping.candidates,
        "affinity_run_s": summary.get("elapsed_s"),
    }
    if train:
        report.update(_train_groups(experiment, run_dir, summary, grouping.names, progress))
    write_text(Path(run_dir) / "grouping.json", json.dumps(report, indent=2) + "\n", "grouping")
    return report


def group_directory(group: list[str]) -> str:
    """A group's run directory name: its tasks, and a short hash of them (task names may hold '-')."""
    digest = hashlib.sha256("\0".join(group).encode()).hexdigest()[:8]
    return f"{'-'.join(group)}.{digest}"


def _train_groups(
    experiment: Any, run_dir: Path, summary: dict[str, Any], groups: list[list[str]], progress: Any
) -> dict[str, Any]:
    """Train one-per-task (if missing) and every group of two or more; Δm% of each option against
    one-per-task (lower is better)."""
    from crosstask.baselines import single_task_config, tasks_config
    from crosstask.evaluation.delta_m import delta_m
    from crosstask.experiment import run

    single: dict[str, float] = {}
    for task in (t.name for t in experiment.tasks):
        result = run(
            single_task_config(experiment, task),
            run_dir=run_dir / "baselines" / task,
            resume=(run_dir / "baselines" / task).exists(),
            progress=progress,
        )
        single.update(result.metrics)
    grouped: dict[str, float] = {}
    for group in groups:
        if len(group) == 1:
            grouped.update({k: v for k, v in single.items() if k.split("/")[1] == group[0]})
            continue
        if len(group) == len(experiment.tasks):
            grouped.update(summary.get("final") or {})
            continue
        directory = run_dir / "groups" / group_directory(group)
        result = run(
            tasks_config(experiment, group),
            run_dir=directory,
            resume=directory.exists(),
            progress=progress,
        )
        grouped.update(result.metrics)
    joint = dict(summary.get("final") or {})
    return {
        "metrics": {"one_per_task": single, "all_in_one": joint, "grouped": grouped},
        "delta_m": {
            "all_in_one": delta_m(joint, single),
            "grouped": delta_m(grouped, single),
            "one_per_task": 0.0,
        },
    }
