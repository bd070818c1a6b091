"""Few-shot episodes from any labeled dataset: N-way K-shot Q-query tasks, drawn deterministically.

An episode picks ``ways`` classes of one label and, from each, ``shots`` support and ``queries`` query
samples; its labels are the classes' positions in the episode (0..ways-1), so the model never sees a
dataset's class index. A training step draws ``tasks`` episodes (the meta-batch). Episode ``i`` of a stream
is drawn with a generator seeded by (run seed, stream name, i): the stream's whole state is the number of
episodes drawn, so a resumed run sees exactly the episodes an uninterrupted one would have.

Classes are split between meta-training, meta-validation and meta-testing by ``classes`` (a deterministic
partition of the label's classes by ``class_seed`` and ``class_fractions``), or a dataset's own class-disjoint
parts are used whole (``classes: all``; Omniglot's background sets). Fixed episodes (Lake et al.'s Omniglot
runs) come from labels that name each sample's episode and role (``fixed``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import Dataset

from crosstask.data.domains import Domain
from crosstask.data.inputs import Inputs, as_inputs, select, stack, to_device
from crosstask.data.streams import stream_seed, warp
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError, DataError
from crosstask.modules.augment import WarpConfig
from crosstask.registry import StrictModel


class FixedEpisodes(StrictModel):
    """Episodes given by the data: each sample's episode and role (0 support, 1 query) are labels."""

    episode: str = Field(default="run", description="label key holding each sample's episode")
    role: str = Field(default="role", description="label key holding 0 for a support sample, 1 for a query")


class EpisodeConfig(StrictModel):
    """How a domain is read as few-shot episodes (``data.train.<name>.episodes``, ``data.eval.<name>.episodes``)."""

    ways: int = Field(default=5, ge=1, description="classes (groups) per episode (N); 1 for regression tasks")
    shots: int = Field(default=1, ge=1, description="support samples per class (K)")
    queries: int = Field(default=15, ge=1, description="query samples per class")
    tasks: int = Field(default=1, ge=1, description="episodes per training step (the meta-batch)")
    episodes: int = Field(default=600, ge=1, description="episodes an evaluation averages over")
    label: str | None = Field(
        default=None,
        description="label key of the classes (default: the task's label; regression: the group, e.g. function)",
    )
    classes: Literal["all", "train", "val", "test"] = Field(
        default="all", description="which part of the classes: all, or a deterministic class split"
    )
    class_fractions: tuple[float, float, float] = Field(
        default=(0.6, 0.2, 0.2), description="fractions of the classes in the train/val/test class parts"
    )
    class_seed: int = Field(default=0, description="seed of the class split (independent of the run's seed)")
    fixed: FixedEpisodes | None = Field(default=None, description="episodes given by the data's labels")

    @model_validator(mode="after")
    def _fractions(self) -> EpisodeConfig:
        if any(f < 0 for f in self.class_fractions) or not math.isclose(sum(self.class_fractions), 1.0):
            raise ValueError(
                f"class_fractions must be three non-negative numbers summing to 1, got {self.class_fractions}"
            )
        return self

    @property
    def per_class(self) -> int:
        return self.shots + self.queries


@dataclass
class Episodes:
    """A batch of episodes: inputs with a leading episode dimension, labels 0..ways-1 per episode."""

    support: Inputs  # (episodes, ways * shots, ...)
    support_y: Tensor  # (episodes, ways * shots): positions 0..ways-1, or regression targets
    query: Inputs  # (episodes, ways * queries, ...)
    query_y: Tensor  # (episodes, ways * queries)
    ways: int

    def __len__(self) -> int:
        return len(self.support_y)

    def episode(self, i: int) -> tuple[Inputs, Tensor, Inputs, Tensor]:
        """Support inputs and labels, query inputs and labels of episode ``i``."""
        return select(self.support, i), self.support_y[i], select(self.query, i), self.query_y[i]

    def to(self, device: torch.device) -> Episodes:
        return Episodes(
            to_device(self.support, device),
            self.support_y.to(device),
            to_device(self.query, device),
            self.query_y.to(device),
            self.ways,
        )


def _labels(dataset: Dataset, key: str, where: str) -> Tensor:
    """Label ``key`` of every sample of ``dataset`` (dataset labels, not task labels)."""
    from crosstask.data.datasets.base import class_labels

    try:
        labels = class_labels(dataset, key, where)
    except ConfigError as exc:
        raise ConfigError(f"{where}: episodes read label '{key}': {exc}") from None
    if labels.dtype.is_floating_point or labels.ndim != 1:
        raise DataError(f"{where}: episodes need one integer class per sample in label '{key}'")
    return labels.long()


def _choose(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct indices of ``range(n)``, uniformly: by rejection when ``k`` is small against ``n`` (a
    permutation of 100000 classes per episode would cost more than the step)."""
    if 4 * k > n:
        return torch.randperm(n, generator=generator)[:k]
    chosen: list[int] = []
    while len(chosen) < k:
        c = int(torch.randint(n, (1,), generator=generator))
        if c not in chosen:
            chosen.append(c)
    return torch.tensor(chosen)


def _groups(labels: Tensor) -> dict[int, Tensor]:
    """The sample indices of every label value, in one sort (a pool may hold 100000 classes)."""
    order = torch.argsort(labels, stable=True)
    values, counts = torch.unique_consecutive(labels[order], return_counts=True)
    return dict(zip(values.tolist(), torch.split(order, counts.tolist()), strict=True))


def class_part(classes: Tensor, config: EpisodeConfig) -> Tensor:
    """The classes of ``config.classes``: all, or one part of a deterministic partition by ``class_seed``."""
    if config.classes == "all":
        return classes
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(config.class_seed))
    train, val, _ = config.class_fractions
    cut = [0, round(train * len(classes)), round((train + val) * len(classes)), len(classes)]
    index = ["train", "val", "test"].index(config.classes)
    return classes[order[cut[index] : cut[index + 1]]].sort().values


class EpisodeSampler:
    """Draws episode ``i`` of a dataset (indices and episode labels), deterministically by (seed, name, i)."""

    def __init__(
        self,
        dataset: Dataset,
        config: EpisodeConfig,
        label: str,
        name: str,
        seed: int = 0,
        targets: Tensor | None = None,
    ):
        self.dataset, self.config, self.name, self.seed = dataset, config, name, seed
        self.targets = targets  # regression: each sample's target replaces its position in the episode
        if targets is not None and config.ways != 1:
            raise ConfigError(
                f"domain '{name}': a regression episode holds the samples of one function (label '{label}'), "
                f"so it takes ways: 1, got ways: {config.ways}"
            )
        self.fast = hasattr(dataset, "gather")
        labels = _labels(dataset, label, f"domain '{name}'")
        if config.fixed is not None:
            self.fixed = self._fixed_episodes(dataset, labels, config.fixed)
            self.count = len(self.fixed)  # every fixed episode once
            return
        self.fixed = []
        classes = class_part(labels[labels >= 0].unique(), config)  # -1: a sample without a class
        groups = _groups(labels)
        self.members = [groups[c] for c in classes.tolist()]
        short = {
            c: len(m)
            for c, m in zip(classes.tolist(), self.members, strict=True)
            if len(m) < config.per_class
        }
        if short:
            shown = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:5])
            raise DataError(
                f"domain '{name}': an episode takes {config.shots} support + {config.queries} query samples per class, "
                f"but {len(short)} of {len(self.members)} classes have fewer ({shown}); lower shots or queries, or "
                "leave those classes out of the dataset"
            )
        if len(self.members) < config.ways:
            raise DataError(
                f"domain '{name}': {config.ways}-way episodes need at least {config.ways} classes in label '{label}', "
                f"the {config.classes} classes number {len(self.members)}; lower ways or use more classes"
            )
        self.count = config.episodes  # episodes an evaluation averages over

    def _fixed_episodes(
        self, dataset: Dataset, labels: Tensor, fixed: FixedEpisodes
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        where = f"domain '{self.name}'"
        episode, role = _labels(dataset, fixed.episode, where), _labels(dataset, fixed.role, where)
        if not set(role.unique().tolist()) <= {0, 1}:
            raise DataError(
                f"{where}: label '{fixed.role}' must be 0 (support) or 1 (query) for every sample; it holds "
                f"{sorted(set(role.unique().tolist()))}"
            )
        out = []
        for e in episode.unique():
            support = ((episode == e) & (role == 0)).nonzero().flatten()
            query = ((episode == e) & (role == 1)).nonzero().flatten()
            classes = labels[support].unique()
            if len(query) == 0 or len(classes) != self.config.ways:
                raise DataError(
                    f"{where}: fixed episode {int(e)} has {len(classes)} support classes and {len(query)} queries; "
                    f"episodes.ways is {self.config.ways} and every episode needs queries"
                )
            position = {int(c): j for j, c in enumerate(classes)}
            unknown = [int(c) for c in labels[query].unique() if int(c) not in position]
            if unknown:
                raise DataError(
                    f"{where}: fixed episode {int(e)} has queries of classes {unknown} without support"
                )
            out.append(
                (
                    support,
                    torch.tensor([position[int(c)] for c in labels[support]]),
                    query,
                    torch.tensor([position[int(c)] for c in labels[query]]),
                )
            )
        return out

    def size(self, i: int) -> tuple[int, int]:
        """Support and query sizes of episode ``i``: equal for drawn episodes, per episode for fixed ones (only
        episodes of one size stack into one batch)."""
        if self.fixed:
            support, _, query, _ = self.fixed[i % len(self.fixed)]
            return len(support), len(query)
        return self.config.ways * self.config.shots, self.config.ways * self.config.queries

    def indices(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Support indices and labels, query indices and labels of episode ``i``."""
        if self.fixed:
            return self.fixed[i % len(self.fixed)]
        config = self.config
        generator = torch.Generator().manual_seed(stream_seed(self.seed, f"{self.name}/episode", i))
        chosen = _choose(len(self.members), config.ways, generator)
        support, query = [], []
        for c in chosen.tolist():
            members = self.members[c]
            picked = members[torch.randperm(len(members), generator=generator)[: config.per_class]]
            support.append(picked[: config.shots])
            query.append(picked[config.shots :])
        ways = torch.arange(config.ways)
        return (
            torch.cat(support),
            ways.repeat_interleave(config.shots),
            torch.cat(query),
            ways.repeat_interleave(config.queries),
        )

    def inputs(self, index: Tensor) -> Inputs:
        if self.fast:
            sample = self.dataset.gather(index)
            x = sample[0] if isinstance(sample, tuple) else sample
        else:
            items = [self.dataset[i] for i in index.tolist()]
            items = [item[0] if isinstance(item, tuple | list) else item for item in items]
            x = stack([as_inputs(item) for item in items])
        return as_inputs(x)

    def draw(self, first: int, count: int) -> Episodes:
        """Episodes ``first`` .. ``first + count - 1``."""
        parts = [self.indices(i) for i in range(first, first + count)]
        if self.targets is not None:
            parts = [(s, self.targets[s], q, self.targets[q]) for s, _, q, _ in parts]
        return Episodes(
            stack([self.inputs(s) for s, _, _, _ in parts]),
            torch.stack([y for _, y, _, _ in parts]),
            stack([self.inputs(q) for _, _, q, _ in parts]),
            torch.stack([y for _, _, _, y in parts]),
            self.config.ways,
        )


class EpisodeStream:
    """An infinite, resumable stream of meta-batches (``tasks`` episodes each) over one training domain."""

    def __init__(
        self, sampler: EpisodeSampler, device: torch.device | str = "cpu", augment: WarpConfig | None = None
    ):
        self.sampler = sampler
        self.name = sampler.name
        tasks = sampler.config.tasks
        sizes = sorted({sampler.size(i) for i in range(len(sampler.fixed))})
        if tasks > 1 and len(sizes) > 1:
            raise DataError(
                f"domain '{sampler.name}': its fixed episodes differ in size ((support, query) sizes "
                f"{', '.join(map(str, sizes[:5]))}), so a meta-batch of tasks: {tasks} cannot stack them; set "
                "episodes.tasks: 1"
            )
        self.device = torch.device(device)
        self.augment = augment  # warps of the support and query images
        self.consumed = 0  # meta-batches drawn

    def __iter__(self) -> EpisodeStream:
        return self

    def __next__(self) -> Episodes:
        tasks = self.sampler.config.tasks
        episodes = self.sampler.draw(self.consumed * tasks, tasks).to(self.device)
        if self.augment is not None:
            seed, index = self.sampler.seed, self.consumed
            episodes.support = warp(episodes.support, self.augment, seed, self.name, index, "support/", 2)
            episodes.query = warp(episodes.query, self.augment, seed, self.name, index, "query/", 2)
        self.consumed += 1
        return episodes

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.consumed = int(state["consumed"])


def episode_task(domain: Domain, tasks: Sequence[Task]) -> Task:
    """The one task an episodic domain is scored on: its only task, or the run's only task."""
    names = domain.tasks or [t.name for t in tasks]
    if len(names) != 1:
        raise ConfigError(
            f"domain '{domain.name}' is read as episodes, which classify one label; the run has tasks "
            f"{', '.join(names)}: give the domain one task (tasks: [name])"
        )
    return next(t for t in tasks if t.name == names[0])


def episode_sampler(domain: Domain, tasks: Sequence[Task], seed: int = 0) -> tuple[str, EpisodeSampler]:
    """The task name and the episode sampler of an episodic domain: classification episodes label each
    sample with its class's position; regression episodes group samples by ``episodes.label`` (a function,
    say) and keep their targets."""
    task = episode_task(domain, tasks)
    config = domain.episodes
    assert config is not None
    key = task.label or task.name
    if task.kind == "classification":
        if config.ways < 2:
            raise ConfigError(
                f"domain '{domain.name}': classification episodes need ways >= 2, got {config.ways}"
            )
        return task.name, EpisodeSampler(domain.dataset, config, config.label or key, domain.name, seed)
    if task.kind != "regression" or task.num_outputs != 1:
        raise ConfigError(
            f"domain '{domain.name}': episodes classify, or regress one target; task '{task.name}' is {task.kind} "
            f"with {task.num_outputs} output(s)"
        )
    if config.label is None or config.label == key:
        raise ConfigError(
            f"domain '{domain.name}': regression episodes group samples by another label than the target "
            f"'{key}': set episodes.label (e.g. function for the sinusoid dataset)"
        )
    from crosstask.data.datasets.base import class_labels

    targets = class_labels(domain.dataset, key, domain.name).float()
    return task.name, EpisodeSampler(domain.dataset, config, config.label, domain.name, seed, targets)
