"""Trainer events: what a method, a monitor or a user's callback may act on, instead of ad-hoc flags.

The Trainer calls, on the method and then on every callback, in this order::

    on_fit_start(trainer)                 once per fit, before the first step (trainer.fresh: not a resume)
    per optimizer step:
        on_step_start(trainer)            trainer.step is the step about to run (0-based)
        wants_gradients(trainer)          asked before each backward pass: keep the per-objective gradients?
                                          (trainer.batch is the micro-batch about to be back-propagated)
        on_after_gradients(trainer, g)    after each backward pass (micro-batch): a StepGradients record
        on_after_update(trainer)          after the optimizers and schedules stepped
    on_evaluation(trainer, metrics)       after each evaluation
    on_fit_end(trainer, status)           always, also when training failed ("failed", "diverged")

Handlers read and change the run through the Trainer's public parts (``step``, ``optimizers``,
``reset_optimizer_state()``, ``draw()``, ``model``, ``metrics_log``, ``batch``: the current micro-batch,
``objectives_at(batch)``: the objectives' values without changing the run, for a lookahead). A handler must not draw from the global
random generator (that would break the exact resume); state it keeps goes in its own checkpointed state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crosstask.engine.gradients import StepGradients
    from crosstask.engine.trainer import Trainer


class Callback:
    """Base class of everything that listens to the Trainer's events; every handler does nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of this fit; ``trainer.fresh`` is False when resuming."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before optimizer step ``trainer.step`` (0-based) draws its batches."""

    def wants_gradients(self, trainer: Trainer) -> bool | str:
        """Whether the coming backward pass should compute and keep every objective's gradient on the shared
        part, even when the weighting does not need it: False; True or ``"representation"`` (the cheaper
        ``StepGradients.jacobian``, on the shared representation where valid); ``"parameters"``
        (``StepGradients.parameter_jacobian``, on the shared parameters)."""
        return False

    def on_after_gradients(self, trainer: Trainer, gradients: StepGradients) -> None:
        """After one backward pass (one per micro-batch), before clipping and the optimizer step."""

    def on_after_update(self, trainer: Trainer) -> None:
        """After the parameters were updated (``trainer.step`` still names the step just taken)."""

    def on_evaluation(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After an evaluation (``metrics`` as written to metrics.jsonl)."""

    def on_fit_end(self, trainer: Trainer, status: str) -> None:
        """When the fit ends, whatever the reason: completed, stopped_early, interrupted, failed, diverged."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
