"""The method contract: a training step returns named losses.

Every method (source-only training, multi-task learning, domain adaptation, meta-learning) computes a dict
of named losses per step; the weighting turns them into gradients and the Trainer does the rest::

    @METHODS.register("erm", config=ERMConfig)
    class ERM(Method):
        def training_step(self, batch): return StepOutput({"source": loss})

A method holds its own trainable parts (a domain discriminator, say) in ``self.modules``; they are
optimized and checkpointed with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from crosstask.data.streams import Batch
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss
from crosstask.models.model import ModelOutput, MultiTaskModel
from crosstask.registry import ComponentConfig


@dataclass
class StepOutput:
    """Named losses of one step, extra values to log, and the shared representation if computed."""

    losses: dict[str, Tensor]
    logs: dict[str, Tensor | float] = field(default_factory=dict)
    shared: Tensor | None = None


@dataclass(frozen=True)
class StreamSpec:
    """What a method knows about a training stream: its name, whether labeled, and its tasks."""

    name: str
    labeled: bool
    tasks: tuple[str, ...]


class Method:
    """Base class of training methods. Subclasses implement :meth:`training_step` and :attr:`loss_names`."""

    # the paper's trade-offs: the `static` weighting uses them for the losses its config does not list
    default_weights: ClassVar[dict[str, float]] = {}
    # False: the forward pass of a step is the whole update (AdaBN's statistics); no backward, no optimizer step
    updates_parameters: ClassVar[bool] = True

    def __init__(self, config: ComponentConfig, model: MultiTaskModel, streams: list[StreamSpec]):
        self.config = config
        self.model = model
        self.available = {s.name: s for s in streams}  # every training stream of the run
        self.train_streams: list[StreamSpec] = list(streams)  # the ones a step draws from
        self.tasks: dict[str, Task] = {t.name: t for t in model.tasks}
        self.modules = nn.ModuleDict()
        self.step = 0  # the optimizer step being computed (0-based), set by the Trainer before each step
        self.total_steps = 1  # train.steps

    @property
    def progress(self) -> float:
        """Training progress in [0, 1] (``step / total_steps``): what warm-up schedules of a method read."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def reset_optimizer_state(self) -> bool:
        """True on a step whose update should start from a fresh optimizer state (IRM/V-REx after their anneal)."""
        return False

    @property
    def loss_names(self) -> list[str]:
        """The names of the losses every training step returns (the weighting is set up with them)."""
        raise NotImplementedError

    @property
    def streams_used(self) -> list[str]:
        """Names of the streams a step draws from (``train_streams``); the others are not loaded."""
        return [s.name for s in self.train_streams]

    def setup(self) -> None:
        """Prepare the model before the optimizer is built (freezing layers, say)."""

    def prepare(self, draw: Callable[[], dict[str, Batch]]) -> None:
        """Before the first step of a fresh run (not on resume): compute what needs training data first.
        ``draw()`` returns the next multi-stream training batch; keep the result in :meth:`state_dict`."""

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        raise NotImplementedError

    def labeled_streams(self) -> list[StreamSpec]:
        """Training streams with labels, or a config error naming the method when there are none."""
        labeled = [s for s in self.available.values() if s.labeled and s.tasks]
        if not labeled:
            raise ConfigError(
                f"method '{self.name}' needs at least one labeled training domain; data.train has "
                f"{', '.join(self.available) or 'none'}, all unlabeled. Set labeled: true on one of them."
            )
        return labeled

    def supervised_losses(
        self, batch: dict[str, Batch], streams: list[StreamSpec]
    ) -> tuple[dict[tuple[str, str], Tensor], Tensor | None]:
        """The loss of every (stream, task) pair with labels (one forward pass per stream), and the shared
        representation when there is a single stream (weightings may work on it)."""
        losses, outputs = labeled_losses(self.model, batch, streams)
        return losses, next(iter(outputs.values())).shared if len(outputs) == 1 else None

    def state_dict(self) -> dict[str, Any]:
        return {"modules": self.modules.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.modules.load_state_dict(state["modules"])


def labeled_losses(
    model: MultiTaskModel, batch: dict[str, Batch], streams: Sequence[StreamSpec]
) -> tuple[dict[tuple[str, str], Tensor], dict[str, ModelOutput]]:
    """``model``'s loss on every (stream, task) pair with labels, and its output on each stream (one forward
    pass per stream)."""
    tasks = {t.name: t for t in model.tasks}
    losses, outputs = {}, {}
    for spec in streams:
        data = batch[spec.name]
        outputs[spec.name] = output = model.forward_all(data.x)
        for task in spec.tasks:
            losses[spec.name, task] = task_loss(
                tasks[task], output.outputs[task], data.y[task], masked=task not in data.complete
            )
    return losses, outputs
