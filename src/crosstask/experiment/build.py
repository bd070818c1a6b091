"""Building a run's components from configs: the model, the domains, the validators."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from crosstask.config import Experiment, ModelConfig, ValidationConfig
from crosstask.data.datasets.base import load_dataset
from crosstask.data.domains import Domain
from crosstask.data.tasks import Task
from crosstask.engine.checkpoint import read_model_checkpoint
from crosstask.errors import ConfigError
from crosstask.models.model import MultiTaskModel
from crosstask.registry import VALIDATORS
from crosstask.validators.base import Validation

log = logging.getLogger(__name__)


def build_model(
    config: ModelConfig, tasks: Sequence[Task], input_shape: Sequence[int] | None
) -> MultiTaskModel:
    model = MultiTaskModel(
        config.backbone,
        tasks,
        architecture=config.architecture,
        bottleneck=config.bottleneck.model_dump() if config.bottleneck else None,
        head=config.head,
        input_shape=input_shape,
    )
    if config.init_from is not None:
        _, state = read_model_checkpoint(config.init_from)
        loaded = model.load_matching(state, source=str(config.init_from))
        log.info("initialised %d tensors from %s", len(loaded), config.init_from)
    if config.lora is not None:
        from crosstask.models.lora import apply_lora

        apply_lora(model, **config.lora.model_dump())
    return model


def build_domains(experiment: Experiment, part: str) -> dict[str, Domain]:
    root = experiment.data.root
    return {
        name: Domain(
            name, load_dataset(d.dataset, root), d.labeled if part == "train" else True, d.tasks, d.batch_size
        )
        for name, d in getattr(experiment.data, part).items()
    }


def build_validation(
    config: ValidationConfig | None,
    model: MultiTaskModel,
    train_domains: Mapping[str, Domain],
    eval_domains: Mapping[str, Domain],
    device: torch.device,
    batch_size: int,
) -> Validation | None:
    """The validators of ``train.validation`` on the domains it names, or a config error saying what is wrong."""
    if config is None:
        return None
    domains = {**train_domains, **eval_domains}

    def domain(name: str, key: str) -> Domain:
        if name not in domains:
            raise ConfigError(
                f"train.validation.{key}: no domain named '{name}'; data.train and data.eval have "
                f"{', '.join(domains)}"
            )
        return domains[name]

    tasks = {t.name: t for t in model.tasks}
    task_name = config.task or model.tasks[0].name
    if task_name not in tasks or tasks[task_name].kind != "classification":
        raise ConfigError(
            f"train.validation.task: '{task_name}' must be a classification task of the run "
            f"({', '.join(t.name for t in model.tasks if t.kind == 'classification') or 'none'})"
        )
    validators = [VALIDATORS.get(v.name).obj(v) for v in config.validators]
    needing = [v.name for v in validators if v.needs_source]
    if needing and config.source is None:
        raise ConfigError(
            f"train.validation: validator(s) {', '.join(needing)} need labeled source validation data: set "
            "train.validation.source to a data.eval domain held out from the source"
        )
    source = domain(config.source, "source") if config.source else None
    if config.source is not None and config.source in train_domains:
        log.warning(
            "train.validation.source '%s' is a training stream: source accuracy on training data is optimistic",
            config.source,
        )
    return Validation(
        validators,
        tasks[task_name],
        domain(config.target, "target"),
        source,
        max_samples=config.max_samples,
        device=device,
        batch_size=batch_size,
    )
