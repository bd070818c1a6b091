"""The fine-tuning strategy contract: freeze what does not train before the optimizer is built, and change it
as training goes (gradual unfreezing), from the step alone so that a resume needs no extra state.

A method whose config takes the ``finetune`` key (:class:`FinetuneOptions`: ``erm`` and every adaptation
method) gets its strategy from the :class:`~crosstask.engine.method.Method` base, which applies it at setup and
at every step's start: a frozen encoder with DANN is ``method: {name: dann, finetune: linear_probe}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from crosstask.components import component
from crosstask.models.model import MultiTaskModel
from crosstask.registry import FINETUNE, ComponentConfig, reject_unknown_keys


class FinetuneOptions(ComponentConfig):
    """The ``finetune`` key of a method's config (combine with the method's own config class)."""

    finetune: component(FINETUNE) = Field(
        default="full",
        validate_default=True,
        description="which parameters train and when: full, linear_probe, partial, gradual, lora",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _reject_unknown_keys(cls, data: Any, handler: Any) -> Any:
        return reject_unknown_keys(cls, strategy_keys_at_the_method_level(data), handler)


def strategy_keys_at_the_method_level(data: Any) -> Any:
    """The older form: ``finetune: partial`` with ``freeze_until`` beside it (``gradual``: ``unfreeze_every``)
    becomes ``finetune: {name: partial, freeze_until: ...}``."""
    if not isinstance(data, dict) or not ({"freeze_until", "unfreeze_every"} & data.keys()):
        return data
    data = dict(data)
    strategy = data.get("finetune", "full")
    strategy = dict(strategy) if isinstance(strategy, dict) else {"name": strategy}
    for key, owner in (("freeze_until", "partial"), ("unfreeze_every", "gradual")):
        if key in data:
            value = data.pop(key)
            if value is None:
                continue
            if strategy.get("name") != owner:
                raise ValueError(f"{key} applies to finetune: {owner} only")
            strategy[key] = value
    data["finetune"] = strategy
    return data


def build_strategy(config: ComponentConfig, model: MultiTaskModel) -> Strategy | None:
    """The strategy a method's config names (``None`` for methods without the ``finetune`` key)."""
    chosen = getattr(config, "finetune", None)
    return FINETUNE.get(chosen.name).obj(chosen, model) if chosen is not None else None


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
