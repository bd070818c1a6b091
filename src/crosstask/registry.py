"""One generic registry for every pluggable family (datasets, backbones, methods, weightings, ...).

A component is registered under a name together with the pydantic model of its own parameters::

    @BACKBONES.register("mlp", config=MLPConfig)
    def build_mlp(config, input_shape): ...

The YAML key, the registry name and the file name are the same word. Each family's package imports all of
its modules on first use (:func:`import_submodules`), so adding a component is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from crosstask.errors import ConfigError, suggest

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"  # names that appear in metric keys and file names


class StrictModel(BaseModel):
    """A config model that reports unknown keys (with the allowed ones and a suggestion) next to every other
    error of the same input, instead of stopping at the first."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="wrap")
    @classmethod
    def _reject_unknown_keys(cls, data: Any, handler: Any) -> Any:
        return reject_unknown_keys(cls, data, handler)


def reject_unknown_keys(cls: type[BaseModel], data: Any, handler: Any) -> Any:
    """Validate ``data`` with ``handler``, reporting unknown keys beside the other errors (a subclass that
    rewrites its input first, an older form of its keys, calls this after the rewrite)."""
    if not isinstance(data, dict):
        return handler(data)
    allowed = set(cls.model_fields)
    unknown = [key for key in data if key not in allowed]
    if not unknown:
        return handler(data)
    errors: list[dict[str, Any]] = []
    try:
        handler({k: v for k, v in data.items() if k in allowed})
    except ValidationError as exc:
        errors = [
            {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": e.get("input")}
            for e in exc.errors(include_url=False)
        ]
    for key in unknown:
        message = f"unknown key '{key}'.{suggest(key, allowed)} Allowed keys: {', '.join(sorted(allowed))}"
        errors.append(
            {"type": PydanticCustomError("unknown_key", message), "loc": (key,), "input": data[key]}
        )
    raise ValidationError.from_exception_data(cls.__name__, errors)


class ComponentConfig(StrictModel):
    """Parameters of one registered component; ``name`` picks the component."""

    name: str


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, the object that builds it, its config model and a description."""

    name: str
    obj: Any
    config: type[ComponentConfig]
    description: str


class Registry:
    """Named components of one family. Duplicate names and unknown names are errors."""

    families: ClassVar[dict[str, Registry]] = {}

    def __init__(self, family: str, description: str, packages: tuple[str, ...] = ()):
        if family in Registry.families:
            raise ValueError(f"registry family '{family}' already exists")
        self.family = family
        self.description = description
        self.packages = packages
        self._entries: dict[str, Entry] = {}
        self._loaded = not packages
        Registry.families[family] = self

    def register(
        self, name: str, *, config: type[ComponentConfig] = ComponentConfig, description: str | None = None
    ) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name``; a duplicate name raises ``ValueError``."""

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(
                    f"{self.family} '{name}' is already registered (by {self._entries[name].obj!r}); "
                    "pick another name"
                )
            doc = description or (obj.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, config, doc)
            return obj

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for package in self.packages:
                import_submodules(package)

    def get(self, name: str) -> Entry:
        """Return the entry for ``name``; an unknown name raises :class:`ConfigError` listing the choices."""
        self._load()
        if name not in self._entries:
            raise ConfigError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: Any) -> str:
        self._load()
        return (
            f"unknown {self.family} '{name}'.{suggest(name, self._entries)} "
            f"Choices: {', '.join(self.names()) or '(none registered)'}"
        )

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"


def import_submodules(package: str) -> None:
    """Import ``package`` and, recursively, its public modules so that their ``register`` decorators run."""
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            importlib.import_module(info.name)


# The families. Each lives in the package named here; its modules register themselves on import.
DATASETS = Registry(
    "dataset", "data sources: embedded, local files, or your own", ("crosstask.data.datasets",)
)
BACKBONES = Registry(
    "backbone", "feature extractors with forward_features + num_features", ("crosstask.models.backbones",)
)
HEADS = Registry("head", "per-task output layers built from Task specs", ("crosstask.models.heads",))
ARCHITECTURES = Registry("architecture", "how tasks share a network", ("crosstask.models.architectures",))
METHODS = Registry("method", "what a training step computes: named losses", ("crosstask.methods",))
WEIGHTINGS = Registry("weighting", "how named losses become one gradient", ("crosstask.weighting",))
REGULARIZERS = Registry(
    "regularizer", "fine-tuning penalties toward the pretrained starting point (erm)", ("crosstask.finetune",)
)
FINETUNE = Registry(
    "finetune",
    "fine-tuning strategies of erm (method.finetune): which parameters train, and when",
    ("crosstask.finetune.strategies",),
)
VALIDATORS = Registry("validator", "model selection without target labels", ("crosstask.validators",))
SHALLOW = Registry(
    "shallow",
    "feature-level domain adaptation with the scikit-learn API (fit(Xs, ys, Xt))",
    ("crosstask.shallow",),
)
OPTIMIZERS = Registry("optimizer", "torch optimizers by name", ("crosstask.engine.optim",))
SCHEDULERS = Registry("scheduler", "learning-rate schedules by name", ("crosstask.engine.schedulers",))
LOSSES = Registry("loss", "per-task loss functions", ("crosstask.evaluation.losses",))
METRICS = Registry("metric", "per-task evaluation metrics", ("crosstask.evaluation.metrics",))
MONITORS = Registry(
    "monitor",
    "diagnostics that read a run's steps through the Trainer's events (gradient conflict, task affinity)",
    ("crosstask.analysis.monitors",),
)
TRANSFERABILITY = Registry(
    "transferability",
    "scores of a pretrained model for a labeled target, from its features or predictions, before training",
    ("crosstask.analysis.transferability",),
)
