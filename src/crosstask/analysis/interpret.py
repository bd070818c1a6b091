"""Interpretability: what a trained model shares and what changed between domains or models.

- :func:`collect`: one pass over a domain (a fixed subset) gathering shared features, task outputs, labels
  and gate weights, in eval mode, drawing nothing from the global random generators.
- :func:`extract_features`: the shared features of a whole dataset, for scikit-learn estimators.
- :func:`gate_usage`: each task's mean weight on each expert over a whole dataset (gated architectures:
  MMoE, CGC/PLE, DSelect-k), not over the last batch, with the entropy of the mean (how spread the use is).
- :func:`embed`: a 2-D embedding of features from several domains together (t-SNE, van der Maaten & Hinton
  2008; UMAP, McInnes et al. 2018, when ``umap-learn`` is installed; PCA), to colour by domain and class.
- :func:`per_class_accuracy`, :func:`per_class_change`: accuracy per class, and its change from one model
  (source-only, say) to another (adapted) on the same data.
- :func:`integrated_gradients` (Sundararajan, Taly & Yan 2017: the path integral of the gradient from a
  baseline, Riemann midpoint sum; the attributions sum to ``f(x) − f(baseline)`` up to the discretization)
  and :func:`saliency` (Simonyan et al. 2014: the absolute input gradient), per task head. Written here: a
  few lines of autograd, no dependency (captum would bring a framework for two formulas).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crosstask.data.domains import Domain
from crosstask.data.inputs import as_inputs, to_device
from crosstask.data.streams import LabelReader, iterate_batches
from crosstask.errors import ConfigError, DataError
from crosstask.models.model import MultiTaskModel


@dataclass
class Collected:
    """What one pass over a domain gathered (on the CPU): shared features (None without a shared
    representation), outputs and labels by task, gate weights by task (empty without gates)."""

    features: Tensor | None
    outputs: dict[str, Tensor]
    labels: dict[str, Tensor]
    gates: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def collect(
    model: MultiTaskModel,
    domain: Domain,
    *,
    limit: int | None = None,
    batch_size: int = 256,
    labeled: bool = True,
) -> Collected:
    """Shared features, outputs, labels and gates of ``model`` on ``domain`` (its first ``limit`` samples);
    ``labeled=False`` reads no label (an unlabeled target's, say)."""
    device = next(model.parameters()).device
    reader = LabelReader(domain, model.tasks, labeled=labeled)
    dataset = domain.dataset
    if limit is not None and limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(limit))
    was_training = model.training
    model.eval()
    features, outputs, labels, gates = [], {}, {}, {}
    try:
        for x, y in iterate_batches(dataset, batch_size):
            out = model.forward_all(to_device(as_inputs(x), device))
            if out.shared is not None:
                features.append(out.shared.float().flatten(1).cpu())
            for task, value in out.outputs.items():
                outputs.setdefault(task, []).append(value.float().cpu())
            for task, value in reader(y).items() if y is not None and labeled else ():
                labels.setdefault(task, []).append(torch.as_tensor(value).cpu())
            for task, value in model.gates().items():
                gates.setdefault(task, []).append(value.float().flatten(1).cpu())
    finally:
        model.train(was_training)
    return Collected(
        torch.cat(features) if features else None,
        {t: torch.cat(v) for t, v in outputs.items()},
        {t: torch.cat(v) for t, v in labels.items()},
        {t: torch.cat(v) for t, v in gates.items()},
    )


def extract_features(
    model: MultiTaskModel, data: Dataset | Domain, *, batch_size: int = 256, limit: int | None = None
) -> Tensor:
    """The shared representation of every sample of ``data`` (the first ``limit``), shape (n, width), in eval
    mode: features for scikit-learn estimators such as the shallow adapters (:mod:`crosstask.shallow`).

    Without a bottleneck, a hard-sharing model's shared representation is the backbone's pooled features; a
    frozen text encoder with ``cache: true`` serves them from its feature cache (computed once per text).
    """
    from crosstask.experiment.build import check_inputs

    for key, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"extract_features: {key} must be a whole number of at least 1, got {value!r}")
    if not isinstance(data, Domain | Dataset):
        raise ConfigError(
            f"extract_features: data must be a dataset (crosstask.ArrayDataset, load_dataset(...), any torch "
            f"Dataset) or a crosstask.Domain, got a {type(data).__name__}"
        )
    domain = data if isinstance(data, Domain) else Domain("features", data, labeled=False)
    if len(domain.dataset) == 0:
        raise DataError(f"extract_features: {domain.name!r} holds no sample")
    check_inputs(model, {}, {domain.name: domain})  # inputs the backbone cannot take: one clear error
    features = collect(model, domain, limit=limit, batch_size=batch_size, labeled=False).features
    if features is None:
        raise ConfigError(
            f"extract_features: architecture {type(model.architecture).__name__} has no representation shared "
            "by the tasks; use hard sharing (the default architecture)"
        )
    return features


def gate_usage(
    model: MultiTaskModel, domain: Domain, *, batch_size: int = 256
) -> dict[str, dict[str, list[float] | float]]:
    """Per task: the mean gate weight on each expert over the whole domain, its standard deviation over the
    samples, and the entropy (nats) of the mean weights (0: one expert; log E: all equally)."""
    gates = collect(model, domain, batch_size=batch_size).gates
    if not gates:
        raise ConfigError(
            f"architecture '{model.architecture_config.name}' has no gates: gate usage is for gated architectures "
            "(mmoe, cgc, ple, dselect_k)"
        )
    usage = {}
    for task, weights in gates.items():
        mean = weights.mean(0)
        entropy = float(-(mean * mean.clamp_min(1e-12).log()).sum())
        usage[task] = {"mean": mean.tolist(), "std": weights.std(0).tolist(), "entropy": entropy}
    return usage


def per_class_accuracy(outputs: Tensor, labels: Tensor) -> dict[int, float]:
    """Accuracy (%) per class present in ``labels`` (samples with a negative label, missing ones, skipped)."""
    predicted = outputs.argmax(1)
    keep = labels >= 0
    return {
        int(c): 100.0 * float((predicted[keep][labels[keep] == c] == c).float().mean())
        for c in torch.unique(labels[keep]).tolist()
    }


def per_class_change(before: Mapping[int, float], after: Mapping[int, float]) -> dict[int, float]:
    """``after − before`` (points) for the classes both hold."""
    return {c: after[c] - before[c] for c in sorted(set(before) & set(after))}


def embed(
    features: Mapping[str, Tensor | np.ndarray],
    *,
    method: str = "tsne",
    seed: int = 0,
    perplexity: float = 30.0,
) -> dict[str, np.ndarray]:
    """One 2-D embedding of the features of several domains together (so their positions compare);
    returns the coordinates per domain, in the order given."""
    arrays = {name: np.asarray(f, dtype=np.float64).reshape(len(f), -1) for name, f in features.items()}
    if not arrays or any(len(a) == 0 for a in arrays.values()):
        raise DataError("embedding: every domain needs at least one sample")
    widths = {a.shape[1] for a in arrays.values()}
    if len(widths) > 1:
        raise DataError(f"embedding: the domains' features have different widths {sorted(widths)}")
    joined = np.concatenate(list(arrays.values()))
    if method == "pca":
        from sklearn.decomposition import PCA

        coords = PCA(n_components=2, random_state=seed).fit_transform(joined)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        if len(joined) < 5:
            raise ConfigError(
                f"t-SNE needs at least 5 points, got {len(joined)}; use more samples or method pca"
            )
        perplexity = min(perplexity, max(1.0, (len(joined) - 1) / 3))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            joined
        )
    elif method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("embedding method 'umap' needs umap-learn: pip install umap-learn") from None
        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(joined)
    else:
        raise ConfigError(f"unknown embedding method '{method}'; choose tsne, umap or pca")
    out, start = {}, 0
    for name, array in arrays.items():
        out[name] = coords[start : start + len(array)]
        start += len(array)
    return out


def _target_logit(
    model: MultiTaskModel, x: Tensor, task: str, target: Tensor | None
) -> tuple[Tensor, Tensor]:
    if task not in model.task_names:
        raise ConfigError(f"no task '{task}' in this model; tasks: {', '.join(model.task_names)}")
    out = model(x)[task]
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if target is None:
        target = (
            out.argmax(1) if out.shape[1] > 1 else torch.zeros(len(out), dtype=torch.long, device=out.device)
        )
    return out.gather(1, target.view(-1, 1)).squeeze(1), target


def saliency(model: MultiTaskModel, x: Tensor, task: str, target: Tensor | None = None) -> Tensor:
    """``|∂ f_target(x) / ∂x|`` per input element (the target class: the predicted one by default)."""
    was_training = model.training
    model.eval()
    try:
        x = x.detach().clone().requires_grad_(True)
        logit, _ = _target_logit(model, x, task, target)
        (grad,) = torch.autograd.grad(logit.sum(), x)
        return grad.abs().detach()
    finally:
        model.train(was_training)


def integrated_gradients(
    model: MultiTaskModel,
    x: Tensor,
    task: str,
    target: Tensor | None = None,
    *,
    baseline: Tensor | None = None,
    steps: int = 32,
) -> Tensor:
    """Integrated gradients of the target logit of ``task`` for inputs ``x`` (a batch), from ``baseline``
    (zeros by default): ``(x − x') ⊙ mean_k ∇f(x' + (k − ½)/m (x − x'))``."""
    if steps < 1:
        raise ConfigError(f"integrated gradients needs at least 1 step, got {steps}")
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        baseline = torch.zeros_like(x) if baseline is None else baseline.detach().expand_as(x)
        with torch.no_grad():
            _, target = _target_logit(model, x, task, target)
        total = torch.zeros_like(x)
        for k in range(steps):
            point = (baseline + (k + 0.5) / steps * (x - baseline)).requires_grad_(True)
            logit, _ = _target_logit(model, point, task, target)
            (grad,) = torch.autograd.grad(logit.sum(), point)
            total += grad
        return ((x - baseline) * total / steps).detach()
    finally:
        model.train(was_training)


def domain_features(
    model: MultiTaskModel, domains: Sequence[Domain], *, limit: int = 500
) -> dict[str, Collected]:
    """:func:`collect` on each domain's first ``limit`` samples."""
    return {d.name: collect(model, d, limit=limit) for d in domains}


def interpret_run(
    run_dir: str,
    *,
    against: str | None = None,
    checkpoint: str = "best",
    limit: int = 500,
    method: str = "tsne",
    attributions: int = 8,
    seed: int = 0,
) -> dict:
    """Everything above for a run's checkpoint on its evaluation domains (first ``limit`` samples each), and
    the per-class change from ``against`` (another run on the same data: source-only, say). Written to
    ``<run>/interpret.json``; returned."""
    import json
    from pathlib import Path

    from crosstask.checkpoint import write_text
    from crosstask.experiment import build_domains, load_run
    from crosstask.experiment.build import check_inputs

    if limit < 1:
        raise ConfigError(f"--limit must be at least 1 sample per domain, got {limit}")
    if attributions < 0:
        raise ConfigError(f"--attributions must be 0 (none) or more, got {attributions}")
    experiment, model = load_run(run_dir, checkpoint)
    every = list(build_domains(experiment, "eval").values())
    domains = [d for d in every if d.episodes is None]  # an episode's classes are not the head's classes
    if not domains:
        raise ConfigError(
            f"{run_dir}: its config defines no data.eval domains to interpret on"
            + (
                " (its evaluation domains are read as few-shot episodes, whose classes change from episode to "
                "episode: add a plain domain under data.eval, without episodes)"
                if every
                else ""
            )
        )
    check_inputs(model, {}, {d.name: d for d in domains})
    collected = domain_features(model, domains, limit=limit)
    report: dict = {"run_dir": str(run_dir), "checkpoint": checkpoint, "samples_per_domain": limit}
    accuracy = {
        d: {
            t: per_class_accuracy(c.outputs[t], c.labels[t]) for t in c.labels if _is_classification(model, t)
        }
        for d, c in collected.items()
    }
    report["per_class_accuracy"] = accuracy
    if against is not None:
        _, reference = load_run(against, checkpoint)
        try:
            check_inputs(reference, {}, {d.name: d for d in domains})
        except DataError as exc:
            raise ConfigError(
                f"--against {against}: its model does not take {run_dir}'s data: {exc}"
            ) from None
        before = domain_features(reference, domains, limit=limit)
        comparable = {
            t.name
            for t in reference.tasks
            if t.kind == "classification"
            and any(u.name == t.name and u.num_classes == t.num_classes for u in model.tasks)
        }
        report["against"] = str(against)
        report["per_class_change"] = {  # the tasks both models have
            d: {
                t: per_class_change(per_class_accuracy(before[d].outputs[t], before[d].labels[t]), classes)
                for t, classes in tasks.items()
                if t in comparable and t in before[d].labels
            }
            for d, tasks in accuracy.items()
        }
        if not any(report["per_class_change"].values()):
            raise ConfigError(f"{against} shares no classification task with {run_dir}: nothing to compare")
        report["embedding_before"] = _embedding(before, method, seed)
    report["embedding"] = _embedding(collected, method, seed)
    if model.gates():
        report["gate_usage"] = {d.name: gate_usage(model, d) for d in domains}
    first = domains[0]
    x, _ = next(iterate_batches(first.dataset, max(attributions, 1)))
    if attributions and isinstance(x, Tensor) and x.dim() >= 3:  # images: attributions per task head
        device = next(model.parameters()).device
        x = x.to(device)
        report["attributions"] = {
            "domain": first.name,
            "inputs": x.cpu().tolist(),
            "integrated_gradients": {
                t: integrated_gradients(model, x, t).cpu().tolist() for t in _heads(model)
            },
        }
    write_text(Path(run_dir) / "interpret.json", json.dumps(report) + "\n", "interpretation")
    return report


def _is_classification(model: MultiTaskModel, task: str) -> bool:
    return next(t for t in model.tasks if t.name == task).kind == "classification"


def _heads(model: MultiTaskModel) -> list[str]:
    return [t.name for t in model.tasks if t.kind == "classification"]


def _embedding(collected: Mapping[str, Collected], method: str, seed: int) -> dict | None:
    """2-D coordinates per domain with each point's labels (None without shared features)."""
    features = {d: c.features for d, c in collected.items() if c.features is not None}
    if len(features) != len(collected):
        return None
    coords = embed(features, method=method, seed=seed)
    return {
        d: {
            "xy": coords[d].round(4).tolist(),
            "labels": {t: v.tolist() for t, v in collected[d].labels.items()},
        }
        for d in collected
    }
