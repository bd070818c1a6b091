"""Training runs for the benchmark suites: reuse a finished run only when it was made by this code and config.

``ct.run(experiment, resume=True)`` returns a finished run as it is and continues an interrupted one, whatever
code made it. A suite that trusted that would mix code states in one table (see results/cdan_note.md). So every
suite that trains through crosstask calls :func:`run_experiment` instead. It looks at the run that resume would
pick (the latest ``output_dir/name[-N]``) and reuses or continues it only when its ``summary.json`` says it was
made

* at the commit the code is at now, with a clean tree then and now (``revision``: ``{"commit", "dirty"}``);
  a dirty tree is different from anything, since uncommitted code cannot be identified, and
* from the same resolved config (``config_hash``, :func:`crosstask.provenance.config_hash`).

Otherwise it says which run and what differs, and trains again in a new directory (``name-N``; the old run is
left where it is). A run without those fields (made before they existed, or killed before it wrote a summary)
is a mismatch too. ``python -m benchmarks.run ... --reuse-runs`` (``reuse=True``) accepts any existing run, as
before, and still records what it was made from.

The result's :class:`RunProvenance` (run directory, revision, config hash, reused or not) goes into the
suite's records (``Record.measured(..., runs=[...])``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import crosstask as ct
from crosstask.config import Experiment, apply_overrides, validate_config
from crosstask.provenance import code_revision, config_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunProvenance:
    """What a record's number came from: the run directory, the code revision and the config hash of the run
    (as its summary says; ``None`` where unknown), and whether an existing run was reused."""

    run_dir: str
    revision: dict[str, Any] | None
    config_hash: str | None
    reused: bool


def resolve(
    config: Experiment | Mapping[str, Any] | str | os.PathLike, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The resolved config (defaults filled in, as JSON types): what ``ct.run`` saves as ``config.yaml``."""
    if isinstance(config, str | os.PathLike):
        return ct.load_config(config, overrides).model_dump(mode="json")
    data = config.model_dump(mode="json") if isinstance(config, Experiment) else dict(config)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_config(data).model_dump(mode="json")


def existing_runs(output_dir: str | os.PathLike, name: str) -> list[Path]:
    """``output_dir/name`` and ``output_dir/name-N`` that exist, oldest first (by N)."""
    root = Path(output_dir).expanduser()
    if not root.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"(?:-(\d+))?")
    found = []
    for path in root.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1) or 0), path))
    return [path for _, path in sorted(found)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_config_hash(run_dir: Path, summary: Mapping[str, Any] | None) -> str | None:
    """The run's config hash: from its summary, else computed from its saved ``config.yaml``."""
    if summary and isinstance(summary.get("config_hash"), str):
        return summary["config_hash"]
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config_hash(saved) if isinstance(saved, Mapping) else None


def _describe(revision: Mapping[str, Any] | None) -> str:
    if not revision or not revision.get("commit"):
        return "an unknown revision"
    return f"{str(revision['commit'])[:10]}" + (
        " with uncommitted changes"
        if revision.get("dirty")
        else " (clean)"
        if revision.get("dirty") is False
        else " (clean or not: unknown)"
    )


def mismatches(run_dir: Path, current_revision: Mapping[str, Any], current_hash: str) -> list[str]:
    """Why the run in ``run_dir`` may not be reused now (empty: it may). Dirty trees match nothing."""
    summary = _read_json(run_dir / "summary.json")
    if summary is None:
        return [
            "it has no readable summary.json (killed before it wrote one, or still running elsewhere), so "
            "the code it was made with is unknown"
        ]
    reasons = []
    revision = summary.get("revision")
    if not isinstance(revision, Mapping) or not revision.get("commit"):
        reasons.append("its summary records no code revision (made before runs recorded one)")
    elif revision["commit"] != current_revision.get("commit"):
        reasons.append(
            f"it was made at {_describe(revision)}, the code is now at {_describe(current_revision)}"
        )
    elif revision.get("dirty") is not False:
        reasons.append(f"it was made at {_describe(revision)}: uncommitted code cannot be matched")
    if current_revision.get("commit") is None:
        reasons.append("the current code revision is unknown (no git checkout, or git did not answer)")
    elif current_revision.get("dirty") is not False:
        reasons.append(f"the code now is {_describe(current_revision)}: uncommitted code cannot be matched")
    if len(summary.get("revisions") or []) > 1:
        reasons.append("it was trained by several code revisions (resumed at another one)")
    recorded = recorded_config_hash(run_dir, summary)
    if recorded is None:
        reasons.append("its config hash is unknown (no config_hash in summary.json, no readable config.yaml)")
    elif recorded != current_hash:
        reasons.append(f"its config hash is {recorded}, the config now hashes to {current_hash}")
    return reasons


def _provenance(
    result: ct.RunResult, revision: Mapping[str, Any] | None, expected_hash: str, reused: bool
) -> RunProvenance:
    summary = result.summary or {}
    recorded_revision = summary.get("revision")
    if not isinstance(recorded_revision, Mapping):
        # summaries without the field: a run trained now is from the revision seen when it started; a reused
        # one from an unknown revision
        recorded_revision = None if reused else revision
    recorded = summary.get("config_hash")
    if not isinstance(recorded, str):
        recorded = recorded_config_hash(Path(result.run_dir), None) or (None if reused else expected_hash)
    if not reused and recorded != expected_hash:
        log.warning(
            "%s: its summary records config hash %s, the suite's config hashes to %s",
            result.run_dir,
            recorded,
            expected_hash,
        )
    return RunProvenance(
        str(result.run_dir),
        dict(recorded_revision) if recorded_revision is not None else None,
        recorded,
        reused,
    )


def _stop_if_interrupted(result: ct.RunResult) -> ct.RunResult:
    """A run stopped by Ctrl-C or SIGTERM stops the suite too (the next run would start, and a second signal
    would interrupt that one as well)."""
    if result.summary.get("status") == "interrupted":
        from crosstask.errors import RunInterrupted

        raise RunInterrupted(f"{result.run_dir} was interrupted; run the suite again to continue it")
    return result


def run_experiment(
    config: Experiment | Mapping[str, Any] | str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    reuse: bool = False,
) -> tuple[ct.RunResult, RunProvenance]:
    """``ct.run(config, overrides, resume=True)``, except that an existing run made by other code or from
    another config is not reused nor continued: the experiment is trained again in a new directory. With
    ``reuse`` (``--reuse-runs``), any existing run is taken as ``resume=True`` takes it (differences are
    logged)."""
    resolved = resolve(config, overrides)
    wanted_hash = config_hash(resolved)
    revision = code_revision()
    runs = existing_runs(resolved["output_dir"], resolved["name"])
    if runs:
        latest = runs[-1]
        reasons = mismatches(latest, revision, wanted_hash)
        if not reasons or reuse:
            if reasons:
                log.warning("%s: reused although %s (--reuse-runs)", latest, "; ".join(reasons))
            result = _stop_if_interrupted(ct.run(resolved, resume=True, run_dir=latest))
            return result, _provenance(result, revision, wanted_hash, reused=True)
        log.warning(
            "%s: not reused, because %s; training it again in a new directory (pass --reuse-runs to accept it)",
            latest,
            "; ".join(reasons),
        )
    result = _stop_if_interrupted(ct.run(resolved))
    if runs:
        log.warning("%s: trained again in %s", runs[-1], result.run_dir)
    return result, _provenance(result, revision, wanted_hash, reused=False)
