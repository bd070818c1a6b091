"""The diagnostics on cases with a planted answer (the `diagnostics` benchmark suite's cases), 3 seeds each.
Slow: about a minute each on one core; `make test-slow` runs them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from benchmarks.suites.diagnostics import (
    ANGLES,
    WORLDS,
    grouping_case,
    negative_transfer_case,
    rotated_digits_distance,
)

from crosstask.analysis.negative_transfer import NEGATIVE, POSITIVE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("world", WORLDS)
def test_related_scarce_tasks_are_flagged_positive(world: int, tmp_path: Path) -> None:
    case = negative_transfer_case("related", tmp_path, [0, 1, 2], world)
    verdicts = [v.verdict for v in case["verdicts"].values()]
    assert verdicts.count(POSITIVE) >= 4 and NEGATIVE not in verdicts


@pytest.mark.parametrize("world", WORLDS)
def test_a_task_competing_for_a_one_unit_bottleneck_is_flagged_negative(world: int, tmp_path: Path) -> None:
    case = negative_transfer_case("competing", tmp_path, [0, 1, 2], world)
    assert case["verdicts"]["t5"].verdict == NEGATIVE and case["verdicts"]["t5"].p_value < 0.05
    # the group's tasks are not flagged negative: they hold the unit
    assert all(case["verdicts"][f"t{i}"].verdict != NEGATIVE for i in range(5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nine_tasks_in_three_planted_groups_are_recovered(seed: int, tmp_path: Path) -> None:
    assert grouping_case(tmp_path, seed)["ari"] == 1.0


def test_the_proxy_a_distance_grows_with_the_rotation() -> None:
    distances = rotated_digits_distance(0)
    values = [distances[a] for a in ANGLES]
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(values))
    assert values[0] < 0.3 and values[-1] > 1.5


def test_every_transferability_score_ranks_the_digits_zoo_better_than_chance() -> None:
    from benchmarks.suites._transferability_zoo import SCORES, zoo_records

    records = zoo_records([0])
    taus = {r.method: r.value for r in records if r.metric.startswith("Kendall")}
    assert set(taus) == set(SCORES)
    assert all(tau > 0.2 for tau in taus.values()), taus
