"""Building a run's components: the model and domains from a config, and around a model the method, the
weighting, the optimizers and schedules, the streams, the evaluator and the validators; input checks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from crosstask.checkpoint import read_model_checkpoint
from crosstask.config import Experiment, ModelConfig, TrainConfig, ValidationConfig
from crosstask.data.datasets.base import load_dataset
from crosstask.data.domains import Domain
from crosstask.data.episodes import EpisodeStream, episode_sampler
from crosstask.data.inputs import describe, item_shape, repeat
from crosstask.data.streams import MultiStream, Stream
from crosstask.data.tasks import Task
from crosstask.engine.method import Method, StreamSpec
from crosstask.engine.optim import parameter_groups
from crosstask.engine.schedulers import build_scheduler
from crosstask.errors import ConfigError, CrosstaskError, DataError
from crosstask.evaluation.evaluator import Evaluator
from crosstask.models.model import MultiTaskModel
from crosstask.registry import METHODS, OPTIMIZERS, VALIDATORS, WEIGHTINGS, ComponentConfig
from crosstask.validators.base import Validation
from crosstask.weighting.base import Weighting

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
            name,
            load_dataset(d.dataset, root),
            d.labeled if part == "train" else True,
            d.tasks,
            d.batch_size,
            d.episodes,
            d.augment,  # the config refuses warps on evaluation sets
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


# ----------------------------------------------------------------------------- the training components


def stream_specs(train_domains: Mapping[str, Any], tasks: Sequence[Task]) -> list[StreamSpec]:
    """What a method knows of the training domains (Domain objects or their configs)."""
    return [
        StreamSpec(
            name,
            d.labeled,
            tuple(d.tasks if d.tasks is not None else [t.name for t in tasks]),
            getattr(d, "episodes", None),
        )
        for name, d in train_domains.items()
    ]


def build_method(
    config: ComponentConfig, model: MultiTaskModel, train_domains: Mapping[str, Domain]
) -> Method:
    """The method, set up (layers frozen as it asks) and its own modules on the model's device."""
    method = METHODS.get(config.name).obj(config, model, stream_specs(train_domains, model.tasks))
    for spec in method.train_streams:
        if (spec.episodes is not None) != method.reads_episodes:
            raise ConfigError(
                f"data.train.{spec.name} is read as few-shot episodes, which method '{method.name}' does not take: "
                "remove its episodes: key, or use a meta-learner (maml, fomaml, reptile, anil, metasgd, protonet)"
                if spec.episodes is not None
                else f"method '{method.name}' learns from few-shot episodes: give data.train.{spec.name} an "
                "episodes: key (ways, shots, queries, tasks)"
            )
    method.setup()
    method.modules.to(next(model.parameters()).device)
    return method


def build_weighting(config: ComponentConfig, method: Method) -> Weighting:
    """The weighting over the method's objectives; a weight given to a penalty is a config error (a penalty
    carries its own coefficient, which every weighting leaves as it is)."""
    listed = {**getattr(config, "weights", {}), **getattr(config, "leak", {})}
    for name in listed:
        if name in method.penalty_names:
            raise ConfigError(
                f"weighting: '{name}' is a penalty of method '{method.name}', added with its own coefficient "
                f"under every weighting; set it in {method.penalty_coefficient(name)} instead. The weighting "
                f"balances the objectives: {', '.join(method.objective_names) or 'none'}"
            )
    weighting = WEIGHTINGS.get(config.name).obj(config, method.objective_names)
    trade_off = getattr(method.config, "trade_off", 1.0)
    if weighting.scale_invariant and trade_off != 1.0:
        log.warning(
            "weighting '%s' does not change its update when an objective is scaled: method.trade_off=%s has no "
            "effect under it (it balances the objectives whatever their scale)",
            weighting.name,
            trade_off,
        )
    weighting.params.to(next(method.model.parameters()).device)
    return weighting


def build_optimizers(
    optim: ComponentConfig,
    scheduler: ComponentConfig,
    model: MultiTaskModel,
    method: Method,
    weighting: Weighting,
    steps: int,
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, torch.optim.lr_scheduler.LRScheduler]]:
    """One optimizer and schedule per side: the method's :meth:`~Method.optimizer_sides`, and ``main`` for
    every other trainable parameter (all of them, for most methods). The weighting's own parameters are never
    weight-decayed."""
    groups = parameter_groups(model, method.modules.parameters(), optim)
    weighting_params = [p for p in weighting.params.parameters() if p.requires_grad]
    if weighting_params:
        groups.append({"params": weighting_params, "lr": optim.lr, "name": "weighting", "weight_decay": 0.0})
    sides = method.optimizer_sides() or {}
    owner: dict[int, str] = {}
    for side, params in sides.items():
        for p in params:
            if owner.setdefault(id(p), side) != side:
                raise ConfigError(
                    f"method '{method.name}' puts a parameter in two optimizer sides ({owner[id(p)]}, {side}); "
                    "each parameter steps with one optimizer"
                )
    split: dict[str, list[dict]] = {}
    for group in groups:
        for side in [*sides, "main"]:
            params = [p for p in group["params"] if owner.get(id(p), "main") == side]
            if params:
                split.setdefault(side, []).append({**group, "params": params})
    build = OPTIMIZERS.get(optim.name).obj
    optimizers = {side: build(side_groups, optim) for side, side_groups in split.items()}
    return optimizers, {side: build_scheduler(scheduler, o, steps) for side, o in optimizers.items()}


def build_streams(
    train_domains: Mapping[str, Domain],
    method: Method,
    tasks: Sequence[Task],
    config: TrainConfig,
    seed: int,
    device: torch.device,
    num_workers: int,
) -> MultiStream:
    """A stream for every training domain the method draws from (the others are not loaded)."""
    unused = [name for name in train_domains if name not in method.streams_used]
    if unused:
        log.info("method '%s' does not draw from stream(s) %s", method.name, ", ".join(unused))
    return MultiStream(
        {
            name: EpisodeStream(episode_sampler(d, tasks, seed)[1], device, d.augment)
            if d.episodes is not None
            else Stream(
                d,
                list(tasks),
                d.batch_size or config.batch_size,
                seed=seed,
                device=device,
                num_workers=num_workers,
            )
            for name, d in train_domains.items()
            if name in method.streams_used
        }
    )


def build_evaluator(
    eval_domains: Mapping[str, Domain],
    tasks: Sequence[Task],
    config: TrainConfig,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Evaluator | None:
    """The evaluator of ``data.eval``; ``train.select`` and early stopping must name one of its keys."""
    evaluator = None
    if eval_domains:
        evaluator = Evaluator(
            eval_domains,
            list(tasks),
            batch_size=batch_size,
            device=device,
            bf16=config.bf16,
            num_workers=num_workers,
        )
    if config.select_metric and evaluator is None:
        raise ConfigError(
            f"train.select/early_stopping.metric '{config.select_metric}' needs evaluation sets (data.eval, or "
            "eval= in fit)"
        )
    if config.select_metric and evaluator and config.select_metric not in evaluator.metric_keys():
        raise ConfigError(
            f"train.select/early_stopping.metric '{config.select_metric}' is not evaluated; "
            f"evaluation keys: {', '.join(evaluator.metric_keys())}"
        )
    return evaluator


def check_inputs(
    model: MultiTaskModel, train_domains: Mapping[str, Domain], eval_domains: Mapping[str, Domain]
) -> None:
    """Every training stream and evaluation set must fit the model, checked before the first step: the class
    names of the datasets (:func:`check_classes`), its sample shape against the model's input shape and each
    backbone's own check, then one dry forward pass
    per distinct shape (in eval mode, without gradients), so a mismatch is one DataError naming the domain
    and both shapes instead of a shape traceback at step 1."""
    check_classes(model.tasks, train_domains, eval_domains)
    expected = tuple(model.input_shape) if isinstance(model.input_shape, list | tuple) else model.input_shape
    tried: dict[str, str] = {}
    device = next(model.parameters()).device
    for part, domains in (("data.train", train_domains), ("data.eval", eval_domains)):
        for name, domain in domains.items():
            if len(domain.dataset) == 0:
                continue
            sample = first_input(domain.dataset)
            shape = item_shape(sample)
            where = f"{part}.{name}"
            if expected is not None and not all(b.same_input(shape, expected) for b in model.backbones()):
                same_kind = (
                    set(shape) == set(expected)
                    if isinstance(shape, Mapping) and isinstance(expected, Mapping)
                    else not isinstance(shape, Mapping) and not isinstance(expected, Mapping)
                )
                remedy = (
                    "give every domain the same input size (resize or crop the data: e.g. the dataset's size "
                    "option)"
                    if same_kind
                    else "give every domain the same kind of input (tensors, or dicts with the same keys such "
                    "as token ids)"
                )
                raise DataError(
                    f"{where} gives inputs of shape {describe(shape)}, but the model takes {describe(expected)} "
                    f"(model.input_shape, from the first training domain); {remedy}"
                )
            info = getattr(domain.dataset, "info", None)
            for backbone in model.backbones():
                try:
                    backbone.validate_input(shape)
                    if isinstance(info, Mapping):
                        backbone.validate_data(info)
                except CrosstaskError as exc:
                    raise DataError(f"{where}: {exc}") from None
            key = describe(shape)
            if key in tried:
                continue
            tried[key] = where
            _dry_forward(model, repeat(sample, 2, device), where, shape)


def class_names(dataset: Dataset) -> dict[str | None, list[str]]:
    """The class names a dataset declares, by label (``info["classes"]`` a mapping), or for its one label
    (``None``: a list, or an image folder's ``classes``); empty when it declares none."""
    while True:  # through wrappers (torch's Subset, a split of an image folder): the first that knows
        info = getattr(dataset, "info", None)
        classes = info.get("classes") if isinstance(info, Mapping) else getattr(dataset, "classes", None)
        if classes is not None or not hasattr(dataset, "dataset"):
            break
        dataset = dataset.dataset
    if isinstance(classes, Mapping):
        return {str(k): [str(c) for c in v] for k, v in classes.items() if isinstance(v, list | tuple)}
    if isinstance(classes, list | tuple):
        return {None: [str(c) for c in classes]}
    return {}


def check_classes(
    tasks: Sequence[Task], train_domains: Mapping[str, Domain], eval_domains: Mapping[str, Domain]
) -> None:
    """A class index must name the same class in every domain: datasets that number their classes from their
    own files (text, tabular, image folders) disagree when one file lacks a class, and would be scored against
    the wrong classes without a word. Checked for the labels the classification tasks read; episodic domains
    relabel their classes per episode and are skipped."""
    read = {task.label or task.name for task in tasks if task.kind == "classification"}
    if not read:
        return
    seen: dict[str | None, tuple[str, list[str]]] = {}
    for part, domains in (("data.train", train_domains), ("data.eval", eval_domains)):
        for name, domain in domains.items():
            if domain.episodes is not None:
                continue
            for label, names in class_names(domain.dataset).items():
                if label is not None and label not in read:
                    continue
                where = f"{part}.{name}"
                if label not in seen:
                    seen[label] = (where, names)
                    continue
                first, expected = seen[label]
                if names != expected:
                    what = f"label '{label}' numbers" if label is not None else "its labels number"
                    raise DataError(
                        f"{where}: {what} the classes {_shown(names)}, but {first} numbers them "
                        f"{_shown(expected)}: the same index would mean different classes. Give every domain "
                        "the same classes in the same order: list them in classes: (text and tabular data: in "
                        "the label, labels: {y: {column: y, classes: [neg, pos]}}; image_folder: classes: [cat, "
                        "dog], a class may lack its folder)"
                    )


def _shown(names: list[str]) -> str:
    return "[" + ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") + f"] ({len(names)})"


def first_input(dataset: Dataset) -> object:
    sample = dataset[0]
    return sample[0] if isinstance(sample, tuple | list) else sample


def _dry_forward(model: MultiTaskModel, x: object, where: str, shape: object) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{where}: the model cannot take this domain's inputs of shape {describe(shape)} "
            f"({type(exc).__name__}: {first_line}). Check the data's input size and channels against the "
            "backbone (crosstask list backbone), or give the model the input shape of this data"
        ) from None
    finally:
        model.train(was_training)


def warn_selection(experiment: Experiment) -> None:
    """Warn when ``train.select`` picks best.pt on an evaluation set that is not the unlabeled target domain
    while there is one: the checkpoint is then chosen on source-like data. (Choosing without target labels is
    what ``train.validation`` does.)"""
    metric = experiment.train.select_metric
    unlabeled = {n: d for n, d in experiment.data.train.items() if not d.labeled}
    if metric is None or not unlabeled:
        return
    domain = metric.split("/")[0]
    chosen = experiment.data.eval.get(domain)
    if chosen is None:
        return

    def family(d: Any) -> dict[str, Any]:  # the dataset without what only picks rows (split, limit, ...)
        data = d.dataset.model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in {"split", "limit", "per_class", "split_seed"}}

    if all(family(chosen) != family(d) for d in unlabeled.values()):
        log.warning(
            "train.select is '%s': best.pt is chosen on '%s', which is not the unlabeled target domain (%s) "
            "but looks like source data; to choose on the target, evaluate it and select its metric, or choose "
            "without target labels with train.validation",
            metric,
            domain,
            ", ".join(unlabeled),
        )
