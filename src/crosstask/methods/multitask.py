"""Multi-task learning: one loss per task, for single-input and multi-input data.

Single-input: one stream whose samples carry a label for every task (``(x, {task: y})``). Multi-input: one
stream per task (each domain lists its ``tasks``). Both at once work too; a task labeled in several streams
gets the mean of its losses there. The weighting (``static``: ``Σ αi·L_i``) balances the task losses; the
representation handed to it is each stream's shared features (one tensor per stream with several).
``finetune`` chooses what trains (``linear_probe``: tasks share a frozen, pretrained encoder's features).
"""

from __future__ import annotations

from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput
from crosstask.engine.strategy import FinetuneOptions
from crosstask.errors import ConfigError
from crosstask.registry import METHODS, ComponentConfig


@METHODS.register("multitask", config=FinetuneOptions)
class MultiTask(Method):
    """Train every task on the streams that label it; one loss per task."""

    def __init__(self, config: ComponentConfig, model, streams):
        super().__init__(config, model, streams)
        self.train_streams = self.labeled_streams()
        covered = {t for s in self.train_streams for t in s.tasks}
        missing = [t for t in self.tasks if t not in covered]
        if missing:
            raise ConfigError(
                f"method 'multitask': no labeled training stream has labels for task(s) {', '.join(missing)}; "
                "add a domain under data.train whose tasks include them"
            )

    @property
    def objective_names(self) -> list[str]:
        return list(self.tasks)

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        pair_losses, representation = self.supervised_losses(batch, self.train_streams)
        grouped: dict[str, list] = {}
        for (_stream, task), loss in pair_losses.items():
            grouped.setdefault(task, []).append(loss)
        losses = {
            t: grouped[t][0] if len(grouped[t]) == 1 else sum(grouped[t]) / len(grouped[t])
            for t in self.tasks
        }
        return StepOutput(losses, representation=representation)
