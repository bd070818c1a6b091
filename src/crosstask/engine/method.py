"""The method contract: a training step returns named objectives and penalties.

Every method (source-only training, multi-task learning, domain adaptation, meta-learning) computes per step
a dict of named **objectives**, which the weighting balances, and a dict of named **penalties**, which carry
the method's own coefficient (from its config) and are added unweighted; the gradient engine turns them into
gradients and the Trainer does the rest::

    @METHODS.register("erm", config=ERMConfig)
    class ERM(Method):
        objective_names = ["source"]
        def training_step(self, batch): return StepOutput({"source": loss}, representation=z)

A paper's trade-off on a method's own objective (DANN's λ, say) is a key of the method's config, multiplied
into that objective before the weighting, so it holds under every weighting that responds to an objective's
scale (a weighting that does not, Nash-MTL, balances it away by design and says so with a warning); the
``static`` weighting's weights then scale further, from 1. Penalties' coefficients hold under every
weighting. A method holds its own trainable parts (a domain discriminator, say) in
``self.modules``; they are optimized and checkpointed with the model. A method is a
:class:`~crosstask.engine.events.Callback`: it acts on the Trainer's events (before the first step, at each
step's start, ...) instead of through flags the Trainer would have to know about.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from crosstask.data.episodes import EpisodeConfig, Episodes
from crosstask.data.streams import Batch
from crosstask.data.tasks import Task
from crosstask.engine.events import Callback
from crosstask.engine.strategy import build_strategy
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss
from crosstask.models.model import ModelOutput, MultiTaskModel
from crosstask.registry import ComponentConfig

Representation = Tensor | tuple[Tensor, ...] | None


@dataclass
class StepOutput:
    """One step's objectives (balanced by the weighting) and penalties (added as they are), extra values to
    log, and the shared representation: the tensor (or one tensor per forward pass) through which the
    objectives reach the shared parameters, when the step has one; the gradient engine checks that they do."""

    objectives: dict[str, Tensor]
    penalties: dict[str, Tensor] = field(default_factory=dict)
    logs: dict[str, Tensor | float] = field(default_factory=dict)
    representation: Representation = None


@dataclass(frozen=True)
class StreamSpec:
    """What a method knows about a training stream: its name, whether labeled, its tasks, and whether it is
    read as few-shot episodes (its episode config)."""

    name: str
    labeled: bool
    tasks: tuple[str, ...]
    episodes: EpisodeConfig | None = None


class Method(Callback):
    """Base class of training methods. Subclasses implement :meth:`training_step` and :attr:`objective_names`
    (and :attr:`penalty_names` when they have penalties)."""

    reads_episodes = False  # a meta-learner's streams give Episodes; every other method's give Batches

    def __init__(self, config: ComponentConfig, model: MultiTaskModel, streams: list[StreamSpec]):
        self.config = config
        self.model = model
        self.available = {s.name: s for s in streams}  # every training stream of the run
        self.train_streams: list[StreamSpec] = list(streams)  # the ones a step draws from
        self.tasks: dict[str, Task] = {t.name: t for t in model.tasks}
        self.modules = nn.ModuleDict()
        self.step = 0  # the optimizer step being computed (0-based), set by the Trainer before each step
        self.total_steps = 1  # train.steps
        # which parameters train and when (method.finetune), for the methods whose config has the key
        self.strategy = build_strategy(config, model)

    @property
    def progress(self) -> float:
        """Training progress in [0, 1] (``step / total_steps``): what warm-up schedules of a method read."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def objective_names(self) -> list[str]:
        """The names of the objectives every training step returns (the weighting is set up with them)."""
        raise NotImplementedError

    @property
    def penalty_names(self) -> list[str]:
        """The names of the penalties every training step returns (each with its coefficient applied)."""
        return []

    def penalty_coefficient(self, name: str) -> str:
        """Where penalty ``name``'s coefficient is set (for messages)."""
        return "the method's config (crosstask list method)"

    @property
    def streams_used(self) -> list[str]:
        """Names of the streams a step draws from (``train_streams``); the others are not loaded."""
        return [s.name for s in self.train_streams]

    def setup(self) -> None:
        """Prepare the model before the optimizer is built: the fine-tuning strategy freezes layers here
        (subclasses that override it call ``super().setup()``)."""
        if self.strategy is not None:
            self.strategy.setup()

    def on_step_start(self, trainer: Any) -> None:
        """Before each step: the fine-tuning strategy may unfreeze layers (gradual); subclasses that
        override it call ``super().on_step_start(trainer)``."""
        if self.strategy is not None:
            self.strategy.on_step_start(self.step)

    def optimizer_sides(self) -> dict[str, list[nn.Parameter]] | None:
        """Parameters that step with optimizers of their own, by side name (MCD's features and classifiers);
        every trainable parameter not listed steps with the ``main`` optimizer. ``None``: one optimizer."""
        return None

    def resting_sides(self) -> Collection[str]:
        """The sides (of :meth:`optimizer_sides`) that do not step at the current step: their gradients are
        dropped and their optimizer state is left as it is."""
        return ()

    def predictor(self) -> Callable[[Any], dict[str, Tensor]] | None:
        """A test-time procedure the evaluator calls instead of ``model(x)`` (test-time adaptation on each
        evaluation batch, say): ``predict(x) -> {task: output}``. ``None``: the plain model."""
        return None

    def episode_predictor(self) -> Callable[[Episodes], Tensor] | None:
        """How the method scores few-shot episodes (evaluation domains with ``episodes:``): adapt to each
        episode's support set and return query logits (episodes, queries, ways). ``None``: the nearest class
        mean of the model's shared features."""
        return None

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
    ) -> tuple[dict[tuple[str, str], Tensor], Representation]:
        """The loss of every (stream, task) pair with labels (one forward pass per stream), and the shared
        representation of each pass (one tensor, or a tuple with several streams; ``None`` without one)."""
        losses, outputs = labeled_losses(self.model, batch, streams)
        return losses, representation_of(outputs.values())

    def state_dict(self) -> dict[str, Any]:
        return {"modules": self.modules.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.modules.load_state_dict(state["modules"])


def representation_of(outputs: Collection[ModelOutput]) -> Representation:
    """The shared representation of several forward passes: one tensor, a tuple of them, or ``None`` when a
    pass has none (an architecture without a single shared representation)."""
    shared = [o.shared for o in outputs]
    if not shared or any(z is None for z in shared):
        return None
    return shared[0] if len(shared) == 1 else tuple(shared)


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
