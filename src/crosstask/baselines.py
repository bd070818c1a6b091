"""Single-task baselines of a multi-task experiment, run by the same tool from the same config, and Δm%.

:func:`crosstask.experiment.run` with ``baselines=True`` runs them; this module only derives their configs
and compares the results.

Each baseline keeps the experiment's data, backbone, head, optimizer, schedule and training loop, and
trains one task alone: hard sharing (a plain network), the static weighting, only the domains that label
the task, and evaluation on the domains that evaluate it. ``crosstask run exp.yaml --baselines`` runs them
into ``<run dir>/baselines/<task>`` and records Δm% (lower is better) in the run's summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crosstask.config import Experiment, validate_config
from crosstask.errors import ConfigError
from crosstask.evaluation.delta_m import delta_m


def single_task_config(experiment: Experiment, task: str) -> Experiment:
    """The experiment reduced to ``task`` alone: a plain network (hard sharing) with the static weighting."""
    return tasks_config(experiment, [task])


def tasks_config(experiment: Experiment, tasks: list[str], name: str | None = None) -> Experiment:
    """The experiment reduced to ``tasks``: only the domains that label one of them, evaluation on the
    domains that evaluate one of them. One task trains a plain network (hard sharing) with the static
    weighting; several keep the experiment's architecture and weighting (a group of a task grouping)."""
    data = experiment.model_dump(mode="json")
    names = [t.name for t in experiment.tasks]
    unknown = [t for t in tasks if t not in names]
    if unknown or not tasks:
        missing = ", ".join(f"'{t}'" for t in unknown) or "(none given)"
        raise ConfigError(f"no task {missing} in this experiment; tasks: {', '.join(names)}")

    def keep(domains: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for domain_name, domain in domains.items():
            labeled = [t for t in domain.get("tasks") or names if t in tasks]
            if labeled:
                out[domain_name] = {**domain, "tasks": labeled}
        return out

    label = "-".join(tasks)
    data["name"] = name or f"{experiment.name}_{'single' if len(tasks) == 1 else 'group'}_{label}"
    data["tasks"] = [t for t in data["tasks"] if t["name"] in tasks]
    data["data"]["train"] = keep(data["data"]["train"])
    data["data"]["eval"] = keep(data["data"]["eval"])
    if not data["data"]["train"]:
        raise ConfigError(f"tasks {label}: no training domain labels them, so they cannot train alone")
    if len(tasks) == 1:
        data["model"]["architecture"] = {"name": "hard_sharing"}
        data["weighting"] = {"name": "static"}
    else:
        data["weighting"] = _weighting_for(data["weighting"], tasks)
    train = data["train"]
    train["monitors"] = []
    train["select"] = _for_tasks(train.get("select"), tasks, experiment)
    if train.get("early_stopping"):
        metric = _for_tasks(train["early_stopping"]["metric"], tasks, experiment)
        train["early_stopping"] = {**train["early_stopping"], "metric": metric} if metric else None
    what = "single-task baseline" if len(tasks) == 1 else "task group"
    return validate_config(data, source=f"{experiment.source} ({what} for '{label}')")


def _weighting_for(weighting: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """A weighting's per-objective keys (static weights, say) restricted to the group's tasks."""
    out = dict(weighting)
    for key, value in weighting.items():
        if isinstance(value, dict) and value and set(value) - set(tasks):
            out[key] = {k: v for k, v in value.items() if k in tasks}
    return out


def _for_tasks(metric_key: str | None, tasks: list[str], experiment: Experiment) -> str | None:
    """A selection metric for a reduced experiment: the same key if it is one of its tasks', else the first
    task's main metric on the same evaluation domain (``None`` if that domain does not evaluate it)."""
    if metric_key is None:
        return None
    domain, metric_task, _ = metric_key.split("/")
    if metric_task in tasks:
        return metric_key
    main = next(t for t in experiment.tasks if t.name == tasks[0]).main_metric
    candidate = f"{domain}/{tasks[0]}/{main}"
    return candidate if candidate in experiment.metric_keys() else None


def baseline_summary(metrics: Mapping[str, float], baselines: Mapping[str, Any]) -> dict[str, Any]:
    """Δm% of the final metrics against the baselines' final metrics, with the baselines' metrics."""
    reference = {k: v for result in baselines.values() for k, v in result.metrics.items()}
    return {"delta_m": delta_m(metrics, reference), "baselines": reference}
