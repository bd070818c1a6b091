"""The run directory, the unit of reproducibility: config, metrics, summary and checkpoints."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from crosstask.errors import RunError

log = logging.getLogger(__name__)


class RunDir:
    """Paths of one run: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/{last,best}.pt``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str, *, resume: bool = False) -> RunDir:
        """A new ``output_dir/name`` (``name-1``, ``name-2``, ... when taken: never reused), or with ``resume``
        the latest existing one of those."""
        taken = cls._existing(Path(output_dir), name)
        if resume and taken:
            return cls(taken[-1])
        if resume:
            log.warning("--resume: no run named '%s' in %s yet; starting a new one", name, output_dir)
        path = Path(output_dir) / (f"{name}-{len(taken)}" if taken else name)
        while path.exists():  # a gap in the numbering, or a file of that name
            path = path.with_name(f"{path.name}-new")
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def at(cls, path: str | os.PathLike, *, resume: bool = False) -> RunDir:
        """Exactly ``path``: a new or empty directory, or with ``resume`` an existing run."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not resume:
            raise RunError(
                f"{path} already holds a run; pass --resume to continue it, or choose another --run-dir"
            )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @staticmethod
    def _existing(output_dir: Path, name: str) -> list[Path]:
        """``name``, ``name-1``, ``name-2``, ... that exist, in creation order."""
        found = [output_dir / name] if (output_dir / name).is_dir() else []
        n = 1
        while (output_dir / f"{name}-{n}").is_dir():
            found.append(output_dir / f"{name}-{n}")
            n += 1
        return found

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
