"""Evaluation on few-shot episodes: mean query accuracy over many episodes with its 95 % confidence interval
(the field's convention: ±1.96 standard errors over ≥ 600 test episodes).

A method adapts to each episode's support set with its own procedure (``Method.episode_predictor``: a
meta-learner's inner loop, a new head fitted on frozen features); any other model is scored by the nearest
class mean of its shared features (:func:`nearest_prototype`), which is what ProtoNet does at test time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

from crosstask.data.episodes import Episodes, EpisodeSampler
from crosstask.data.inputs import Inputs, batch_size, concat
from crosstask.errors import ConfigError
from crosstask.models.model import MultiTaskModel

EpisodePredictor = Callable[[Episodes], Tensor]  # -> logits (episodes, queries, ways) or predictions
logger = logging.getLogger(__name__)
EPISODE_METRICS = {"classification": ("accuracy", "accuracy_ci95"), "regression": ("mse", "mse_ci95")}


def flat_features(model: MultiTaskModel, x: Inputs) -> Tensor:
    """The model's shared representation of ``x``, one flat vector per sample."""
    shared = model.forward_all(x).shared
    if shared is None:
        raise ConfigError(
            "this model has no single shared representation (an architecture with experts or towers), so "
            "episodes cannot be scored by feature prototypes; use a meta-learner with a head (maml, anil, ...)"
        )
    return shared.flatten(1)


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """Negative squared Euclidean distances from each query to each class mean of the support (Snell et al.
    2017): (queries, ways)."""
    one_hot = torch.nn.functional.one_hot(support_y, ways).to(support.dtype)
    prototypes = (one_hot.T @ support) / one_hot.sum(0).unsqueeze(1)
    return -torch.cdist(query, prototypes).pow(2)


def nearest_prototype(model: MultiTaskModel) -> EpisodePredictor:
    """Scores episodes by the nearest support class mean of ``model``'s shared features."""

    def predict(episodes: Episodes) -> Tensor:
        if episodes.support_y.is_floating_point():
            raise ConfigError(
                "regression episodes need a method that adapts to each episode (maml, fomaml, metasgd, anil, "
                "reptile, or baseline's fine-tuning): class prototypes are for classification"
            )
        logits = []
        for i in range(len(episodes)):
            support, support_y, query, _ = episodes.episode(i)
            z = flat_features(model, concat([support, query]))
            n = batch_size(support)
            logits.append(prototype_logits(z[:n], support_y, z[n:], episodes.ways))
        return torch.stack(logits)

    return predict


def mean_and_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95 % confidence interval of the mean (1.96 · std / √n)."""
    values = values.double()
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), 1.96 * float(values.std()) / math.sqrt(len(values))


def evaluate_episodes(
    predict: EpisodePredictor,
    sampler: EpisodeSampler,
    count: int,
    device: torch.device,
    kind: str = "classification",
    per_call: int = 8,
) -> dict[str, float]:
    """Over episodes ``0 .. count-1`` of ``sampler``: the mean query accuracy (in %), or for a regression
    task the mean query squared error, and its 95 % interval (the names of :data:`EPISODE_METRICS`)."""
    values = []
    first = 0
    while first < count:  # up to per_call consecutive episodes of one size (fixed episodes may differ)
        size, n = sampler.size(first), 1
        while n < per_call and first + n < count and sampler.size(first + n) == size:
            n += 1
        episodes = sampler.draw(first, n).to(device)
        first += n
        with torch.no_grad():
            outputs = predict(episodes)
        if kind == "regression":
            scores = (outputs.reshape(episodes.query_y.shape) - episodes.query_y).pow(2).mean(1)
        else:
            scores = 100.0 * (outputs.argmax(-1) == episodes.query_y).float().mean(1)
            # the argmax of NaN logits is some class: an accuracy that would look plausible
            finite = torch.isfinite(outputs.reshape(len(scores), -1)).all(1)
            scores = torch.where(finite, scores, torch.full_like(scores, math.nan))
        values.append(scores.cpu())
    scores = torch.cat(values)
    if not torch.isfinite(scores).all():
        logger.warning(
            "episodes of %s: %d of %d gave predictions that are not finite (the adaptation diverged: lower "
            "the method's test_lr / inner_lr / episode_lr); their score is NaN",
            sampler.name,
            int((~torch.isfinite(scores)).sum()),
            len(scores),
        )
    mean, ci95 = mean_and_ci95(scores)
    name, interval = EPISODE_METRICS[kind]
    return {name: mean, interval: ci95}
