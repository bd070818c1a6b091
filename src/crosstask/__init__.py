"""crosstask: cross-domain transfer and multi-task learning for PyTorch.

One Trainer runs every method; a method returns named losses; one weighting turns them into gradients.

    import crosstask as ct

    tasks = [ct.Task("digit", "classification", num_classes=10)]
    model = ct.TransferModel("resnet18", tasks, weights="resnet18.pth")
    result = ct.fit(model, method="erm", source=train_ds, eval={"test": test_ds}, steps=1000)

    result = ct.run("configs/digits_multitask.yaml", overrides=["train.steps=200"])
"""

from crosstask.config import Experiment, load_config
from crosstask.data.datasets.base import ArrayDataset, load_dataset
from crosstask.data.domains import Domain
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError, CrosstaskError, DataError, RunError, TrainingDiverged
from crosstask.evaluation.evaluator import Evaluator
from crosstask.experiment import RunResult, evaluate_run, fit, run
from crosstask.lodo import LodoResult, leave_one_domain_out
from crosstask.models.model import MultiTaskModel, TransferModel
from crosstask.registry import Registry
from crosstask.validators.selection import RunSelection, select_runs

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "ConfigError",
    "CrosstaskError",
    "DataError",
    "Domain",
    "Evaluator",
    "Experiment",
    "LodoResult",
    "MultiTaskModel",
    "Registry",
    "RunError",
    "RunResult",
    "RunSelection",
    "Task",
    "TrainingDiverged",
    "TransferModel",
    "evaluate_run",
    "fit",
    "leave_one_domain_out",
    "load_config",
    "load_dataset",
    "run",
    "select_runs",
]
