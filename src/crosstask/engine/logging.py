"""Run outputs while training: ``metrics.jsonl`` and progress on the terminal or in plain log lines."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("crosstask")


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; a resume first drops lines past its step."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (a process killed mid-write may leave a partial last line)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")


class Progress:
    """Plain progress: a log line every ``train.log_every`` steps and after each evaluation."""

    def start(self, total: int, initial: int, name: str) -> None:
        self.total = total
        self.name = name
        self._t0, self._s0 = time.perf_counter(), initial

    def update(self, step: int, values: dict[str, float]) -> None:
        rate = (step - self._s0) / max(1e-9, time.perf_counter() - self._t0)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        log.info("%s step %d/%d  %s  (%.1f steps/s)", self.name, step, self.total, shown, rate)

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            log.info(
                "%s step %d eval  %s", self.name, step, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )

    def close(self) -> None:
        """Nothing to release for plain logging."""


class RichProgress(Progress):
    """A live progress bar (rich) for terminals; evaluations are printed above it."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    def start(self, total: int, initial: int, name: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        super().start(total, initial, name)
        self.bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=initial, info="")

    def update(self, step: int, values: dict[str, float]) -> None:
        self.bar.update(self.task, completed=step, info="  ".join(f"{k}={v:.3g}" for k, v in values.items()))

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.console.print(
                f"[dim]{self.name} step {step}[/dim]  "
                + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )

    def close(self) -> None:
        self.bar.stop()


def default_progress() -> Progress:
    """A progress bar on an interactive terminal, log lines otherwise."""
    return RichProgress() if sys.stderr.isatty() else Progress()
