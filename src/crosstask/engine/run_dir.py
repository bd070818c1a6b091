"""The run directory, the unit of reproducibility: config, metrics, summary and checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from crosstask.errors import RunError


class RunDir:
    """Paths of one run: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/{last,best}.pt``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str, *, resume: bool = False) -> RunDir:
        """``output_dir/name``; without ``resume`` an existing one is never reused: ``name-1``, ``name-2``, ..."""
        base = Path(output_dir) / name
        if resume:
            base.mkdir(parents=True, exist_ok=True)
            return cls(base)
        path, n = base, 0
        while path.exists():
            n += 1
            path = Path(output_dir) / f"{name}-{n}"
        path.mkdir(parents=True)
        return cls(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def write_json(self, path: Path, data: Any) -> None:
        """Write JSON atomically (a reader never sees half a file)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            raise RunError(f"{self.path} has no summary.json; did the run finish?")
        return json.loads(self.summary.read_text())

    def __str__(self) -> str:
        return str(self.path)
