"""What every monitor shares: a schedule (every N steps, on the first micro-batch of the step), running
mean and spread of the matrices it measures (kept in the checkpoint, so a resumed run averages over its
whole training), and a JSON file per monitor in ``<run dir>/diagnostics/`` when the fit ends."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import Tensor

from crosstask.engine.events import Callback
from crosstask.registry import ComponentConfig

if TYPE_CHECKING:
    from crosstask.engine.trainer import Trainer


class MonitorConfig(ComponentConfig):
    every: int = Field(default=10, ge=1, description="measure every N optimizer steps (the first at step N)")
    pairs_logged: int = Field(
        default=8,
        ge=0,
        description="log every pair's value to metrics.jsonl up to this many objectives (above: summaries only)",
    )


class RunningMatrix:
    """Mean and standard deviation of a matrix over measurements (Welford's update), with a count."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, value: Tensor) -> None:
        value = value.detach().double().cpu()
        if self.mean is None or self.mean.shape != value.shape:
            self.count, self.mean, self.m2 = 0, torch.zeros_like(value), torch.zeros_like(value)
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    @property
    def std(self) -> Tensor | None:
        if self.mean is None:
            return None
        return (self.m2 / (self.count - 1)).sqrt() if self.count > 1 else torch.zeros_like(self.mean)

    def summary(self) -> dict[str, Any]:
        return {
            "measurements": self.count,
            "mean": _rounded(self.mean),
            "std": _rounded(self.std),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def _rounded(matrix: Tensor | None) -> Any:
    if matrix is None:
        return None
    return [[None if not math.isfinite(v) else round(v, 6) for v in row] for row in matrix.tolist()]


class Monitor(Callback):
    """Base class: ``due(trainer)`` says whether this backward pass is one to measure (every ``every`` steps,
    the first micro-batch only); :meth:`report` is written as ``diagnostics/<name>.json`` at the fit's end."""

    def __init__(self, config: MonitorConfig):
        self.config = config
        self._measured_step = -1

    @property
    def name(self) -> str:
        return self.config.name

    def due(self, trainer: Trainer) -> bool:
        return (trainer.step + 1) % self.config.every == 0 and self._measured_step != trainer.step

    def measured(self, trainer: Trainer) -> None:
        self._measured_step = trainer.step

    def report(self, trainer: Trainer) -> dict[str, Any] | None:
        """What the monitor concluded over the run so far (None: nothing measured)."""
        return None

    def on_fit_end(self, trainer: Trainer, status: str) -> None:
        report = self.report(trainer)
        if report is not None:
            directory = trainer.run_dir.path / "diagnostics"
            directory.mkdir(exist_ok=True)
            trainer.run_dir.write_json(directory / f"{self.name}.json", {"monitor": self.name, **report})

    def log(self, trainer: Trainer, values: dict[str, float]) -> None:
        """One metrics.jsonl line, ``phase: <monitor name>``, at the step being taken (counted from 1)."""
        trainer.metrics_log.write({"step": trainer.step + 1, "phase": self.name, **values})


def cosine_matrix(jacobian: Tensor) -> Tensor:
    """Pairwise cosine similarity of the rows (0 where a row is exactly zero)."""
    rows = jacobian.double()
    norms = rows.norm(dim=1)
    unit = rows / norms.clamp_min(1e-300).unsqueeze(1)
    cosine = unit @ unit.T
    zero = norms == 0
    cosine[zero] = 0.0
    cosine[:, zero] = 0.0
    return cosine
