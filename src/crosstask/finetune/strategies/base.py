"""The fine-tuning strategy contract: freeze what does not train before the optimizer is built, and change it
as training goes (gradual unfreezing), from the step alone so that a resume needs no extra state."""

from __future__ import annotations

from crosstask.models.model import MultiTaskModel
from crosstask.registry import ComponentConfig


class Strategy:
    """Base class: every parameter trains (what ``full`` is)."""

    def __init__(self, config: ComponentConfig, model: MultiTaskModel):
        self.config = config
        self.model = model

    @property
    def name(self) -> str:
        return self.config.name

    def setup(self) -> None:
        """Before the optimizer is built: freeze layers (the optimizer leaves out frozen parameters)."""

    def on_step_start(self, step: int) -> None:
        """Before each training step (``step`` 0-based): change what trains, if the strategy does."""
