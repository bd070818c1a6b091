"""A domain: a named dataset, labeled or not, with the tasks it holds labels for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

if TYPE_CHECKING:
    from crosstask.data.episodes import EpisodeConfig
    from crosstask.modules.augment import WarpConfig


@dataclass
class Domain:
    """A named dataset taking part in a run.

    Args:
        name: the stream or evaluation-set name (``source``, ``target``, ``usps_test``, a task name, ...).
        dataset: any ``torch.utils.data.Dataset`` yielding ``x``, ``(x, y)`` or ``(x, {label: y})``.
        labeled: whether its labels may be used for training (evaluation sets are always read labeled).
        tasks: the tasks labeled in this domain; ``None`` means every task of the run.
        batch_size: overrides the run's batch size for this stream.
        episodes: read the domain as few-shot episodes (:mod:`crosstask.data.episodes`).
        augment: random affine warps of its images while training (:class:`~crosstask.modules.augment.WarpConfig`).
    """

    name: str
    dataset: Dataset
    labeled: bool = True
    tasks: list[str] | None = None
    batch_size: int | None = None
    episodes: EpisodeConfig | None = None
    augment: WarpConfig | None = None
