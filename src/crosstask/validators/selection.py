"""Choosing a hyperparameter without target labels: each validator picks one of several finished runs.

Train one run per candidate value (a trade-off λ, a learning rate, a method) with the same
``train.validation`` block, then :func:`select_runs` (CLI: ``crosstask select RUN_DIR ...``) compares the
runs by each validator's best score, the score of the checkpoint that validator picked inside each run. So a
validator chooses the run and the checkpoint together, and ``checkpoints/best_<validator>.pt`` of the
chosen run is the model to keep. Where the runs also evaluated on labeled target data, the choice reports
what it scores there (the metrics evaluated at the picked step).

Scores are only comparable when every run computed them on the same data: the runs must have the same
``train.validation`` block, data root and datasets behind its source and target domains (batch sizes and
everything else may differ; runs of ``ct.fit`` on in-memory datasets can only be compared by the datasets'
descriptions). Runs that diverged, failed or were interrupted are left out, and said so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crosstask.engine.run_dir import RunDir
from crosstask.errors import RunError

UNUSABLE = ("diverged", "failed", "interrupted")  # interrupted: its picks cover part of its training


@dataclass(frozen=True)
class Choice:
    """One validator's pick among the runs: the run, its picked step and score, and what that step scored."""

    validator: str
    run_dir: Path
    step: int
    score: float
    higher_is_better: bool
    metrics: dict[str, float]

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / f"best_{self.validator}.pt"


@dataclass
class RunSelection:
    """Every validator's choice, every run's score per validator, and the runs left out (with the reason)."""

    choices: dict[str, Choice]
    scores: dict[str, dict[Path, float]]
    skipped: dict[Path, str] = field(default_factory=dict)


def _validation_inputs(run: Path) -> dict[str, Any]:
    """The run's ``train.validation`` block, its data root and the datasets of the domains it reads (as the
    run resolved them: an evaluation domain wins over a training stream of the same name)."""
    config_path = RunDir(run).config
    if not config_path.is_file():
        raise RunError(f"{run} is not a run directory (no config.yaml)")
    config = yaml.safe_load(config_path.read_text()) or {}
    validation = (config.get("train") or {}).get("validation")
    data = config.get("data") or {}
    domains = {**(data.get("train") or {}), **(data.get("eval") or {})}
    names = [validation.get("target"), validation.get("source")] if isinstance(validation, dict) else []
    datasets = {n: (domains.get(n) or {}).get("dataset") for n in names if n}
    return {"validation": validation, "root": data.get("root"), "datasets": datasets}


def select_runs(
    run_dirs: Sequence[str | os.PathLike], validators: Sequence[str] | None = None
) -> RunSelection:
    """Each validator's choice among ``run_dirs`` (finished runs with ``train.validation``); ``validators``
    limits the choice to those names (default: every validator all usable runs report)."""
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise RunError("select needs at least one run directory")
    if len(set(runs)) != len(runs):
        raise RunError("a run directory is given twice; give each run once")
    picks: dict[Path, dict[str, Any]] = {}
    skipped: dict[Path, str] = {}
    reference: tuple[Path, dict[str, Any]] | None = None
    for run in runs:
        summary = RunDir(run).read_summary()  # a clear error for a missing or unfinished run
        inputs = _validation_inputs(run)
        status = summary.get("status")
        if status in UNUSABLE:
            skipped[run] = f"status {status}" + (
                f" at step {summary.get('step')} of {summary.get('steps')}" if status == "interrupted" else ""
            )
            continue
        if not summary.get("validators"):
            if inputs["validation"]:
                raise RunError(
                    f"{run} has train.validation but no validator picks: it never evaluated (set "
                    "train.eval_every) or no score was finite"
                )
            raise RunError(
                f"{run} has no validator picks: its config has no train.validation. Train every candidate "
                "with the same train.validation block, e.g. {validators: [snd, entropy], target: target}"
            )
        if reference is None:
            reference = (run, inputs)
        elif inputs != reference[1]:
            raise RunError(
                f"{run} and {reference[0]} computed their validator scores on different data (train.validation "
                "or the datasets it reads differ), so the scores are not comparable. Select among runs that "
                "share one train.validation block and its domains"
            )
        picks[run] = summary["validators"]
    if not picks:
        raise RunError("no run is usable: " + "; ".join(f"{run}: {why}" for run, why in skipped.items()))
    common = set.intersection(*(set(p) for p in picks.values()))
    names = list(validators) if validators else sorted(common)
    if not names:
        raise RunError(
            "the runs share no validator: "
            + "; ".join(f"{run}: {', '.join(sorted(p)) or 'none'}" for run, p in picks.items())
        )
    missing = [n for n in names if n not in common]
    if missing:
        raise RunError(
            f"validator(s) {', '.join(missing)} not reported by every usable run; they all report: "
            f"{', '.join(sorted(common)) or 'none in common'}"
        )
    choices, scores = {}, {}
    for name in names:
        scores[name] = {run: float(p[name]["score"]) for run, p in picks.items()}
        higher = bool(next(iter(picks.values()))[name]["higher_is_better"])
        best = (max if higher else min)(scores[name], key=scores[name].__getitem__)  # first run wins ties
        pick = picks[best][name]
        choices[name] = Choice(
            name, best, int(pick["step"]), float(pick["score"]), higher, dict(pick["metrics"])
        )
    return RunSelection(choices, scores, skipped)
