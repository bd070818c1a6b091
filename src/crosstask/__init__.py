"""crosstask: cross-domain transfer and multi-task learning for PyTorch.

One Trainer runs every method; a method returns named losses; one weighting turns them into gradients.

    import crosstask as ct

    tasks = [ct.Task("digit", "classification", num_classes=10)]
    model = ct.TransferModel("resnet18", tasks, weights="resnet18.pth")
    result = ct.fit(model, method="erm", source=train_ds, eval={"test": test_ds}, steps=1000)

    result = ct.run("configs/digits_multitask.yaml", overrides=["train.steps=200"])

The public names are imported on first use (PEP 562), so ``import crosstask`` (and the ``crosstask``
command's ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ArrayDataset": "crosstask.data.datasets.base",
    "Callback": "crosstask.engine.events",
    "ConfigError": "crosstask.errors",
    "CrosstaskError": "crosstask.errors",
    "DataError": "crosstask.errors",
    "Domain": "crosstask.data.domains",
    "EpisodeConfig": "crosstask.data.episodes",
    "Episodes": "crosstask.data.episodes",
    "Evaluator": "crosstask.evaluation.evaluator",
    "Experiment": "crosstask.config",
    "GradientEngine": "crosstask.engine.gradients",
    "LodoResult": "crosstask.lodo",
    "MultiTaskModel": "crosstask.models.model",
    "Registry": "crosstask.registry",
    "RunError": "crosstask.errors",
    "RunInterrupted": "crosstask.errors",
    "RunResult": "crosstask.experiment",
    "RunSelection": "crosstask.validators.selection",
    "Task": "crosstask.data.tasks",
    "TrainingDiverged": "crosstask.errors",
    "TransferModel": "crosstask.models.model",
    "WarpConfig": "crosstask.modules.augment",
    "evaluate_run": "crosstask.experiment",
    "extract_features": "crosstask.analysis.interpret",
    "fit": "crosstask.experiment",
    "leave_one_domain_out": "crosstask.lodo",
    "load_config": "crosstask.config",
    "load_dataset": "crosstask.data.datasets.base",
    "run": "crosstask.experiment",
    "select_runs": "crosstask.validators.selection",
    "validate_config": "crosstask.config",
}

__all__ = [
    "ArrayDataset",
    "Callback",
    "ConfigError",
    "CrosstaskError",
    "DataError",
    "Domain",
    "EpisodeConfig",
    "Episodes",
    "Evaluator",
    "Experiment",
    "GradientEngine",
    "LodoResult",
    "MultiTaskModel",
    "Registry",
    "RunError",
    "RunInterrupted",
    "RunResult",
    "RunSelection",
    "Task",
    "TrainingDiverged",
    "TransferModel",
    "WarpConfig",
    "evaluate_run",
    "extract_features",
    "fit",
    "leave_one_domain_out",
    "load_config",
    "load_dataset",
    "run",
    "select_runs",
    "validate_config",
]  # the keys of _EXPORTS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crosstask' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from crosstask.config import Experiment, load_config, validate_config
    from crosstask.data.datasets.base import ArrayDataset, load_dataset
    from crosstask.data.domains import Domain
    from crosstask.data.episodes import EpisodeConfig, Episodes
    from crosstask.data.tasks import Task
    from crosstask.engine.events import Callback
    from crosstask.engine.gradients import GradientEngine
    from crosstask.errors import (
        ConfigError,
        CrosstaskError,
        DataError,
        RunError,
        RunInterrupted,
        TrainingDiverged,
    )
    from crosstask.evaluation.evaluator import Evaluator
    from crosstask.experiment import RunResult, evaluate_run, fit, run
    from crosstask.lodo import LodoResult, leave_one_domain_out
    from crosstask.models.model import MultiTaskModel, TransferModel
    from crosstask.modules.augment import WarpConfig
    from crosstask.registry import Registry
    from crosstask.validators.selection import RunSelection, select_runs
