"""Negative-transfer verdicts: Welch's test and interval, the direction of each metric, and the CLI on run
directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats
from typer.testing import CliRunner

from crosstask.analysis.negative_transfer import NEGATIVE, NO_EVIDENCE, POSITIVE, verdicts, welch_test
from crosstask.cli import app
from crosstask.errors import RunError


@pytest.mark.parametrize("seed", range(5))
def test_welch_matches_scipy_and_its_interval_holds_the_difference(seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = list(rng.normal(1.0, 1.0, 4)), list(rng.normal(0.0, 2.0, 6))
    diff, low, high, p = welch_test(a, b)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert low < diff < high
    # the interval excludes 0 exactly when the test rejects at 5 %
    assert (low > 0 or high < 0) == (p < 0.05)


def test_constant_samples_are_an_exact_difference() -> None:
    assert welch_test([1.0, 1.0], [1.0, 1.0])[3] == 1.0
    assert welch_test([2.0, 2.0], [1.0, 1.0])[3] == 0.0


def test_the_verdict_follows_the_metrics_direction() -> None:
    treated = [{"d/t/accuracy": v, "d/t/mae": v} for v in (90.0, 91.0, 90.5)]
    reference = [{"d/t/accuracy": v, "d/t/mae": v} for v in (80.0, 81.0, 80.5)]
    found = {v.key: v for v in verdicts(treated, reference)}
    assert found["d/t/accuracy"].verdict == POSITIVE and found["d/t/accuracy"].gain == pytest.approx(10.0)
    assert found["d/t/mae"].verdict == NEGATIVE and found["d/t/mae"].gain == pytest.approx(-10.0)
    noisy = verdicts([{"d/t/accuracy": v} for v in (80, 90, 85)], [{"d/t/accuracy": v} for v in (84, 86, 85)])
    assert noisy[0].verdict == NO_EVIDENCE


def test_one_run_per_side_is_refused_with_the_reason() -> None:
    with pytest.raises(RunError, match="at least 2 runs"):
        verdicts([{"d/t/accuracy": 1.0}], [{"d/t/accuracy": 2.0}])


def fake_run(path: Path, final: dict[str, float], baselines: dict[str, float] | None = None) -> Path:
    path.mkdir(parents=True)
    summary = {"status": "completed", "final": final}
    if baselines is not None:
        summary["baselines"] = baselines
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_cli_compares_multitask_runs_with_their_baselines_and_other_runs(tmp_path: Path) -> None:
    runs = [
        fake_run(
            tmp_path / f"mtl{s}",
            {"x/a/accuracy": 90 + s, "x/b/accuracy": 70 + s},
            {"x/a/accuracy": 80 + s, "x/b/accuracy": 80 + s},
        )
        for s in range(3)
    ]
    out = tmp_path / "verdicts.json"
    result = CliRunner().invoke(app, ["negative-transfer", *map(str, runs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    written = {v["key"]: v["verdict"] for v in json.loads(out.read_text())}
    assert written == {"x/a/accuracy": POSITIVE, "x/b/accuracy": NEGATIVE}
    others = [
        fake_run(tmp_path / f"src{s}", {"x/a/accuracy": 95 + s / 10, "x/b/accuracy": 60 + s})
        for s in range(3)
    ]
    result = CliRunner().invoke(
        app, ["negative-transfer", *map(str, runs), *[arg for o in others for arg in ("--against", str(o))]]
    )
    assert result.exit_code == 0, result.output
    assert "negative transfer" in result.output and "positive transfer" in result.output


def test_cli_without_baselines_says_how_to_get_them(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / f"r{s}", {"x/a/accuracy": 1.0}) for s in range(3)]
    result = CliRunner().invoke(app, ["negative-transfer", *map(str, runs)])
    assert result.exit_code != 0
    assert "--baselines" in str(result.exception)


def test_a_run_given_twice_or_a_bad_level_or_a_nan_is_handled(tmp_path: Path) -> None:
    from crosstask.analysis.negative_transfer import NOT_COMPARABLE, multitask_verdicts

    runs = [
        fake_run(tmp_path / f"r{s}", {"x/a/accuracy": 90.0 + s}, {"x/a/accuracy": 80.0 + s}) for s in range(2)
    ]
    with pytest.raises(RunError, match="given twice"):
        multitask_verdicts([runs[0], runs[1], runs[0]])
    with pytest.raises(RunError, match="between 0 and 1"):
        multitask_verdicts(runs, alpha=2.0)
    found = verdicts([{"d/t/accuracy": float("nan")}, {"d/t/accuracy": 1.0}], [{"d/t/accuracy": 1.0}] * 2)
    assert found[0].verdict == NOT_COMPARABLE
