"""Errors a user can act on.

Every error raised for bad input derives from :class:`CrosstaskError`. Its message says what was wrong,
where, and what to do; the CLI prints it without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CrosstaskError(Exception):
    """Base class of the errors a user can fix. The CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(CrosstaskError):
    """An experiment config (file, override or Python argument) is invalid."""

    exit_code = 2


class DataError(CrosstaskError):
    """A dataset is missing, unreadable or malformed."""

    exit_code = 2


class RunError(CrosstaskError):
    """A run directory or checkpoint cannot be used as asked (resume, evaluate)."""

    exit_code = 2


class RunInterrupted(CrosstaskError):
    """A stop signal (SIGINT/SIGTERM) ended a run before the work that depends on it (the next runs of a
    leave-one-domain-out loop, the baselines); the interrupted run keeps its checkpoint for --resume."""

    exit_code = 130


class TrainingDiverged(CrosstaskError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""

    exit_code = 3


class SolverError(CrosstaskError):
    """A loss-balancing solver failed (no convergence, non-finite result); never silently replaced."""

    exit_code = 3


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
