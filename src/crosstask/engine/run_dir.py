"""The run directory, the unit of reproducibility: config, metrics, summary and checkpoints."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from crosstask.checkpoint import remove_stale_temporaries, write_text
from crosstask.errors import ConfigError, RunError
from crosstask.registry import NAME_PATTERN

log = logging.getLogger(__name__)


_NAME = re.compile(NAME_PATTERN)


def check_run_name(name: Any) -> str:
    """A run name is one folder name inside ``output_dir``: it may not be a path, ``.`` or ``..``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"run name {name!r} is not a folder name: a run goes to output_dir/<name>, so the name may only "
            "hold letters, digits, '_', '.' and '-', and may not be '.' or '..'. Choose another name; put "
            "the run elsewhere with output_dir (or --run-dir)."
        )
    return name


class RunDir:
    """Paths of one run: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/{last,best}.pt``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = False  # whether this object made the directory (release_if_unused removes it)

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str, *, resume: bool = False) -> RunDir:
        """A new ``output_dir/name`` (``name-1``, ``name-2``, ... when taken: never reused), or with ``resume``
        the latest existing one of those.

        Creation is atomic: two processes starting the same name at once get two directories."""
        check_run_name(name)
        output_dir = Path(output_dir).expanduser()
        taken = cls._existing(output_dir, name)
        if resume and taken:
            _check_writable(taken[-1], "run directory")
            directory = cls(taken[-1])
            directory.remove_stale_temporaries()
            return directory
        if resume:
            log.warning("--resume: no run named '%s' in %s yet; starting a new one", name, output_dir)
        _make_output_dir(output_dir)
        number = cls._next_number(output_dir, name)
        for _ in range(10_000):
            path = output_dir / (f"{name}-{number}" if number else name)
            try:
                path.mkdir()
            except FileExistsError:  # taken meanwhile (another process), or a file of that name
                number += 1
                continue
            except OSError as exc:
                raise RunError(_cannot_write(output_dir, exc)) from None
            directory = cls(path)
            directory.created = True
            return directory
        raise RunError(
            f"{output_dir}: could not find a free run directory name for '{name}'; clean up old runs"
        )

    @classmethod
    def at(cls, path: str | os.PathLike, *, resume: bool = False) -> RunDir:
        """Exactly ``path``: a new or empty directory, or with ``resume`` an existing run."""
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise RunError(
                f"run directory {path} is a file, not a directory; choose a new or empty directory for "
                "--run-dir (or a run directory to resume)"
            )
        if path.exists() and any(path.iterdir()) and not resume:
            raise RunError(
                f"{path} already holds a run; pass --resume to continue it, or choose another --run-dir"
            )
        existed = path.is_dir()
        if existed:
            _check_writable(path, "run directory")
        else:
            _make_output_dir(path.parent, "the folder of the run directory")
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                raise RunError(_cannot_write(path, exc, what="the run directory")) from None
        directory = cls(path)
        directory.created = not existed
        if resume:
            directory.remove_stale_temporaries()
        return directory

    @staticmethod
    def _existing(output_dir: Path, name: str) -> list[Path]:
        """``name``, ``name-1``, ``name-2``, ... that exist as directories, in creation (number) order."""
        return [output_dir / n for _, n in sorted(_numbered(output_dir, name)) if (output_dir / n).is_dir()]

    @staticmethod
    def _next_number(output_dir: Path, name: str) -> int:
        """0 (the bare name) when nothing of that name exists, else one more than the highest number."""
        numbers = [number for number, _ in _numbered(output_dir, name)]
        return max(numbers) + 1 if numbers else 0

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a killed process (``checkpoints/.last.pt.*.tmp``, ...)."""
        for folder in (self.path, self.path / "checkpoints"):
            for removed in remove_stale_temporaries(folder):
                log.info("removed %s, a temporary file left by an interrupted write", removed)

    def release_if_unused(self) -> bool:
        """Give the name back after a run failed before training: remove the directory when it holds nothing
        but ``config.yaml`` and empty folders (a directory this object did not create is kept, emptied of
        those). Anything else in it (metrics, checkpoints, a summary, any other file) keeps it all."""
        if not self.path.is_dir():
            return False
        files = [p for p in self.path.rglob("*") if not p.is_dir() or p.is_symlink()]
        if any(p != self.config for p in files):
            return False
        self.config.unlink(missing_ok=True)
        for folder in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            folder.rmdir()
        if self.created:
            self.path.rmdir()
        return True

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
        write_text(path, json.dumps(data, indent=2, default=str) + "\n", "run file")

    def read_summary(self, finished: bool = False) -> dict[str, Any]:
        """The run's summary; ``finished``: refuse a run that did not complete (one message saying whether to
        resume it or train it again)."""
        if not self.summary.is_file():
            raise RunError(f"{self.path} has no summary.json; did the run finish?")
        try:
            summary = json.loads(self.summary.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"cannot read {self.summary}: {exc}") from None
        status = summary.get("status")
        if finished and status in ("failed", "diverged"):
            raise RunError(
                f"{self.path} {status}: it has no results to use; fix the cause and train it again"
            )
        if finished and status not in ("completed", "stopped_early"):
            raise RunError(f"{self.path} did not finish (status {status!r}); resume it first")
        return summary

    def __str__(self) -> str:
        return str(self.path)


def _numbered(output_dir: Path, name: str) -> list[tuple[int, str]]:
    """(number, entry name) of ``name`` (0) and ``name-N`` (N) in ``output_dir``: files too, which a new run
    does not take."""
    try:
        entries = [p.name for p in output_dir.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise RunError(_cannot_write(output_dir, exc, what="output_dir")) from None
    pattern = re.compile(re.escape(name) + r"(?:-([1-9][0-9]*))?")
    found = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match:
            found.append((int(match.group(1) or 0), entry))
    return found


def _check_writable(path: Path, what: str) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(
            f"{what} {path} is not writable; make it writable, or choose another output_dir "
            "(output_dir=DIR on the command line) or --run-dir"
        )


def _make_output_dir(path: Path, what: str = "output_dir") -> None:
    """Create ``path`` (and its parents) or raise a RunError naming it and what to do."""
    if path.is_dir():
        _check_writable(path, what)
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(_cannot_write(path, exc, what)) from None


def _cannot_write(path: Path, exc: OSError, what: str = "output_dir") -> str:
    reason = exc.strerror or type(exc).__name__
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        reason = f"{blocking} is a file, not a directory"
    return (
        f"cannot create {what} {path}: {reason}. Choose another output_dir (output_dir=DIR on the command "
        "line) or --run-dir, or fix the permissions of that folder."
    )
