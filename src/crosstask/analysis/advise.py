"""Which method should I use? Measure the situation, then recommend a family and a method with the reason.

From an experiment config (its ``data.train`` domains: labeled sources, a target that is unlabeled or has a
few labels) the advisor measures, before any training:

- label counts: labeled samples per class of the source(s) and of the target;
- the **domain distance** between source and target: proxy A-distance (Ben-David et al. 2010) on the
  starting model's shared features (the config's backbone, with its pretrained weights when it names them)
  and on the inputs as the datasets give them (a ``tabular`` dataset standardizes each file by its own
  statistics, which hides a shift of mean and scale: set ``normalize: false`` to measure it);
- the **transferability** of the starting features: LogME (You et al. 2021) on the target's labels where it
  has them, else on the source's.

Rules (thresholds in the constants below, from our measurements: digits rotated by 15° give a PAD of about
0.75, by 30° about 1.46; MNIST vs USPS pixels about 2):

- one domain, several tasks → multi-task learning (``multitask``; ``crosstask group`` to choose groups);
- several labeled domains and no target → domain generalization (``vrex``);
- a target with labels and little shift: with pretrained weights, fine-tuning on the target (``erm``; a
  linear probe below 10 labels per class, L2-SP toward the pretrained weights below 100, all layers above);
  without, training on the source and the target's labels together (``erm`` on both streams); a target with
  labels and a shift → semi-supervised adaptation (``cdan`` with the labeled target as a stream);
- an unlabeled target: no shift to speak of → source-only training (``erm``); a moderate shift → alignment
  (``cdan``); a strong shift → self-training (``fixmatch`` on images, ``mcc`` otherwise), the strongest
  families on our MNIST→USPS benchmark.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crosstask.errors import ConfigError

SMALL_SHIFT = 0.5  # proxy A-distance below which the domains are taken as the same
STRONG_SHIFT = 1.5  # above: the domains are nearly separable
FEW_LABELS = 10  # labels per class below which only a linear probe is fitted
SOME_LABELS = 100  # labels per class below which fine-tuning is regularized toward the start (L2-SP)
SAMPLES = 1000  # samples per domain that the measurements read


@dataclass
class Advice:
    """The recommendation (family, method, reason), what was measured, and a ready config (a mapping)."""

    family: str
    method: str
    reason: str
    measurements: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def advise(experiment: Any, *, source: str | None = None, target: str | None = None, seed: int = 0) -> Advice:
    """Measure ``experiment``'s source and target domains and recommend how to train (see the module)."""
    from crosstask.analysis.domain_distance import proxy_a_distance
    from crosstask.analysis.interpret import collect
    from crosstask.analysis.transferability import transferability
    from crosstask.experiment import build_domains, build_model
    from crosstask.experiment.build import check_inputs
    from crosstask.models.model import infer_input_shape

    domains = build_domains(experiment, "train")
    labeled = [n for n, d in domains.items() if d.labeled]
    unlabeled = [n for n, d in domains.items() if not d.labeled]
    target = target or (unlabeled[0] if unlabeled else _named_target(domains))
    if target is not None and target not in domains:
        raise ConfigError(f"--target: no training domain '{target}'; data.train has {', '.join(domains)}")
    if source and source not in domains:
        raise ConfigError(f"--source: no training domain '{source}'; data.train has {', '.join(domains)}")
    if source and (source == target or not domains[source].labeled):
        why = "is the target too" if source == target else "is not labeled (labeled: false)"
        raise ConfigError(
            f"--source: domain '{source}' {why}; the source must be a labeled domain other than the target"
        )
    sources = [source] if source else [n for n in labeled if n != target]
    if not sources:
        raise ConfigError("advice needs at least one labeled source domain in data.train (labeled: true)")
    tasks = [t.name for t in experiment.tasks]
    base = experiment.model_dump(mode="json")
    measured: dict[str, Any] = {"sources": sources, "target": target, "tasks": tasks}

    if target is None:
        if len(sources) >= 2:
            return _advice(
                "domain generalization",
                "vrex",
                base,
                measured,
                f"{len(sources)} labeled domains and no target data: train to be invariant across the domains "
                "and test on unseen ones (crosstask lodo measures it)",
            )
        if len(tasks) >= 2:
            return _advice(
                "multi-task learning",
                "multitask",
                base,
                measured,
                f"one domain with {len(tasks)} tasks: train them in one model; `crosstask group` finds which "
                "tasks to train together and `--baselines` measures the transfer",
            )
        raise ConfigError(
            "nothing to advise on: one labeled domain, one task and no target; name a target domain "
            "(an unlabeled domain in data.train, or --target)"
        )

    task = next((t for t in experiment.tasks if t.kind == "classification"), None)
    if task is None:
        raise ConfigError(
            "advice reads a classification task (label counts, LogME); this experiment has none"
        )
    source_domain, target_domain = domains[sources[0]], domains[target]
    for domain in (source_domain, target_domain):
        if len(domain.dataset) < 10:
            raise ConfigError(
                f"domain '{domain.name}' has {len(domain.dataset)} samples; advice needs at least 10"
            )
    with torch.random.fork_rng():  # the starting model's initialization, without touching the caller's state
        torch.manual_seed(seed)
        model = build_model(experiment.model, experiment.tasks, infer_input_shape(source_domain.dataset))
    check_inputs(model, {}, {d.name: d for d in (source_domain, target_domain)})
    model.eval()
    src = collect(model, source_domain, limit=SAMPLES)
    tgt = collect(model, target_domain, limit=SAMPLES, labeled=target_domain.labeled)
    raw_s, raw_t = _raw(source_domain), _raw(target_domain)
    if src.features is not None and tgt.features is not None:
        measured["pad_features"] = proxy_a_distance(src.features.numpy(), tgt.features.numpy(), seed=seed)
    measured["pad_inputs"] = proxy_a_distance(raw_s, raw_t, seed=seed)
    measured["source_labels_per_class"] = _per_class(src.labels.get(task.name), task.num_classes)
    target_labels = tgt.labels.get(task.name) if target_domain.labeled else None
    measured["target_labels_per_class"] = (
        _per_class(target_labels, task.num_classes) if target_labels is not None else 0
    )
    seen, labels = (tgt, target_labels) if target_labels is not None else (src, src.labels.get(task.name))
    if seen.features is not None and labels is not None:
        known = labels >= 0  # missing labels (-1) are no class
        if len(torch.unique(labels[known])) > 1:
            measured["logme"] = transferability("logme", features=seen.features[known], labels=labels[known])[
                "logme"
            ]
            measured["logme_on"] = "target" if target_labels is not None else "source"
    pretrained = bool(getattr(experiment.model.backbone, "weights", None))
    distances = [measured[k] for k in ("pad_features", "pad_inputs") if k in measured]
    shift = measured.get("pad_features", measured["pad_inputs"]) if pretrained else max(distances)
    measured["shift"] = shift
    level = "small" if shift < SMALL_SHIFT else "strong" if shift >= STRONG_SHIFT else "moderate"
    measured["shift_level"] = level
    where = f"proxy A-distance {shift:.2f} between '{sources[0]}' and '{target}' ({level} shift)"
    images = _is_image(source_domain)

    if target_labels is not None:
        per_class = measured["target_labels_per_class"]
        if level == "small" and not pretrained:
            return _advice(
                "joint training",
                "erm",
                base,
                measured,
                f"{where}; no pretrained weights: train on the "
                f"source and the target's {per_class} labels per class together",
                train_on=[*sources, target],
            )
        if level == "small":
            if per_class < FEW_LABELS:
                return _advice(
                    "fine-tuning",
                    "erm",
                    base,
                    measured,
                    f"{where}; {per_class} target labels per class: fit a linear probe on the target",
                    finetune="linear_probe",
                    train_on=[target],
                )
            if per_class < SOME_LABELS:
                return _advice(
                    "fine-tuning",
                    "erm",
                    base,
                    measured,
                    f"{where}; {per_class} target labels per class: fine-tune with L2-SP toward the start",
                    regularizer="l2sp",
                    train_on=[target],
                )
            return _advice(
                "fine-tuning",
                "erm",
                base,
                measured,
                f"{where}; {per_class} target labels per class: fine-tune the whole model on the target",
                finetune="full",
                train_on=[target],
            )
        return _advice(
            "domain adaptation (semi-supervised)",
            "cdan",
            base,
            measured,
            f"{where} and {per_class} target labels per class: align the domains with CDAN while the "
            "target labels train as a labeled stream",
        )
    if level == "small":
        return _advice(
            "source-only",
            "erm",
            base,
            measured,
            f"{where}: the source model should hold on the target; adaptation is not needed",
        )
    if level == "moderate":
        return _advice(
            "domain adaptation (alignment)",
            "cdan",
            base,
            measured,
            f"{where} and no target labels: class-conditional alignment (CDAN)",
        )
    method = "fixmatch" if images else "mcc"
    return _advice(
        "domain adaptation (self-training)",
        method,
        base,
        measured,
        f"{where} and no target labels: self-training ({method}) was the strongest family on our "
        "MNIST→USPS benchmark" + ("" if images else " (FixMatch needs image augmentations)"),
    )


def _named_target(domains: dict[str, Any]) -> str | None:
    return next((n for n in domains if "target" in n.lower()), None)


def _raw(domain: Any) -> np.ndarray:
    from crosstask.data.inputs import as_inputs
    from crosstask.data.streams import iterate_batches

    x, _ = next(iterate_batches(domain.dataset, SAMPLES))
    x = as_inputs(x)
    if isinstance(x, dict):
        x = torch.cat([v.float().flatten(1) for v in x.values()], 1)
    return x.float().flatten(1).numpy()


def _is_image(domain: Any) -> bool:
    from crosstask.data.streams import iterate_batches

    x, _ = next(iterate_batches(domain.dataset, 1))
    return isinstance(x, torch.Tensor) and x.dim() >= 3  # a batch of images (as interpret tells them)


def _per_class(labels: torch.Tensor | None, classes: int) -> int:
    """Labeled samples of the rarest class (0 without labels)."""
    if labels is None or len(labels) == 0:
        return 0
    counts = torch.bincount(labels[labels >= 0].long(), minlength=classes)
    return int(counts.min())


def _advice(
    family: str,
    method: str,
    base: dict[str, Any],
    measured: dict[str, Any],
    reason: str,
    *,
    finetune: str | None = None,
    regularizer: str | None = None,
    train_on: list[str] | None = None,
) -> Advice:
    """The advice with a ready config: ``base`` with the method (and what it needs) set."""
    config = copy.deepcopy(base)
    config["name"] = f"{base.get('name', 'experiment')}_{method}"
    config["method"] = {"name": method}
    if finetune:
        config["method"]["finetune"] = {"name": finetune}
    if regularizer:
        config["method"]["regularizers"] = [{"name": regularizer}]
    if train_on:
        config["data"]["train"] = {
            n: {**d, "labeled": True} for n, d in config["data"]["train"].items() if n in train_on
        }
    if measured.get("target") and method in ("cdan", "fixmatch", "mcc"):
        target = measured["target"]
        train = config["data"]["train"]
        if family.endswith("(semi-supervised)"):  # the target twice: unlabeled to align, labeled to train on
            train[f"{target}_labeled"] = {**train[target], "labeled": True}
            config["method"]["labeled_target"] = f"{target}_labeled"
        train[target] = {**train[target], "labeled": False}
        config["method"].update(source=measured["sources"][0], target=target)
    return Advice(family, method, reason, measured, config)
