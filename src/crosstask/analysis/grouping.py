"""Task grouping from an affinity matrix: which tasks to train together, given a budget of models.

A grouping is a partition of the tasks into at most ``budget`` groups. Its score is the affinity each task
receives from the other members of its group, averaged over them and summed over the tasks,

    score = Σ_g Σ_{j∈g} (1 / (|g| − 1)) Σ_{i∈g, i≠j} A[i, j]        (a task alone receives 0),

the total inter-task affinity of Fifty et al. 2021 (TAG) for groups that do not overlap (TAG also allows a
task in several groups, served by its best one; a partition is what a user trains and deploys). Every
partition is scored for up to ``exhaustive_limit`` tasks (Bell(10) = 115,975 partitions, vectorized);
beyond, a documented approximation: local search (move one task to another group while the score rises)
from the agglomerative grouping and from random partitions, keeping the best.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from crosstask.errors import ConfigError


@dataclass
class Grouping:
    """Groups of task indices (and names), their score, and whether every partition was scored."""

    groups: list[list[int]]
    names: list[list[str]]
    score: float
    exhaustive: bool
    candidates: int


def _check(affinity: np.ndarray, budget: int) -> np.ndarray:
    matrix = np.asarray(affinity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ConfigError(f"an affinity matrix must be square and non-empty, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ConfigError("the affinity matrix holds NaN or infinite values; measure it again")
    check_budget(budget)
    return matrix


def check_budget(budget: int) -> None:
    if budget < 1:
        raise ConfigError(f"the budget is a number of models, at least 1; got {budget}")


def grouping_score(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """The score of one partition (see the module's formula)."""
    matrix = np.asarray(affinity, dtype=np.float64)
    total = 0.0
    for group in groups:
        if len(group) > 1:
            block = matrix[np.ix_(group, group)]
            total += (block.sum() - np.trace(block)) / (len(group) - 1)
    return float(total)


def partitions(k: int, budget: int) -> Iterator[list[int]]:
    """Every partition of ``range(k)`` into at most ``budget`` groups, as labels (restricted growth strings:
    task 0 in group 0, each next task in a used group or the next new one)."""
    labels = [0] * k

    def extend(i: int, used: int) -> Iterator[list[int]]:
        if i == k:
            yield list(labels)
            return
        for label in range(min(used + 1, budget)):
            labels[i] = label
            yield from extend(i + 1, max(used, label + 1))

    if k:
        yield from extend(1, 1)


def _scores(matrix: np.ndarray, labels: np.ndarray, budget: int) -> np.ndarray:
    """Scores of many partitions at once (``labels``: partitions × tasks)."""
    off = matrix - np.diag(np.diag(matrix))
    total = np.zeros(len(labels))
    for group in range(budget):
        member = (labels == group).astype(np.float64)
        within = np.einsum("pi,ij,pj->p", member, off, member)
        size = member.sum(1)
        total += np.where(size > 1, within / np.maximum(size - 1, 1), 0.0)
    return total


def best_grouping(
    affinity: np.ndarray,
    budget: int,
    names: Sequence[str] | None = None,
    *,
    exhaustive_limit: int = 10,
    restarts: int = 50,
    seed: int = 0,
) -> Grouping:
    """The partition of the tasks into at most ``budget`` groups with the highest score."""
    matrix = _check(affinity, budget)
    k = matrix.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"{len(names)} task names for a {k}×{k} affinity matrix")
    budget = min(budget, k)
    if k <= exhaustive_limit:
        best_labels, best_score, count = None, -np.inf, 0
        chunk: list[list[int]] = []
        for labels in partitions(k, budget):
            chunk.append(labels)
            if len(chunk) == 8192:
                best_labels, best_score = _best_of(matrix, chunk, budget, best_labels, best_score)
                count, chunk = count + len(chunk), []
        if chunk:
            best_labels, best_score = _best_of(matrix, chunk, budget, best_labels, best_score)
            count += len(chunk)
        exhaustive = True
    else:
        best_labels, best_score, count = _local_search(matrix, budget, restarts, seed)
        exhaustive = False
    groups = _groups(best_labels)
    return Grouping(groups, [[names[i] for i in g] for g in groups], float(best_score), exhaustive, count)


def _best_of(
    matrix: np.ndarray, chunk: list[list[int]], budget: int, best: list[int] | None, best_score: float
) -> tuple[list[int] | None, float]:
    labels = np.asarray(chunk)
    scores = _scores(matrix, labels, budget)
    i = int(np.argmax(scores))
    if scores[i] > best_score + 1e-12:
        return list(labels[i]), float(scores[i])
    return best, best_score


def _groups(labels: Sequence[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for task, label in enumerate(labels):
        groups.setdefault(int(label), []).append(task)
    return [groups[g] for g in sorted(groups)]


def _local_search(matrix: np.ndarray, budget: int, restarts: int, seed: int) -> tuple[list[int], float, int]:
    """Best-improvement moves of one task to another group, from the agglomerative grouping and from
    ``restarts`` random partitions."""
    k = matrix.shape[0]
    rng = np.random.default_rng(seed)
    starts = [_agglomerative(matrix, budget)] + [list(rng.integers(0, budget, k)) for _ in range(restarts)]
    best, best_score, evaluated = starts[0], -np.inf, 0
    for labels in starts:
        labels = list(labels)
        score = float(_scores(matrix, np.asarray([labels]), budget)[0])
        while True:
            moves = []
            for task in range(k):
                for group in range(budget):
                    if group != labels[task]:
                        moved = list(labels)
                        moved[task] = group
                        moves.append(moved)
            scores = _scores(matrix, np.asarray(moves), budget)
            evaluated += len(moves)
            i = int(np.argmax(scores))
            if scores[i] <= score + 1e-12:
                break
            labels, score = moves[i], float(scores[i])
        if score > best_score:
            best, best_score = labels, score
    return best, best_score, evaluated


def _agglomerative(matrix: np.ndarray, budget: int) -> list[int]:
    """Merge the two groups with the highest mean mutual affinity until ``budget`` groups remain."""
    symmetric = (matrix + matrix.T) / 2
    groups = [[i] for i in range(matrix.shape[0])]
    while len(groups) > budget:
        pairs = [
            (symmetric[np.ix_(a, b)].mean(), x, y)
            for x, a in enumerate(groups)
            for y, b in enumerate(groups)
            if x < y
        ]
        _, x, y = max(pairs)
        groups[x] = groups[x] + groups[y]
        del groups[y]
    labels = [0] * matrix.shape[0]
    for g, members in enumerate(groups):
        for task in members:
            labels[task] = g
    return labels


def adjusted_rand_index(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) between two partitions given as groups of indices."""
    from sklearn.metrics import adjusted_rand_score

    def labels(groups: Sequence[Sequence[int]]) -> list[int]:
        out = {task: g for g, members in enumerate(groups) for task in members}
        return [out[t] for t in sorted(out)]

    first, second = labels(a), labels(b)
    if len(first) != len(second):
        raise ConfigError(f"the partitions cover {len(first)} and {len(second)} tasks")
    return float(adjusted_rand_score(first, second))
