"""Streams of batches: infinite, resumable, one per domain, drawn together as a multi-stream batch.

A stream reshuffles its dataset every epoch with a permutation seeded by (run seed, stream name, epoch) and
drops the incomplete last batch, so its whole state is the number of batches consumed: a resumed run
continues with exactly the batches an uninterrupted one would have seen. Datasets held in memory
(:class:`~crosstask.data.datasets.base.ArrayDataset`) are batched by one indexing operation; any other
dataset goes through a ``DataLoader`` (with workers if asked).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from crosstask.data.domains import Domain
from crosstask.data.tasks import Task
from crosstask.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Inputs and, for labeled streams, a dict of labels by task name.

    ``complete`` names the tasks whose labels are known to have no missing values (checked once on the
    labels held in memory), so that their losses skip the masking.
    """

    x: Tensor
    y: dict[str, Tensor] = field(default_factory=dict)
    complete: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.x)


class LabelReader:
    """Turns a dataset's labels (a tensor, or a dict by label key) into a dict by task name.

    It inspects the first sample once, so that a mismatch between the dataset and the tasks is reported
    before training with the domain, the task and the labels the dataset has.
    """

    def __init__(self, domain: Domain, tasks: list[Task], labeled: bool):
        self.domain = domain.name
        wanted = [t for t in tasks if domain.tasks is None or t.name in domain.tasks]
        self.keys: dict[str, str | None] = {}
        self.complete: frozenset[str] = frozenset()
        if not labeled or len(domain.dataset) == 0:
            return
        sample = domain.dataset[0]
        if isinstance(sample, Mapping):
            raise DataError(
                f"domain '{domain.name}': its dataset yields dicts (keys {', '.join(map(str, sample))}); crosstask "
                "reads (x, y) or (x, {task: y}) tuples: wrap the dataset so that __getitem__ returns one"
            )
        if not isinstance(sample, tuple | list) or len(sample) < 2:
            raise DataError(
                f"domain '{domain.name}': its dataset yields inputs without labels; mark the domain "
                "labeled: false, or make the dataset return (x, y)"
            )
        y = sample[1]
        if isinstance(y, Mapping):
            for task in wanted:
                if task.label_key not in y:
                    raise DataError(
                        f"domain '{domain.name}': task '{task.name}' reads label '{task.label_key}', but the dataset "
                        f"gives labels {', '.join(map(str, y))}; set the task's label: key, or the domain's tasks:"
                    )
                self.keys[task.name] = task.label_key
        elif len(wanted) == 1:
            self.keys[wanted[0].name] = None
        else:
            raise DataError(
                f"domain '{domain.name}': the dataset gives one label per sample but the domain has tasks "
                f"{', '.join(t.name for t in wanted)}; give the domain one task (tasks: [...]) or return "
                "(x, {task: y}) samples"
            )
        self._check_labels(domain, wanted, y)

    def _check_labels(self, domain: Domain, tasks: list[Task], first: Any) -> None:
        """Class labels must lie in [-1, num_classes): checked on all labels held in memory, else the first.
        Tasks whose in-memory labels have no missing value are recorded as complete."""
        targets = getattr(domain.dataset, "targets", None)
        complete = set()
        for task in tasks:
            key = self.keys[task.name]
            labels = targets if targets is not None else first
            if isinstance(labels, Mapping):
                labels = labels.get(key) if key is not None else None
            if labels is None:
                continue
            labels = torch.as_tensor(labels)
            if targets is not None and labels.numel():
                missing = torch.isnan(labels).any() if labels.is_floating_point() else (labels < 0).any()
                if not bool(missing):
                    complete.add(task.name)
            if task.kind != "classification":
                continue
            if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= task.num_classes):
                raise DataError(
                    f"domain '{domain.name}': task '{task.name}' has num_classes {task.num_classes} but its labels "
                    f"range over {int(labels.min())}..{int(labels.max())}; set num_classes to cover them "
                    "(labels are 0..num_classes-1, -1 for missing)"
                )
        self.complete = frozenset(complete)

    def __call__(self, y: Any) -> dict[str, Tensor]:
        return {task: (y if key is None else y[key]) for task, key in self.keys.items()}


def as_input(x: Any) -> Tensor:
    """Inputs as a tensor, floating point ones in the default dtype (numpy and pandas data arrive as float64)."""
    x = torch.as_tensor(x)
    if x.is_floating_point() and x.dtype != torch.get_default_dtype():
        x = x.to(torch.get_default_dtype())
    return x


def _stream_seed(seed: int, name: str, epoch: int) -> int:
    digest = hashlib.sha256(f"{seed}/{name}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Stream:
    """An infinite, resumable iterator of :class:`Batch` over one domain."""

    def __init__(
        self,
        domain: Domain,
        tasks: list[Task],
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
    ):
        n = len(domain.dataset)
        if n == 0:
            raise DataError(f"domain '{domain.name}' has no samples")
        self.name = domain.name
        self.dataset = domain.dataset
        self.labels = LabelReader(domain, tasks, domain.labeled)
        self.batch_size = min(batch_size, n)
        if self.batch_size < batch_size:
            log.warning(
                "domain '%s' has %d samples, fewer than the batch size %d; using %d",
                self.name,
                n,
                batch_size,
                n,
            )
        self.batches_per_epoch = n // self.batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.consumed = 0
        self._perm_epoch = -1
        self._perm: Tensor | None = None
        self._loader: Iterator | None = None
        self._fast = hasattr(self.dataset, "gather")

    def indices(self, batch: int) -> Tensor:
        """Dataset indices of the ``batch``-th batch of this stream."""
        epoch, position = divmod(batch, self.batches_per_epoch)
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.name, epoch))
            self._perm = torch.randperm(len(self.dataset), generator=generator)
            self._perm_epoch = epoch
        start = position * self.batch_size
        return self._perm[start : start + self.batch_size]

    def _index_batches(self, start: int) -> Iterator[list[int]]:
        batch = start
        while True:
            yield self.indices(batch).tolist()
            batch += 1

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Batch:
        if self._fast:
            sample = self.dataset.gather(self.indices(self.consumed))
        else:
            if self._loader is None:
                # a seeded generator: creating the iterator must not draw from the global RNG (exact resume)
                generator = torch.Generator().manual_seed(
                    _stream_seed(self.seed, f"{self.name}/loader", self.consumed)
                )
                self._loader = iter(
                    DataLoader(
                        self.dataset,
                        batch_sampler=self._index_batches(self.consumed),
                        num_workers=self.num_workers,
                        pin_memory=self.device.type == "cuda",
                        generator=generator,
                    )
                )
            sample = next(self._loader)
        self.consumed += 1
        return self._to_batch(sample)

    def _to_batch(self, sample: Any) -> Batch:
        non_blocking = self.device.type == "cuda"
        if isinstance(sample, tuple | list):
            x, y = sample[0], self.labels(sample[1])
        else:
            x, y = sample, {}
        return Batch(
            as_input(x).to(self.device, non_blocking=non_blocking),
            {k: v.to(self.device, non_blocking=non_blocking) for k, v in y.items()},
            self.labels.complete,
        )

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.consumed = int(state["consumed"])
        self._loader = None


class MultiStream:
    """Several streams drawn together: ``next()`` gives ``{stream name: Batch}``."""

    def __init__(self, streams: Mapping[str, Stream]):
        self.streams = dict(streams)

    def __iter__(self) -> MultiStream:
        return self

    def __next__(self) -> dict[str, Batch]:
        return {name: next(stream) for name, stream in self.streams.items()}

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])


def iterate_batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> Iterator[Any]:
    """The samples of ``dataset`` in order, batched (for evaluation); draws nothing from the global RNG."""
    if hasattr(dataset, "gather"):
        for start in range(0, len(dataset), batch_size):
            yield dataset.gather(slice(start, start + batch_size))
    else:
        yield from DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(0),
        )
