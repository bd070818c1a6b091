"""What a report reads from a run directory: config, summary, metrics.jsonl by phase, and the diagnostics
files the tools wrote (monitors, grouping, interpret). Every part is optional but the summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crosstask.engine.run_dir import RunDir
from crosstask.errors import RunError


@dataclass
class RunData:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] | None
    train: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    monitors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # metrics lines per monitor phase
    diagnostics: dict[str, Any] = field(default_factory=dict)  # diagnostics/<monitor>.json
    grouping: dict[str, Any] | None = None
    interpret: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)


def read_run(path: str | Path) -> RunData:
    """Everything a report shows of the run directory ``path``."""
    path = Path(path)
    summary = RunDir(path).read_summary()
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else None
    data = RunData(path, summary, config)
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed process
            phase = record.get("phase")
            if phase == "train":
                data.train.append(record)
            elif phase == "eval":
                data.evaluations.append(record)
            elif phase:
                data.monitors.setdefault(phase, []).append(record)
    diagnostics = path / "diagnostics"
    if diagnostics.is_dir():
        data.diagnostics = {p.stem: _json(p) for p in sorted(diagnostics.glob("*.json"))}
    if (path / "grouping.json").is_file():
        data.grouping = _json(path / "grouping.json")
    if (path / "interpret.json").is_file():
        data.interpret = _json(path / "interpret.json")
    return data


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
