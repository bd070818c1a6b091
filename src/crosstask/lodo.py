"""Leave-one-domain-out evaluation of domain generalization.

Given an experiment whose ``data.train`` holds N labeled domains, train N times, each time holding one domain
out: it is removed from ``data.train`` and evaluated as the unseen target, under the evaluation set name
``heldout`` (metric keys ``heldout/<task>/<metric>``). The held-out domain is evaluated on the dataset its
training entry names (the whole of it is unseen). The result is one row per held-out domain with its target
score (the method's task, its main metric, on the final model) and the mean over rows, the number DG papers
report (e.g. Gulrajani & Lopez-Paz 2021, "In Search of Lost Domain Generalization", ICLR)::

    result = leave_one_domain_out("configs/dg_rotated_digits.yaml", ["method=irm"])
    result.table()          # a plain-text table: one line per held-out domain, then the mean

Each run goes to ``output_dir/<name>-lodo-<domain>``; everything else (method, seed, data.eval sets, model
selection) is the config's own. Unlabeled training streams stay in every run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosstask.config import Experiment, apply_overrides, load_config, validate_config
from crosstask.engine.logging import Progress
from crosstask.errors import ConfigError, RunError, RunInterrupted

HELDOUT = "heldout"  # the evaluation set name of the held-out domain in every run


@dataclass
class LodoRow:
    """One run: the held-out domain, its target score, the run directory and all final metrics."""

    domain: str
    value: float
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LodoResult:
    """Per held-out domain target scores (``metric`` is ``<task>/<metric>``) and their mean."""

    metric: str
    rows: list[LodoRow]

    @property
    def mean(self) -> float:
        return sum(r.value for r in self.rows) / len(self.rows)

    @property
    def values(self) -> dict[str, float]:
        return {r.domain: r.value for r in self.rows}

    def table(self) -> str:
        """A plain-text table: one line per held-out domain, then the mean."""
        width = max(len("held-out domain"), *(len(r.domain) for r in self.rows))
        lines = [f"{'held-out domain':<{width}}  {self.metric}"]
        lines += [f"{r.domain:<{width}}  {r.value:.2f}" for r in self.rows]
        lines.append(f"{'mean':<{width}}  {self.mean:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mean": self.mean,
            "rows": [{"domain": r.domain, "value": r.value, "run_dir": str(r.run_dir)} for r in self.rows],
        }


def _experiment(
    config: Experiment | Mapping[str, Any] | str | os.PathLike, overrides: Sequence[str]
) -> Experiment:
    if isinstance(config, str | os.PathLike):
        return load_config(config, overrides)
    data = config.model_dump(mode="json") if isinstance(config, Experiment) else dict(config)
    return validate_config(apply_overrides(data, overrides))


def held_out_config(experiment: Experiment, domain: str) -> dict[str, Any]:
    """The config of the run that holds ``domain`` out: trained without it, evaluated on it as ``heldout``."""
    config = copy.deepcopy(experiment.model_dump(mode="json"))
    held = config["data"]["train"].pop(domain)
    held["labeled"], held["batch_size"], held["augment"] = True, None, None  # evaluated as it is
    config["data"]["eval"][HELDOUT] = held
    config["name"] = f"{experiment.name}-lodo-{domain}"
    method = config["method"]
    if isinstance(method.get("domains"), list):  # a method that lists its source domains
        method["domains"] = [d for d in method["domains"] if d != domain]
    return config


def leave_one_domain_out(
    config: Experiment | Mapping[str, Any] | str | os.PathLike,
    overrides: Sequence[str] = (),
    domains: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
) -> LodoResult:
    """Train once per held-out domain (default: every labeled domain of ``data.train``) and score it.

    ``config`` is a YAML path, a config mapping or an :class:`Experiment`; ``overrides`` are ``key.path=value``
    strings applied first. Returns a :class:`LodoResult` (``result.table()`` renders it).
    """
    from crosstask.experiment import run

    experiment = _experiment(config, overrides)
    labeled = [name for name, d in experiment.data.train.items() if d.labeled]
    if len(labeled) < 2:
        raise ConfigError(
            f"leave-one-domain-out needs at least 2 labeled domains under data.train; {experiment.source} has "
            f"{len(labeled)} ({', '.join(labeled) or 'none'}). Add one labeled entry per source domain"
        )
    if HELDOUT in experiment.data.eval:
        raise ConfigError(
            f"data.eval.{HELDOUT}: leave-one-domain-out evaluates the held-out domain under that name; rename "
            "this evaluation set"
        )
    chosen = list(domains) if domains is not None else labeled
    unknown = [d for d in chosen if d not in labeled]
    if unknown or not chosen:
        raise ConfigError(
            f"domains to hold out: {', '.join(unknown) or 'none given'}; choose among the labeled domains of "
            f"data.train: {', '.join(labeled)}"
        )
    task_name = getattr(experiment.method, "task", None) or experiment.tasks[0].name
    task = next((t for t in experiment.tasks if t.name == task_name), None)
    if task is None:
        raise ConfigError(f"method.task: no task named '{task_name}'")
    key = f"{HELDOUT}/{task.name}/{task.main_metric}"
    rows = []
    for domain in chosen:
        result = run(held_out_config(experiment, domain), progress=progress)
        if result.summary.get("status") == "interrupted":
            raise RunInterrupted(
                f"interrupted while holding out '{domain}' ({result.run_dir}); the other domains were not run. "
                "Continue that run with crosstask run --resume --run-dir, then run lodo again"
            )
        if key not in result.metrics:
            raise RunError(
                f"the run holding out '{domain}' ({result.run_dir}) ended without evaluating {key} "
                f"(status: {result.summary.get('status')}); resume it with crosstask run --resume"
            )
        rows.append(LodoRow(domain, result.metrics[key], result.run_dir, dict(result.metrics)))
    return LodoResult(f"{task.name}/{task.main_metric}", rows)
