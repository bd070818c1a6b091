"""Task grouping: the search finds the best partition, recovers planted groups, and the CLI drives it end to
end from a config."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from crosstask.analysis.grouping import adjusted_rand_index, best_grouping, grouping_score, partitions
from crosstask.cli import app
from crosstask.errors import ConfigError

# partitions of n items into at most k groups: sums of Stirling numbers of the second kind
STIRLING_SUMS = {(4, 4): 15, (5, 2): 16, (6, 3): 122, (7, 7): 877, (10, 10): 115975}


@pytest.mark.parametrize(("n", "k"), list(STIRLING_SUMS))
def test_partitions_are_all_the_set_partitions_once(n: int, k: int) -> None:
    found = [tuple(p) for p in partitions(n, k)]
    assert len(found) == len(set(found)) == STIRLING_SUMS[n, k]
    assert all(max(p) < k for p in found)


def brute_force(matrix: np.ndarray, budget: int) -> float:
    k = matrix.shape[0]
    best = -np.inf
    for labels in itertools.product(range(budget), repeat=k):
        groups = [[t for t in range(k) if labels[t] == g] for g in range(budget)]
        best = max(best, grouping_score(matrix, [g for g in groups if g]))
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [1, 2, 3])
def test_the_exhaustive_search_finds_the_best_partition(seed: int, budget: int) -> None:
    matrix = np.random.default_rng(seed).normal(size=(6, 6))
    found = best_grouping(matrix, budget)
    assert found.exhaustive
    assert found.score == pytest.approx(brute_force(matrix, budget))
    assert found.score == pytest.approx(grouping_score(matrix, found.groups))
    assert len(found.groups) <= budget


def planted(groups: list[list[int]], noise: float, seed: int) -> np.ndarray:
    k = sum(len(g) for g in groups)
    rng = np.random.default_rng(seed)
    matrix = rng.normal(scale=noise, size=(k, k)) - 0.02
    for group in groups:
        matrix[np.ix_(group, group)] += 0.1
    return matrix


@pytest.mark.parametrize("seed", range(3))
def test_planted_groups_are_recovered_exactly_and_by_the_approximation_beyond_ten_tasks(seed: int) -> None:
    small = [[0, 4, 7], [1, 2, 8], [3, 5, 6]]
    found = best_grouping(planted(small, 0.02, seed), 3)
    assert found.exhaustive and adjusted_rand_index(found.groups, small) == 1.0
    large = [[0, 5, 10, 13], [1, 3, 6, 11], [2, 4, 7, 8, 9, 12]]
    found = best_grouping(planted(large, 0.02, seed), 3)
    assert not found.exhaustive and adjusted_rand_index(found.groups, large) == 1.0


def test_adjusted_rand_index_ignores_group_order_and_scores_a_split() -> None:
    assert adjusted_rand_index([[0, 1], [2, 3]], [[3, 2], [1, 0]]) == 1.0
    assert adjusted_rand_index([[0, 1], [2, 3]], [[0, 2], [1, 3]]) < 0.5


@pytest.mark.parametrize(
    ("matrix", "budget", "message"),
    [
        (np.ones((2, 3)), 2, "square"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), 2, "NaN"),
        (np.zeros((3, 3)), 0, "budget"),
    ],
)
def test_bad_inputs_get_one_clear_error(matrix: np.ndarray, budget: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        best_grouping(matrix, budget)


def group_config(tmp_path: Path) -> Path:
    """Four tasks in two planted groups, {t0, t2} and {t1, t3}."""
    dataset = {
        "name": "synthetic",
        "num_tasks": 4,
        "groups": [[0, 2], [1, 3]],
        "relatedness": 0.95,
        "dim": 16,
    }
    config = {
        "name": "grouped",
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": f"t{i}", "num_classes": 2} for i in range(4)],
        "data": {
            "train": {"syn": {"dataset": {**dataset, "n": 2000}}},
            "eval": {"syn_test": {"dataset": {**dataset, "split": "test"}}},
        },
        "model": {"backbone": {"name": "mlp", "hidden": [64, 16]}},
        "method": "multitask",
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"steps": 300, "batch_size": 64, "log_every": 100},
    }
    path = tmp_path / "group.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_crosstask_group_measures_groups_and_trains_the_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["group", str(group_config(tmp_path)), "--budget", "2", "--train", "-q"])
    assert result.exit_code == 0, result.output
    assert "{t0, t2}" in result.output and "{t1, t3}" in result.output
    report = json.loads((tmp_path / "runs" / "grouped" / "grouping.json").read_text())
    assert sorted(map(sorted, report["groups"])) == [["t0", "t2"], ["t1", "t3"]]
    assert set(report["delta_m"]) == {"all_in_one", "grouped", "one_per_task"}
    assert len(list((tmp_path / "runs" / "grouped" / "groups").glob("t0-t2.*/summary.json"))) == 1
    assert len(report["affinity"]) == 4 and report["exhaustive"]
    # from the run directory: the same groups, nothing trained again
    again = CliRunner().invoke(
        app, ["group", str(tmp_path / "runs" / "grouped"), "--budget", "2", "--kind", "cosine"]
    )
    assert again.exit_code == 0, again.output
    assert "{t0, t2}" in again.output


def test_group_on_a_run_without_affinity_says_how_to_measure_it(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(group_config(tmp_path).read_text())
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "completed", "final": {}}))
    result = CliRunner().invoke(app, ["group", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "task_affinity" in str(result.exception) or "task_affinity" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "at least 1"),
        (["--kind", "tag"], "lookahead, cosine"),
        (["method=erm"], "method: multitask"),
    ],
)
def test_group_refuses_bad_options_before_training(args: list[str], message: str, tmp_path: Path) -> None:
    config = group_config(tmp_path)
    result = CliRunner().invoke(app, ["group", str(config), *args])
    assert result.exit_code != 0
    assert message in str(result.exception)
    assert not (tmp_path / "runs").exists()  # nothing was trained
