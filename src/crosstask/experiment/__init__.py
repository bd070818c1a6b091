"""Running experiments: from a config (``run``), from Python objects (``fit``), and evaluating a run.

``build`` makes a run's components from configs, ``runtime`` sets up the device, seeds and kernels, and
``api`` holds the entry points; both ``run`` and ``fit`` end in :func:`~crosstask.experiment.api.train`.
"""

from crosstask.experiment.api import RunResult, evaluate_run, fit, load_run, run, train
from crosstask.experiment.build import build_domains, build_model, build_validation
from crosstask.experiment.runtime import deterministic_mode, resolve_device, seed_everything

__all__ = [
    "RunResult",
    "build_domains",
    "build_model",
    "build_validation",
    "deterministic_mode",
    "evaluate_run",
    "fit",
    "load_run",
    "resolve_device",
    "run",
    "seed_everything",
    "train",
]
