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
    """The experiment reduced to ``task`` alone."""
    data = experiment.model_dump(mode="json")
    names = [t.name for t in experiment.tasks]
    if task not in names:
        raise ConfigError(f"no task '{task}' in this experiment; tasks: {', '.join(names)}")

    def keep(domains: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, domain in domains.items():
            labeled = domain.get("tasks") or names
            if task in labeled:
                out[name] = {**domain, "tasks": [task]}
        return out

    data["name"] = f"{experiment.name}_single_{task}"
    data["tasks"] = [t for t in data["tasks"] if t["name"] == task]
    data["data"]["train"] = keep(data["data"]["train"])
    data["data"]["eval"] = keep(data["data"]["eval"])
    if not data["data"]["train"]:
        raise ConfigError(f"task '{task}': no training domain labels it, so it has no single-task baseline")
    data["model"]["architecture"] = {"name": "hard_sharing"}
    data["weighting"] = {"name": "static"}
    train = data["train"]
    for key in ("select",):
        train[key] = _for_task(train.get(key), task, experiment)
    if train.get("early_stopping"):
        metric = _for_task(train["early_stopping"]["metric"], task, experiment)
        train["early_stopping"] = {**train["early_stopping"], "metric": metric} if metric else None
    return validate_config(data, source=f"{experiment.source} (single-task baseline for '{task}')")


def _for_task(metric_key: str | None, task: str, experiment: Experiment) -> str | None:
    """A selection metric for the baseline: the same key if it is the task's, else the task's main metric
    on the same evaluation domain (``None`` if that domain does not evaluate the task)."""
    if metric_key is None:
        return None
    domain, metric_task, _ = metric_key.split("/")
    if metric_task == task:
        return metric_key
    main = next(t for t in experiment.tasks if t.name == task).main_metric
    candidate = f"{domain}/{task}/{main}"
    return candidate if candidate in experiment.metric_keys() else None


def baseline_summary(metrics: Mapping[str, float], baselines: Mapping[str, Any]) -> dict[str, Any]:
    """Δm% of the final metrics against the baselines' final metrics, with the baselines' metrics."""
    reference = {k: v for result in baselines.values() for k, v in result.metrics.items()}
    return {"delta_m": delta_m(metrics, reference), "baselines": reference}
