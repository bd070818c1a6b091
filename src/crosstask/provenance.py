"""Provenance of a run: the code revision it was made at, and a hash of the config it trained.

Both go into a run's ``summary.json`` (``revision`` and ``config_hash``), so that a result can be traced to
the code that produced it and a finished run is never mistaken for one of another config or code state
(the benchmark suites compare both before reusing a run; see ``benchmarks/runs.py``).

* :func:`code_revision` asks git about the checkout that holds this package's source. It never fails a
  run: without git, outside a checkout, or when git is slow, it returns ``None`` values.
* :func:`config_hash` hashes the resolved config without the keys that only say where a run goes
  (``name``, ``output_dir``), so the same training config has the same hash wherever it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: top-level keys of a resolved config that say where a run goes, not what it trains
PLACEMENT_KEYS = ("name", "output_dir")
#: seconds a git command may take before the revision is reported unknown
GIT_TIMEOUT = 5.0
HASH_LENGTH = 16

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    """``git <args>`` in ``cwd``: its stdout, or None when git is missing, fails or times out."""
    env = {
        **os.environ,
        # `git status` refreshes the index and would take .git/index.lock: a run must never block (or be
        # blocked by) a commit made at the same time in the same checkout
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_revision(source: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": <sha of HEAD>, "dirty": <uncommitted changes>}`` of the git checkout holding ``source``
    (default: this package's source directory, ``src/crosstask``).

    ``dirty`` covers the directory ``source`` and everything under it: changes to tracked files, staged or
    not, and untracked files that git does not ignore (a new module is code too: the registries import every
    module of the package). Changes elsewhere in the checkout (results, docs, configs) do not count.

    Both are None when the source is not tracked by a git checkout (an installed wheel, a copy, a package
    inside some other repository that does not track it), when git is missing, or when it does not answer
    within :data:`GIT_TIMEOUT` seconds. ``dirty`` is None when the commit is known but git status failed.
    """
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    where = Path(source).resolve() if source is not None else PACKAGE_DIR
    if where.is_file():
        where = where.parent
    if not where.is_dir():
        return unknown
    # the source must be tracked by this checkout, not merely lie inside some repository (a virtualenv in
    # another project's tree, say)
    tracked = _git(["ls-files", "--", "."], where)
    if not tracked or not tracked.strip():
        return unknown
    head = _git(["rev-parse", "--verify", "HEAD"], where)
    commit = head.strip() if head else None
    if not commit:
        return unknown
    # only the source tree itself: results files, docs or configs changed elsewhere in the checkout do not
    # change the code (a config's changes are in its config_hash); untracked files under it do, since the
    # registries import every module of the package
    status = _git(["status", "--porcelain", "--untracked-files=normal", "--", "."], where)
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit, "dirty": dirty}


def canonical_config(resolved: Mapping[str, Any]) -> str:
    """The JSON text that :func:`config_hash` hashes: keys sorted, no whitespace, placement keys removed."""
    if not isinstance(resolved, Mapping):
        raise TypeError(f"config_hash needs a mapping (the resolved config), got {type(resolved).__name__}")
    content = {k: v for k, v in resolved.items() if k not in PLACEMENT_KEYS}
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=str
    )


def config_hash(resolved: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the sha256 of :func:`canonical_config`: equal for the same training config
    whatever the run's ``name`` and ``output_dir``, different when anything it trains differs.

    Pass the resolved config as JSON types (``Experiment.model_dump(mode="json")``), as saved in the run's
    ``config.yaml``.
    """
    return hashlib.sha256(canonical_config(resolved).encode("utf-8")).hexdigest()[:HASH_LENGTH]
