"""Running experiments: from a config (``run``), from Python objects (``fit``), and evaluating a run.

Both entry points end in :func:`train`, which builds the method, weighting, optimizer, schedule, streams
and evaluator around a model and hands them to the one :class:`~crosstask.engine.trainer.Trainer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from crosstask.checkpoint import read_method_state, read_model_checkpoint
from crosstask.config import (
    Experiment,
    TrainConfig,
    check_name,
    check_seed,
    component,
    load_config,
    validate_component,
    validate_config,
    validate_python,
)
from crosstask.data.domains import Domain
from crosstask.data.episodes import EpisodeConfig
from crosstask.data.inputs import as_inputs
from crosstask.engine.events import Callback
from crosstask.engine.logging import Progress
from crosstask.engine.run_dir import RunDir
from crosstask.engine.trainer import Trainer
from crosstask.errors import ConfigError, RunError, RunInterrupted
from crosstask.evaluation.evaluator import Evaluator
from crosstask.experiment.build import (
    build_domains,
    build_evaluator,
    build_method,
    build_model,
    build_optimizers,
    build_streams,
    build_validation,
    build_weighting,
    check_inputs,
    first_input,
    stream_specs,
    warn_selection,
)
from crosstask.experiment.runtime import (
    choose_threads,
    deterministic_mode,
    resolve_device,
    seed_everything,
    threads,
)
from crosstask.models.model import MultiTaskModel, infer_input_shape
from crosstask.modules.augment import WarpConfig
from crosstask.provenance import code_revision, config_hash
from crosstask.registry import METHODS, MONITORS, OPTIMIZERS, SCHEDULERS, WEIGHTINGS, ComponentConfig

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run leaves: its directory, its summary, and the trained model (the last weights)."""

    run_dir: Path
    summary: dict[str, Any]
    model: MultiTaskModel
    baselines: dict[str, RunResult] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """Evaluation metrics of the final model: ``{"<domain>/<task>/<metric>": value}``."""
        return self.summary["final"]


# ----------------------------------------------------------------------------- the shared path


def train(
    model: MultiTaskModel,
    *,
    train_domains: Mapping[str, Domain],
    eval_domains: Mapping[str, Domain],
    method: ComponentConfig,
    weighting: ComponentConfig,
    optim: ComponentConfig,
    scheduler: ComponentConfig,
    config: TrainConfig,
    run_dir: RunDir,
    name: str,
    seed: int,
    num_workers: int = 0,
    eval_batch_size: int = 512,
    resume: bool = False,
    progress: Progress | None = None,
    callbacks: Sequence[Callback] = (),
    resolved: Mapping[str, Any] | None = None,
) -> RunResult:
    """Train ``model`` with a named method and weighting; the common end of :func:`run` and :func:`fit`.

    ``resolved`` is the run's resolved config (what ``config.yaml`` holds): its hash goes into the summary
    with the code revision.
    """
    device = resolve_device(config.device)
    model.to(device)
    method_obj = build_method(method, model, train_domains)
    used = {name: d for name, d in train_domains.items() if name in method_obj.streams_used}
    check_inputs(model, used, eval_domains)
    weighting_obj = build_weighting(weighting, method_obj)
    optimizers, schedulers = build_optimizers(
        optim, scheduler, model, method_obj, weighting_obj, config.steps
    )
    streams = build_streams(train_domains, method_obj, model.tasks, config, seed, device, num_workers)
    evaluator = build_evaluator(eval_domains, model.tasks, config, device, eval_batch_size, num_workers)
    validation = build_validation(
        config.validation, model, train_domains, eval_domains, device, eval_batch_size
    )
    provenance = {"revision": code_revision(), "config_hash": config_hash(resolved) if resolved else None}
    monitors = [MONITORS.get(m.name).obj(m) for m in config.monitors]
    trainer = Trainer(
        model=model,
        method=method_obj,
        weighting=weighting_obj,
        optimizers=optimizers,
        schedulers=schedulers,
        streams=streams,
        evaluator=evaluator,
        config=config,
        run_dir=run_dir,
        device=device,
        progress=progress,
        name=name,
        validation=validation,
        callbacks=[*monitors, *callbacks],
        provenance=provenance,
    )
    n_threads = config.threads
    if n_threads is None and device.type == "cpu":
        n_threads = choose_threads(
            None, sum(p.numel() for p in model.parameters()), _batch_elements(train_domains, config)
        )
    with threads(n_threads or torch.get_num_threads()), deterministic_mode(config.deterministic):
        summary = trainer.fit(resume=resume)
    from crosstask.models.lora import has_lora, save_adapter

    if has_lora(model):  # the adapter alone: a few MB to ship beside the base weights
        save_adapter(model, run_dir.path / "adapter.pt")
    return RunResult(run_dir.path, summary, model)


def _batch_elements(train_domains: Mapping[str, Domain], config: TrainConfig) -> int:
    """Input elements of one training batch of the first stream (what the thread choice weighs)."""
    domain = next(iter(train_domains.values()))
    if len(domain.dataset) == 0:
        return 0
    x = as_inputs(first_input(domain.dataset))
    numel = sum(v.numel() for v in x.values()) if isinstance(x, Mapping) else x.numel()
    return (domain.batch_size or config.batch_size) * numel


@contextmanager
def releasing(directory: RunDir) -> Iterator[None]:
    """A run that fails before training wrote anything does not keep its directory (and so its name)."""
    try:
        yield
    except BaseException:
        directory.release_if_unused()
        raise


# ----------------------------------------------------------------------------- from a config


def run(
    config: Experiment | Mapping[str, Any] | str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    run_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    baselines: bool = False,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Run an experiment from a YAML path, a config mapping or an :class:`Experiment`.

    The resolved config is saved as ``config.yaml`` in the run directory (``output_dir/name``, or
    ``name-1``, ... when that exists). ``resume=True`` continues the latest ``output_dir/name[-N]`` (or
    ``run_dir``) from its last checkpoint; its saved config must match except for ``train.steps``.
    ``baselines=True`` also trains every task alone from the same config (``<run dir>/baselines/<task>``) and
    adds Δm% (lower is better) and the baselines' metrics to the summary (see :mod:`crosstask.baselines`).
    ``callbacks`` receive the Trainer's events (:class:`~crosstask.engine.events.Callback`).
    """
    if isinstance(config, str | os.PathLike):
        experiment = load_config(config, overrides)
    else:
        if overrides:
            from crosstask.config import apply_overrides

            data = config.model_dump(mode="json") if isinstance(config, Experiment) else dict(config)
            config = apply_overrides(data, overrides)
        experiment = validate_config(config)
    seed_everything(experiment.seed)
    warn_selection(experiment)
    train_domains = build_domains(experiment, "train")
    eval_domains = build_domains(experiment, "eval")
    input_shape = infer_input_shape(next(iter(train_domains.values())).dataset)
    model = build_model(experiment.model, experiment.tasks, input_shape)
    directory = (
        RunDir.at(run_dir, resume=resume)
        if run_dir is not None
        else RunDir.create(experiment.output_dir, experiment.name, resume=resume)
    )
    resolved = experiment.model_dump(mode="json")
    with releasing(directory):
        _save_config(directory, resolved, resume)
        result = _train_experiment(
            experiment, model, train_domains, eval_domains, directory, resume, progress, callbacks, resolved
        )
    if baselines and result.summary.get("status") == "interrupted":
        raise RunInterrupted(
            f"{directory} was interrupted; its single-task baselines were not trained. Resume it with --resume "
            "(and --baselines)"
        )
    if baselines:
        from crosstask.baselines import baseline_summary, single_task_config

        for task in experiment.tasks:
            baseline = run(
                single_task_config(experiment, task.name),
                run_dir=directory.path / "baselines" / task.name,
                resume=resume,
                progress=progress,
            )
            if baseline.summary.get("status") == "interrupted":
                raise RunInterrupted(
                    f"the single-task baseline of '{task.name}' ({baseline.run_dir}) was interrupted; resume with "
                    "--resume --baselines"
                )
            result.baselines[task.name] = baseline
        result.summary.update(baseline_summary(result.metrics, result.baselines))
        directory.write_json(directory.summary, result.summary)
    return result


def _train_experiment(
    experiment: Experiment,
    model: MultiTaskModel,
    train_domains: dict[str, Domain],
    eval_domains: dict[str, Domain],
    directory: RunDir,
    resume: bool,
    progress: Progress | None,
    callbacks: Sequence[Callback],
    resolved: Mapping[str, Any],
) -> RunResult:
    return train(
        model,
        train_domains=train_domains,
        eval_domains=eval_domains,
        method=experiment.method,
        weighting=experiment.weighting,
        optim=experiment.optim,
        scheduler=experiment.scheduler,
        config=experiment.train,
        run_dir=directory,
        name=directory.path.name,
        seed=experiment.seed,
        num_workers=experiment.data.num_workers,
        eval_batch_size=experiment.data.eval_batch_size,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
        resolved=resolved,
    )


def _save_config(directory: RunDir, resolved: dict[str, Any], resume: bool) -> None:
    """Write config.yaml; on resume, refuse a config that differs from the saved one in what it trains
    (train.steps, name and output_dir may differ)."""
    if resume and directory.config.exists():
        saved = _normalized(yaml.safe_load(directory.config.read_text()))
        differences = _differences(saved, _normalized(resolved), ignore={"train.steps", "name", "output_dir"})
        if differences:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences[:5])
            raise RunError(
                f"cannot resume {directory}: the config differs from the one it was started with ({shown}). "
                "Resume with the same config (train.steps may change), or start a new run without --resume."
            )
    directory.config.write_text(yaml.safe_dump(resolved, sort_keys=False))


def _normalized(config: Any) -> Any:
    """A saved or resolved config in the current schema's form (defaults filled in, components as mappings),
    so that a config written by an earlier version compares equal to the same config now. Parts the schema
    does not accept are compared as they are."""
    if not isinstance(config, dict):
        return config
    try:
        return validate_config(config).model_dump(mode="json")
    except ConfigError:
        pass
    out = dict(config)  # a ct.fit run: in-memory data, components and the train section
    families = {"method": METHODS, "weighting": WEIGHTINGS, "optim": OPTIMIZERS, "scheduler": SCHEDULERS}
    for key, registry in families.items():
        if key in out:
            with suppress(ConfigError):
                out[key] = validate_component(component(registry), out[key], key).model_dump(mode="json")
    if isinstance(out.get("train"), dict):
        with suppress(ConfigError):
            out["train"] = validate_python(TrainConfig, out["train"], "train").model_dump(mode="json")
    return out


def _differences(a: Any, b: Any, ignore: set[str], prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if path not in ignore:
                out += _differences(a.get(key), b.get(key), ignore, path)
        return out
    return [] if a == b else [(prefix, a, b)]


# ----------------------------------------------------------------------------- from Python objects


def _as_domain(
    name: str,
    value: Dataset | Domain,
    labeled: bool,
    episodes: EpisodeConfig | Mapping[str, Any] | None = None,
) -> Domain:
    """A Domain named ``name`` (a copy: the caller's object is left as it is); ``episodes`` applies unless
    the Domain sets its own."""
    try:
        check_name(name, "stream or evaluation set")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(value, Domain):
        domain = replace(value, name=name)
    elif not isinstance(value, Dataset) and not hasattr(value, "__getitem__"):
        raise ConfigError(
            f"{name}= must be a torch Dataset or a crosstask Domain, got {type(value).__name__}"
        )
    else:
        domain = Domain(name, value, labeled)
    chosen = domain.episodes if domain.episodes is not None else episodes
    if chosen is not None and not isinstance(chosen, EpisodeConfig):
        chosen = validate_python(EpisodeConfig, dict(chosen), f"{name}.episodes")
    warps = domain.augment
    if warps is not None and not isinstance(warps, WarpConfig):
        warps = validate_python(WarpConfig, dict(warps), f"{name}.augment")
    return replace(domain, episodes=chosen, augment=warps)


def _describe(dataset: Dataset) -> str:
    """A stable description of an in-memory dataset for the saved config (no memory addresses)."""
    try:
        return f"{type(dataset).__name__} of {len(dataset)} samples"
    except TypeError:
        return type(dataset).__name__


def fit(
    model: MultiTaskModel,
    *,
    method: str | Mapping[str, Any] = "erm",
    data: Dataset | None = None,
    source: Dataset | Domain | None = None,
    target: Dataset | Domain | None = None,
    streams: Mapping[str, Dataset | Domain] | None = None,
    eval: Mapping[str, Dataset | Domain] | None = None,
    episodes: EpisodeConfig | Mapping[str, Any] | None = None,
    eval_episodes: EpisodeConfig | Mapping[str, Any] | None = None,
    weighting: str | Mapping[str, Any] = "static",
    optim: str | Mapping[str, Any] = "sgd",
    scheduler: str | Mapping[str, Any] = "constant",
    steps: int = 1000,
    batch_size: int = 32,
    name: str = "fit",
    output_dir: str | os.PathLike = "runs",
    seed: int = 0,
    resume: bool = False,
    num_workers: int = 0,
    eval_batch_size: int = 512,
    progress: Progress | None = None,
    callbacks: Sequence[Callback] = (),
    **train_options: Any,
) -> RunResult:
    """Train ``model`` on plain datasets with a named method and weighting.

    Args:
        model: a :class:`MultiTaskModel` or :class:`TransferModel`.
        method: ``"erm"``, ``"multitask"``, ... or a config mapping (``{"name": "erm", "finetune": "linear_probe"}``).
        data: a labeled dataset, trained as the stream ``train`` (multi-task data, or plain supervised data).
        source: a labeled source dataset (stream ``source``).
        target: an unlabeled target dataset (stream ``target``); pass ``Domain("target", ds, labeled=True)``
            for labeled target data.
        streams: more streams by name, as datasets (labeled) or :class:`Domain` objects.
        eval: evaluation sets by name; each is scored with every task's metrics.
        episodes, eval_episodes: read the training streams / the evaluation sets as few-shot episodes
            (meta-learning: ``{"ways": 5, "shots": 1, "queries": 15, "tasks": 4}``, see
            :class:`crosstask.data.episodes.EpisodeConfig`), unless a :class:`Domain` sets its own.
        weighting, optim, scheduler: by name or config mapping.
        steps, batch_size, **train_options: keys of the ``train:`` config section (``eval_every``, ``bf16``,
            ``grad_clip``, ``accumulate``, ``early_stopping``, ``device``, ...).
        name, output_dir, seed, resume: where the run goes; ``resume=True`` continues the latest
            ``output_dir/name[-N]``.
        num_workers, eval_batch_size: data loading for datasets that are not held in memory.

    Datasets yield ``(x, y)``, ``(x, {task: y})`` or, unlabeled, ``x``.
    """
    if not isinstance(model, MultiTaskModel):
        raise ConfigError(
            f"fit() trains a crosstask model, got {type(model).__name__}; wrap your network: "
            "ct.MultiTaskModel(module, tasks) (the module needs an int num_features) or ct.TransferModel(...)"
        )
    domains: dict[str, Domain] = {}
    if data is not None:
        domains["train"] = _as_domain("train", data, True, episodes)
    if source is not None:
        domains["source"] = _as_domain("source", source, True, episodes)
    if target is not None:
        domains["target"] = _as_domain("target", target, False, episodes)
    for key, value in (streams or {}).items():
        domains[key] = _as_domain(key, value, True, episodes)
    if not domains:
        raise ConfigError("fit() needs training data: pass data=, source= (and target=), or streams=")
    eval_domains = {k: _as_domain(k, v, True, eval_episodes) for k, v in (eval or {}).items()}
    for key, domain in eval_domains.items():
        if domain.augment is not None:
            raise ConfigError(
                f"evaluation set '{key}' sets augment, which only training streams use; pass its Domain "
                "without augment= (evaluation reads the images as they are)"
            )
    train_config = validate_python(
        TrainConfig, {"steps": steps, "batch_size": batch_size, **train_options}, "train"
    )
    components = {
        "method": validate_component(component(METHODS), method, "method"),
        "weighting": validate_component(component(WEIGHTINGS), weighting, "weighting"),
        "optim": validate_component(component(OPTIMIZERS), optim, "optim"),
        "scheduler": validate_component(component(SCHEDULERS), scheduler, "scheduler"),
    }
    try:
        check_seed(seed)
    except ValueError as exc:
        raise ConfigError(f"fit(seed={seed}): {exc}") from None
    seed_everything(seed)
    directory = RunDir.create(output_dir, name, resume=resume)
    resolved = {
        "name": name,
        "seed": seed,
        "model": model.spec(),
        "data": {
            part: {
                k: {
                    "dataset": _describe(d.dataset),
                    "labeled": d.labeled,
                    "tasks": d.tasks,
                    **({"episodes": d.episodes.model_dump(mode="json")} if d.episodes is not None else {}),
                    **({"augment": d.augment.model_dump(mode="json")} if d.augment is not None else {}),
                }
                for k, d in ds.items()
            }
            for part, ds in (("train", domains), ("eval", eval_domains))
        },
        **{k: v.model_dump(mode="json") for k, v in components.items()},
        "train": train_config.model_dump(mode="json"),
    }
    with releasing(directory):
        _save_config(directory, resolved, resume)
        return train(
            model,
            train_domains=domains,
            eval_domains=eval_domains,
            config=train_config,
            run_dir=directory,
            name=directory.path.name,
            seed=seed,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            resume=resume,
            progress=progress,
            callbacks=callbacks,
            resolved=resolved,
            **components,
        )


# ----------------------------------------------------------------------------- evaluating a finished run


def load_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", overrides: Sequence[str] = ()
) -> tuple[Experiment, MultiTaskModel]:
    """A run's config (with ``overrides``) and its model with the weights of ``checkpoint`` (best, last or
    best_<validator>), on the config's device, in eval mode."""
    directory = RunDir(run_dir)
    if not directory.config.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    ignored = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in ("model", "tasks")]
    if ignored:
        log.warning(
            "%s: the model is rebuilt from its checkpoint, so %s change nothing; override data.eval and method "
            "keys only",
            run_dir,
            " ".join(ignored),
        )
    try:
        experiment = load_config(directory.config, overrides)
    except ConfigError as exc:
        if overrides:
            try:
                load_config(directory.config)
            except ConfigError:
                pass
            else:  # the run's own config is fine: the overrides are at fault
                reason = str(exc).rstrip(".")
                raise RunError(
                    f"the overrides {' '.join(overrides)} do not fit the config of {run_dir}: {reason}. Fix or "
                    "drop the overrides (the run's config.yaml is fine)"
                ) from None
        raise RunError(
            f"{directory.config} is not a runnable experiment config (runs made by ct.fit hold in-memory data; "
            f"evaluate those in Python with crosstask.Evaluator): {exc}"
        ) from None
    spec, state = read_model_checkpoint(directory.path, prefer=checkpoint)
    model = MultiTaskModel.from_spec(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise RunError(
            f"the weights in {directory.path}'s {checkpoint} checkpoint do not fit the model its spec describes "
            f"({detail[1].strip() if len(detail) > 1 else detail[0]}); the checkpoint was changed or written by "
            "another version. Evaluate another checkpoint (--checkpoint last) or retrain"
        ) from None
    model.to(resolve_device(experiment.train.device))
    model.eval()
    return experiment, model


def evaluate_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", overrides: Sequence[str] = ()
) -> dict[str, float]:
    """Re-score a run's checkpoint on its config's evaluation sets (``overrides`` may change them), with the
    method's test-time procedure when it has one (TENT's ``test_time_steps``, say)."""
    experiment, model = load_run(run_dir, checkpoint, overrides)
    directory = RunDir(run_dir)
    device = next(model.parameters()).device
    eval_domains = build_domains(experiment, "eval")
    if not eval_domains:
        raise RunError(
            f"{directory.config} defines no data.eval sets to evaluate on; add some or pass overrides"
        )
    check_inputs(model, {}, eval_domains)
    evaluator = Evaluator(
        eval_domains,
        model.tasks,
        batch_size=experiment.data.eval_batch_size,
        device=device,
        bf16=experiment.train.bf16,
        num_workers=experiment.data.num_workers,
    )
    method = METHODS.get(experiment.method.name).obj(
        experiment.method, model, stream_specs(experiment.data.train, model.tasks)
    )
    state = read_method_state(directory.path, checkpoint)
    if state is not None:  # the method's own modules, as trained (Meta-SGD's step sizes)
        try:
            method.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise RunError(
                f"{run_dir}: the checkpoint's method state does not fit method '{experiment.method.name}' "
                f"({str(exc).strip().splitlines()[0]}): the run was trained with another method or other "
                "method keys; evaluate it with the method.name and keys it was trained with"
            ) from None
    method.modules.to(device)
    return evaluator.evaluate(model, method.predictor(), method.episode_predictor())
