"""The experiment config: pydantic models, YAML loading, dotted command-line overrides, error messages.

A component (dataset, backbone, method, weighting, optimizer, ...) is chosen by ``name:`` and its other keys
are validated by that component's own config model, found through its registry. Every invalid input ends
in one :class:`~crosstask.errors.ConfigError` naming the file, the key path, the bad value and what is
allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from crosstask.components import (
    ComponentField,
    component,
    format_validation_error,
)
from crosstask.components import validate_component as validate_component  # re-exported: part of the API
from crosstask.components import validate_python as validate_python
from crosstask.data.episodes import EpisodeConfig
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.modules.augment import WarpConfig
from crosstask.registry import (
    ARCHITECTURES,
    BACKBONES,
    DATASETS,
    HEADS,
    METHODS,
    MONITORS,
    NAME_PATTERN,
    OPTIMIZERS,
    SCHEDULERS,
    VALIDATORS,
    WEIGHTINGS,
    StrictModel,
)

DatasetComponent = component(DATASETS)


class DomainConfig(StrictModel):
    """A domain: a dataset, whether its labels are used, and which tasks it has labels for."""

    dataset: DatasetComponent
    labeled: bool = True
    tasks: list[str] | None = Field(default=None, description="tasks labeled in this domain (default: all)")
    batch_size: int | None = Field(default=None, ge=1, description="overrides train.batch_size")
    episodes: EpisodeConfig | None = Field(
        default=None, description="read this domain as few-shot episodes (meta-learning; episodic evaluation)"
    )
    augment: WarpConfig | None = Field(
        default=None,
        description="random affine warps of this stream's images while training ({} for the defaults)",
    )


def check_name(name: str, what: str) -> str:
    """A name used in metric keys and file names: letters, digits, '_', '.', '-'."""
    import re

    if not re.fullmatch(NAME_PATTERN, str(name)):
        raise ValueError(f"{what} name '{name}' may only hold letters, digits, '_', '.' and '-'")
    return name


def check_run_name(name: str) -> str:
    """A run name is one folder name inside ``output_dir``: letters, digits, '_', '.', '-'; not '.' or '..'."""
    import re

    if not re.fullmatch(NAME_PATTERN, str(name)) or name in (".", ".."):
        raise ValueError(
            "not a run name: the run goes to output_dir/<name>, so the name may only hold "
            "letters, digits, '_', '.' and '-', and may not be '.' or '..' (to put runs elsewhere, set output_dir)"
        )
    return name


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed accepts


def check_seed(seed: int) -> int:
    """A seed torch accepts: it must fit in 64 bits."""
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"a seed must fit in 64 bits: use an integer from {SEED_MIN} to {SEED_MAX}")
    return seed


class DataConfig(StrictModel):
    """Training streams (name -> domain) and evaluation sets (name -> domain)."""

    root: Path | None = Field(
        default=None, description="data root; default $CROSSTASK_DATA or ../shared/data"
    )
    train: dict[str, DomainConfig] = Field(min_length=1)
    eval: dict[str, DomainConfig] = Field(default_factory=dict)
    num_workers: int = Field(default=0, ge=0)
    eval_batch_size: int = Field(default=512, ge=1)

    @field_validator("train", "eval")
    @classmethod
    def _domain_names(cls, value: dict[str, DomainConfig]) -> dict[str, DomainConfig]:
        for name in value:
            check_name(name, "domain")
        return value

    @field_validator("eval")
    @classmethod
    def _no_augmented_evaluation(cls, value: dict[str, DomainConfig]) -> dict[str, DomainConfig]:
        warped = [name for name, domain in value.items() if domain.augment is not None]
        if warped:
            raise ValueError(
                f"evaluation set(s) {', '.join(warped)} set augment:, which only training streams use; "
                "remove it (evaluation reads the images as they are)"
            )
        return value


class BottleneckConfig(StrictModel):
    """A shared layer after the backbone: Linear -> (BatchNorm) -> ReLU -> (Dropout)."""

    dim: int = Field(ge=1)
    batch_norm: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class LoRAConfig(StrictModel):
    """LoRA settings (``model.lora`` in a config)."""

    r: int = Field(default=8, ge=1, description="rank of the update B·A")
    alpha: float = Field(default=16.0, gt=0.0, description="scale: the update is multiplied by alpha / r")
    target_modules: list[str] | None = Field(
        default=None,
        description="layers to adapt, by (the end of) their module name, e.g. [layer1, fc.1]; a container "
        "adapts every Linear/Conv2d inside it (default: all of the backbone's)",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    train_heads: bool = Field(
        default=True, description="train the task heads fully (and save them with the adapter)"
    )


class ModelConfig(StrictModel):
    backbone: component(BACKBONES)
    architecture: component(ARCHITECTURES) = Field(default="hard_sharing", validate_default=True)
    bottleneck: BottleneckConfig | None = None
    head: component(HEADS) = Field(default="linear", validate_default=True, description="per-task head")
    init_from: Path | None = Field(
        default=None, description="a run directory or checkpoint whose matching weights start this model"
    )
    lora: LoRAConfig | None = Field(
        default=None,
        description="LoRA adapters (needs peft); train them with method: {name: erm, finetune: lora}",
    )


class EarlyStoppingConfig(StrictModel):
    metric: str = Field(description="an evaluation key: <eval domain>/<task>/<metric>")
    patience: int = Field(default=5, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(default=0.0, ge=0.0)


class ValidationConfig(StrictModel):
    """Model selection without target labels: validators scored at every evaluation."""

    validators: list[component(VALIDATORS)] = Field(
        min_length=1, description="crosstask list validator: source_accuracy, entropy, snd, dev"
    )
    target: str = Field(description="a domain (data.train or data.eval) with target inputs; labels unused")
    source: str | None = Field(
        default=None,
        description="a labeled source validation domain (data.eval), for source_accuracy and dev",
    )
    task: str | None = Field(default=None, description="the classification task to validate (default: first)")
    max_samples: int = Field(default=2000, ge=10, description="samples per domain, a fixed subset")


class TrainConfig(StrictModel):
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="intra-op CPU threads (default: chosen from the model, the batch and the free cores)",
    )
    eval_every: int | None = Field(default=None, ge=1, description="default: only at the end")
    log_every: int = Field(default=50, ge=1)
    checkpoint_every: int | None = Field(default=None, ge=1, description="default: eval_every, else steps")
    grad_clip: float | None = Field(default=None, gt=0)
    accumulate: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    bf16: bool = False
    deterministic: bool = False
    device: str = "auto"
    select: str | None = Field(
        default=None, description="metric that picks checkpoints/best.pt (default: early_stopping.metric)"
    )
    early_stopping: EarlyStoppingConfig | None = None
    validation: ValidationConfig | None = Field(
        default=None, description="unsupervised model selection: which checkpoint each validator picks"
    )
    monitors: list[component(MONITORS)] = Field(
        default_factory=list,
        description="diagnostics read from the steps (crosstask list monitor): gradient_conflict, task_affinity",
    )

    @field_validator("monitors")
    @classmethod
    def _one_monitor_each(cls, value: list[Any]) -> list[Any]:
        names = [m.name for m in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"a monitor may be listed once (each writes diagnostics/<name>.json); twice: {twice}"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got '{value}'")
        return value

    @model_validator(mode="after")
    def _stopping_needs_evaluations(self) -> TrainConfig:
        if self.early_stopping is not None and self.eval_every is None:
            raise ValueError(
                "early_stopping needs train.eval_every: it counts evaluations without improvement"
            )
        return self

    @property
    def select_metric(self) -> str | None:
        return self.select or (self.early_stopping.metric if self.early_stopping else None)


class Experiment(StrictModel):
    """One experiment: tasks, data, model, method, loss weighting, optimizer, schedule and training loop."""

    name: str = Field(
        default="experiment",
        description="the run directory's name: output_dir/<name> (-1, -2, ... when taken)",
    )
    seed: int = Field(default=0, description=f"random seed, an integer from {SEED_MIN} to {SEED_MAX}")
    output_dir: Path = Path("runs")
    tasks: list[Task] = Field(min_length=1)
    data: DataConfig
    model: ModelConfig
    method: component(METHODS) = Field(default="erm", validate_default=True)
    weighting: component(WEIGHTINGS) = Field(default="static", validate_default=True)
    optim: component(OPTIMIZERS) = Field(default="sgd", validate_default=True)
    scheduler: component(SCHEDULERS) = Field(default="constant", validate_default=True)
    train: TrainConfig = Field(default_factory=TrainConfig)

    _source: str = PrivateAttr(default="<config>")

    @field_validator("name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        return check_run_name(value)

    @field_validator("seed")
    @classmethod
    def _seed_fits(cls, value: int) -> int:
        return check_seed(value)

    @model_validator(mode="after")
    def _cross_check(self) -> Experiment:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        for part in ("train", "eval"):
            for domain_name, domain in getattr(self.data, part).items():
                unknown = [t for t in domain.tasks or [] if t not in names]
                if unknown:
                    raise ValueError(
                        f"data.{part}.{domain_name}.tasks names unknown task(s) {unknown}; tasks: {names}"
                    )
        for key in filter(
            None, [self.train.select, self.train.early_stopping and self.train.early_stopping.metric]
        ):
            self.check_metric_key(key)
        return self

    def check_metric_key(self, key: str) -> None:
        """Raise ``ValueError`` unless ``key`` is ``<eval domain>/<task>/<metric>`` of this experiment."""
        parts = key.split("/")
        allowed = self.metric_keys()
        if len(parts) != 3 or key not in allowed:
            raise ValueError(
                f"'{key}' is not an evaluation metric of this experiment; use <eval domain>/<task>/<metric>, "
                f"one of: {', '.join(allowed) or '(no data.eval domains defined)'}"
            )

    def metric_keys(self) -> list[str]:
        by_name = {t.name: t for t in self.tasks}
        keys = []
        for domain_name, domain in self.data.eval.items():
            for task_name in domain.tasks or list(by_name):
                keys += [f"{domain_name}/{task_name}/{m}" for m in by_name[task_name].metric_names]
        return keys

    @property
    def source(self) -> str:
        """Where this config came from (a file path, or ``<config>``)."""
        return self._source

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)


# ----------------------------------------------------------------------------- loading and overrides


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *anchor' merges are allowed to be overridden by the node's own keys
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or malformed YAML raises :class:`ConfigError` with the position."""
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise ConfigError(f"config file not found: {path}{hint}. Pass the path of an experiment YAML file.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"malformed YAML at {where}: {exc.problem or exc}. Fix the syntax there.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"malformed YAML in {path}: {exc}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; an experiment needs at least tasks, data and model.")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of keys (tasks:, data:, model:, ...), not a {type(data).__name__}."
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``data``.

    List items are addressed by index (``tasks.0.num_classes=5``); missing mappings are created.
    """
    import copy

    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed override '{override}': write key.path=value, e.g. train.steps=200")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: depth + 1], override)
        _assign(node, parts[-1], value, parts, override)
    return data


def _child(node: Any, part: str, path: Sequence[str], override: str) -> Any:
    if isinstance(node, list):
        index = _index(node, part, path, override)
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"override '{override}': {'.'.join(path[:-1])} is a value, not a mapping")
    if node.get(part) is None:
        # a block left to its default: a component (optim: sgd) keeps its default's name
        default = _component_default(path)
        node[part] = {} if default is None else {"name": default}
    elif isinstance(node[part], str):
        node[part] = {"name": node[part]}  # a component given by name (backbone: mlp) gains parameters
    return node[part]


def _component_default(path: Sequence[str]) -> str | None:
    """The default component name of the config field at ``path`` (``optim`` -> ``sgd``), if it is a component
    field with a default; None otherwise."""
    from pydantic import BaseModel

    model: Any = Experiment
    field = None
    for depth, part in enumerate(path):
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        if depth < len(path) - 1:
            model = _inner_model(field.annotation)
    if field is None or not any(isinstance(m, ComponentField) for m in field.metadata):
        return None
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = getattr(default, "name", None)
    return default if isinstance(default, str) else None


def _inner_model(annotation: Any) -> Any:
    """The pydantic model a field's annotation holds directly (``X`` or ``X | None``), else None."""
    import typing

    from pydantic import BaseModel

    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _assign(node: Any, part: str, value: Any, path: Sequence[str], override: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, path, override)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"override '{override}': {'.'.join(path[:-1])} is a value, not a mapping")


def _index(node: list, part: str, path: Sequence[str], override: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"override '{override}': {'.'.join(path[:-1])} is a list of {len(node)} items; "
            f"'{part}' is not an index into it"
        )
    return int(part)


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Experiment:
    """Load, override and validate an experiment YAML file."""
    return validate_config(apply_overrides(read_yaml(path), overrides), source=str(path))


def validate_config(data: Mapping[str, Any] | Experiment, source: str = "<config>") -> Experiment:
    """Validate a config mapping into an :class:`Experiment`; errors become one readable ConfigError."""
    if isinstance(data, Experiment):
        return data
    try:
        experiment = Experiment.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    experiment._source = source
    return experiment
