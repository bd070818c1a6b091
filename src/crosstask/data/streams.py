"""Streams of batches: infinite, resumable, one per domain, drawn together as a multi-stream batch.

A stream reshuffles its dataset every epoch with a permutation seeded by (run seed, stream name, epoch) and
drops the incomplete last batch, so its whole state is the number of batches consumed: a resumed run
continues with exactly the batches an uninterrupted one would have seen. Datasets held in memory
(:class:`~crosstask.data.datasets.base.ArrayDataset`) are batched by one indexing operation; any other
dataset goes through a ``DataLoader`` (with workers if asked). Inputs are a tensor or a dict of tensors
(:mod:`crosstask.data.inputs`); samples are ``x``, ``(x,)``, ``(x, y)`` or ``(x, {label: y})``.

Bad data ends in one :class:`~crosstask.errors.DataError` naming the domain and the sample: class labels
outside ``[-1, num_classes)`` (checked once on labels held in memory, else on each batch's labels on the CPU
before they move to the device), and samples whose shapes or label keys differ from the rest of their batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from crosstask.data.domains import Domain
from crosstask.data.inputs import Inputs, as_inputs, to_device
from crosstask.data.inputs import batch_size as count_samples
from crosstask.data.tasks import Task
from crosstask.errors import DataError
from crosstask.modules.augment import WarpConfig, warp_images

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Inputs and, for labeled streams, a dict of labels by task name.

    ``x`` is a tensor, or a dict of tensors sharing the batch dimension when the dataset's inputs are dicts
    (see :mod:`crosstask.data.inputs`). ``complete`` names the tasks whose labels are known to have no
    missing values (checked once on the labels held in memory), so that their losses skip the masking.
    """

    x: Inputs
    y: dict[str, Tensor] = field(default_factory=dict)
    complete: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return count_samples(self.x)


def split_sample(sample: Any) -> tuple[Any, Any]:
    """``(x, y)`` of a sample or a collated batch; ``y`` is None for inputs without labels.

    A tuple or list of two or more elements is ``(x, y, ...)``; one of one element (a ``TensorDataset``
    of inputs only) is ``(x,)``; anything else (a tensor, a dict of input tensors) is the input itself.
    """
    if isinstance(sample, tuple | list):
        if len(sample) == 1:
            return sample[0], None
        return sample[0], sample[1]
    return sample, None


Indices = Tensor | Callable[[], Tensor] | None


class LabelReader:
    """Turns a dataset's labels (a tensor, or a dict by label key) into a dict by task name.

    It inspects the first sample once, so that a mismatch between the dataset and the tasks is reported
    before training with the domain, the task and the labels the dataset has. Class labels are checked
    against ``num_classes``: all at once when the dataset holds them in memory (``targets``), else batch by
    batch as they are read (a min/max on the CPU), naming the offending sample.
    """

    def __init__(self, domain: Domain, tasks: list[Task], labeled: bool):
        self.domain = domain.name
        wanted = [t for t in tasks if domain.tasks is None or t.name in domain.tasks]
        self.keys: dict[str, str | None] = {}
        self.complete: frozenset[str] = frozenset()
        self.single_class: dict[str, int] = {}  # task -> its only class, where all labels are in memory
        self._unchecked: dict[str, int] = {}  # classification task -> num_classes, checked batch by batch
        if not labeled or len(domain.dataset) == 0:
            return
        sample = domain.dataset[0]
        if isinstance(sample, Mapping):
            raise DataError(
                f"domain '{domain.name}': its dataset yields dicts (keys {', '.join(map(str, sample))}); crosstask "
                "reads (x, y) or (x, {task: y}) tuples, where x may itself be a dict of input tensors (such as "
                "{'input_ids': ..., 'attention_mask': ...}): wrap the dataset so that __getitem__ returns one"
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
        """Class labels must lie in [-1, num_classes): checked on all labels held in memory, else on the
        first sample now and on every batch as it is read. Tasks whose in-memory labels have no missing
        value are recorded as complete, those whose in-memory labels hold a single class as single_class."""
        targets = getattr(domain.dataset, "targets", None)
        complete = set()
        for task in tasks:
            key = self.keys[task.name]
            in_memory = targets is not None
            labels = targets if in_memory else first
            if isinstance(labels, Mapping):
                labels = labels.get(key) if key is not None else None
            if labels is None:
                in_memory, labels = False, first.get(key) if isinstance(first, Mapping) else first
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                where = "its labels (targets)" if in_memory else "sample 0"
                shown = repr(labels)[:60]
                raise DataError(
                    f"domain '{domain.name}': task '{task.name}' reads labels that are not numbers ({where} gives "
                    f"{shown}); make the dataset return class indices 0..num_classes-1 (map class names to "
                    "indices), or float targets for multilabel and regression tasks"
                ) from None
            if in_memory and labels.numel():
                missing = torch.isnan(labels).any() if labels.is_floating_point() else (labels < 0).any()
                if not bool(missing):
                    complete.add(task.name)
            if task.kind != "classification":
                continue
            if not in_memory:
                self._unchecked[task.name] = int(task.num_classes)  # type: ignore[arg-type]
            if not labels.numel():
                continue
            n = int(task.num_classes)  # type: ignore[arg-type]
            bad = ((labels < -1) | (labels >= n)).nonzero()
            if len(bad):
                label = _number(labels[tuple(bad[0])])
                if in_memory:
                    raise DataError(
                        f"domain '{domain.name}': task '{task.name}' has num_classes {n} but its labels range over "
                        f"{_number(labels.min())}..{_number(labels.max())} (sample {int(bad[0][0])} has label "
                        f"{label}); set num_classes to cover them, or fix the labels (labels are "
                        "0..num_classes-1, -1 for missing)"
                    )
                raise self._out_of_range(task.name, n, label, "sample 0")
            if in_memory:
                present = labels[labels >= 0]  # NaN and -1 are missing labels
                if present.numel() and bool(present.min() == present.max()):
                    self.single_class[task.name] = int(present.min())
        self.complete = frozenset(complete)

    def _out_of_range(self, task: str, num_classes: int, label: Any, where: str) -> DataError:
        return DataError(
            f"domain '{self.domain}': task '{task}' has num_classes {num_classes} but {where} has label {label}; "
            f"fix that sample's label or set num_classes to cover it (labels are 0..{num_classes - 1}, -1 for "
            "missing)"
        )

    def __call__(self, y: Any, indices: Indices = None) -> dict[str, Tensor]:
        """The labels of a batch (or a sample) by task name.

        Class labels not checked in memory are checked here, on the CPU: ``indices`` (the batch's dataset
        indices, or a function giving them) names the offending sample."""
        try:
            out = {task: (y if key is None else y[key]) for task, key in self.keys.items()}
        except (KeyError, TypeError, IndexError):
            missing = next((k for k in self.keys.values() if k is not None and not _has(y, k)), None)
            if missing is None:
                raise
            given = f"labels {', '.join(map(str, y))}" if isinstance(y, Mapping) else "one label, not a dict"
            raise _MissingLabelKey(
                f"domain '{self.domain}': a batch's labels lack '{missing}' (it gives {given}), though the first "
                "sample has it; every sample needs the same label keys (-1 or NaN for a missing label)"
            ) from None
        for task, num_classes in self._unchecked.items():
            labels = out[task]
            if not isinstance(labels, Tensor) or labels.device.type != "cpu" or not labels.numel():
                continue
            if labels.dtype == torch.bool:
                continue
            if int(labels.min()) >= -1 and int(labels.max()) < num_classes:
                continue
            bad = ((labels < -1) | (labels >= num_classes)).nonzero()[0]
            position = int(bad[0]) if labels.dim() else 0
            index = indices() if callable(indices) else indices
            where = (
                f"sample {int(index[position])}"
                if index is not None
                else f"the sample at position {position} of a batch"
            )
            raise self._out_of_range(task, num_classes, _number(labels[tuple(bad)]), where)
        return out


class _MissingLabelKey(DataError):
    """A batch's labels lack a key the first sample has."""


def _has(y: Any, key: str) -> bool:
    return isinstance(y, Mapping) and key in y


def _number(value: Any) -> Any:
    """A tensor element as a Python number for messages (integral floats as ints)."""
    value = value.item() if isinstance(value, Tensor) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


as_input = as_inputs  # the name the evaluators import: a tensor, or a dict of tensors


def _shape(value: Any) -> Any:
    """A comparable description of one sample's structure: shapes of tensors, keys of dicts."""
    if isinstance(value, Mapping):
        return {str(k): _shape(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_shape(v) for v in value]
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if isinstance(value, bool | int | float):
        return ()
    return type(value).__name__


def _first_difference(a: Any, b: Any, path: str = "sample") -> tuple[str, Any, Any] | None:
    """Where two sample structures (from :func:`_shape`) differ: ``(what, a's part, b's part)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path} keys", sorted(a), sorted(b)
        for k in a:
            found = _first_difference(a[k], b[k], f"{path} '{k}'")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} element count", len(a), len(b)
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            name = (
                (["input", "label"][i] if i < 2 else f"element {i}") if path == "sample" else f"{path}[{i}]"
            )
            found = _first_difference(u, v, name)
            if found:
                return found
        return None
    if path == "sample":  # a sample that is its input
        path = "input"
    return None if a == b else (f"{path} shape" if isinstance(a, tuple) else path, a, b)


def stream_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit seed for draw ``index`` of stream ``name`` in a run seeded ``seed`` (epochs, episodes)."""
    digest = hashlib.sha256(f"{seed}/{name}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def warp(
    x: Inputs, config: WarpConfig, seed: int, name: str, index: int, part: str = "", batch_dims: int = 1
) -> Inputs:
    """Batch ``index`` of stream ``name`` (its ``part``: support or query images; ``batch_dims`` 2 for
    episodes) through random affine warps drawn from (seed, name, part, index): the same warps on a resumed
    run."""
    where = f"domain '{name}'"
    if isinstance(x, Mapping):
        raise DataError(
            f"{where}: augment warps images, but its inputs are a dict ({', '.join(x)}); remove augment: from it"
        )
    generator = torch.Generator().manual_seed(stream_seed(seed, f"{name}/{part}augment", index))
    return warp_images(x, config, generator, where, batch_dims)


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
        self.augment = domain.augment
        self.labels = LabelReader(domain, tasks, domain.labeled)
        for task, label in self.labels.single_class.items():
            log.warning(
                "domain '%s': every label of task '%s' is class %d; a classifier trained on it learns to "
                "predict that class only: check the dataset, its split and its subsets (per_class, limit)",
                self.name,
                task,
                label,
            )
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
            generator = torch.Generator().manual_seed(stream_seed(self.seed, self.name, epoch))
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
        batch = self.consumed
        if self._fast:
            indices = self.indices(batch)
            sample = self.dataset.gather(indices)
        else:
            if self._loader is None:
                # a seeded generator: creating the iterator must not draw from the global RNG (exact resume)
                generator = torch.Generator().manual_seed(
                    stream_seed(self.seed, f"{self.name}/loader", batch)
                )
                self._loader = iter(
                    DataLoader(
                        self.dataset,
                        batch_sampler=self._index_batches(batch),
                        num_workers=self.num_workers,
                        pin_memory=self.device.type == "cuda",
                        generator=generator,
                    )
                )
            try:
                sample = next(self._loader)
            except (RuntimeError, TypeError, KeyError, ValueError) as exc:
                self._loader = None  # a failed iterator cannot go on; a retry starts a fresh one here
                error = self._collate_error(batch)
                if error is None:
                    raise
                raise error from exc
            indices = functools.partial(self.indices, batch)  # only called when a label is out of range

        self.consumed += 1
        out = self._to_batch(sample, indices)
        if self.augment is not None:
            out.x = warp(out.x, self.augment, self.seed, self.name, batch)
        return out

    def _collate_error(self, batch: int) -> DataError | None:
        """Why the samples of a batch could not be collated, when one of them differs in structure from
        the most common one (None when they do not: the original error is then the one to show)."""
        index = self.indices(batch).tolist()
        try:
            shapes = [_shape(self.dataset[i]) for i in index]
        except Exception:  # the dataset itself fails: its own error says more
            return None
        common = Counter(map(repr, shapes)).most_common(1)[0][0]
        usual = next(j for j, shape in enumerate(shapes) if repr(shape) == common)
        for i, shape in zip(index, shapes, strict=True):
            found = _first_difference(shapes[usual], shape)
            if found:
                what, expected, got = found
                return DataError(
                    f"domain '{self.name}': sample {i} has {what} {got} but sample {index[usual]} has {expected}; "
                    "every sample needs the same structure and shapes (pad or resize inputs; give every sample "
                    "the same label keys and target shapes, -1 or NaN for a missing label)"
                )
        return None

    def _to_batch(self, sample: Any, indices: Tensor | Callable[[], Tensor]) -> Batch:
        non_blocking = self.device.type == "cuda"
        x, y = split_sample(sample)
        try:
            labels = self.labels(y, indices) if y is not None else {}  # checked on the CPU, before the copy
        except _MissingLabelKey:
            # the batch's first sample lacks a label key (collation keeps the first sample's keys)
            error = None if self._fast else self._collate_error(self.consumed - 1)
            if error is None:
                raise
            raise error from None
        return Batch(
            to_device(as_inputs(x), self.device, non_blocking=non_blocking),
            {k: v.to(self.device, non_blocking=non_blocking) for k, v in labels.items()},
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


def iterate_batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> Iterator[tuple[Any, Any]]:
    """The samples of ``dataset`` in order, batched as ``(x, y)`` pairs (``y`` None for samples without
    labels), for evaluation; draws nothing from the global RNG."""
    if hasattr(dataset, "gather"):
        for start in range(0, len(dataset), batch_size):
            yield split_sample(dataset.gather(slice(start, start + batch_size)))
    else:
        for sample in DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(0),
        ):
            yield split_sample(sample)
