"""The suites' wiring, without training: protocol notes, published numbers, provenance of their runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from benchmarks import records
from benchmarks.records import OTHER_PROTOCOL
from benchmarks.runs import RunProvenance
from benchmarks.suites import mnist_usps


def fake_run(calls: list):
    """Stands in for benchmarks.runs.run_experiment: a finished run's summary, no training."""

    def run_experiment(experiment, overrides=(), *, reuse=False):
        calls.append((experiment, reuse))
        usps = {"usps_test/digit/accuracy": 90.0 + experiment["seed"], "mnist_test/digit/accuracy": 99.0}
        summary = {
            "best": {"value": 91.0 + experiment["seed"], "metrics": usps},
            "final": usps,
            "validators": {"entropy": {"metrics": usps}},
        }
        result = SimpleNamespace(summary=summary, run_dir=Path("runs") / experiment["name"])
        revision = {"commit": "d" * 40, "dirty": False}
        return result, RunProvenance(str(result.run_dir), revision, f"{experiment['seed']:016d}", False)

    return run_experiment


@pytest.fixture(autouse=True)
def fixed_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "suite_revision", lambda: {"commit": "c" * 40, "dirty": False})


def test_mnist_usps_shortened_cdan(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(mnist_usps, "run_experiment", fake_run(calls))
    options = {"seeds": [0, 1], "quick": False, "methods": ["cdan"], "steps": 3000, "reuse_runs": True}
    out = mnist_usps.run(options)
    assert [c[1] for c in calls] == [True, True]  # --reuse-runs reaches the runs
    assert calls[0][0]["train"]["steps"] == 3000 and calls[1][0]["seed"] == 1
    best = next(r for r in out if "best of" in r.metric)
    assert (
        best.protocol
        == "3000 of 50000 steps, 10 evaluations (TLlib: 20); CDAN+E; TLlib's number is plain CDAN"
    )
    assert best.published == 96.0 and best.published_source.startswith(OTHER_PROTOCOL)
    for record in out:
        assert record.protocol == best.protocol
        assert record.revisions == [{"commit": "d" * 40, "dirty": False}]
        assert record.config_hashes == [f"{0:016d}", f"{1:016d}"]


def test_mnist_usps_full_protocol_dann_keeps_the_published_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_usps, "run_experiment", fake_run([]))
    options = {"seeds": [0], "quick": False, "methods": ["dann"], "steps": None}
    best = next(r for r in mnist_usps.run(options) if "best of" in r.metric)
    assert best.protocol is None and best.published == 91.7
    assert not best.published_source.startswith(OTHER_PROTOCOL)


def test_mnist_usps_plain_cdan_has_no_protocol_note() -> None:
    assert mnist_usps.protocol_notes("cdan", {"method": {"name": "cdan", "entropy": False}}) == []
    assert mnist_usps.protocol_notes("cdan", {"method": {"name": "cdan", "entropy": True}}) != []


def test_the_modified_hausdorff_distance_of_point_sets() -> None:
    import numpy as np
    from benchmarks.suites.omniglot import modified_hausdorff

    a = np.array([[0.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    assert modified_hausdorff(a, a) == 0.0
    # a to b: both points on b (mean 0); b to a: 0, 0 and 3 (mean 1): the larger mean
    assert modified_hausdorff(a, b) == modified_hausdorff(b, a) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.data
def test_the_modified_hausdorff_baseline_reproduces_lakes_number(data_root: Path) -> None:
    import numpy as np
    from benchmarks.suites.omniglot import mhd_errors

    from tests.conftest import need

    need(data_root, "omniglot_lake_small")
    assert np.mean(mhd_errors()) == pytest.approx(38.8, abs=0.1)  # Lake et al.'s demo: 38.8 % error


def test_weightings_are_compared_with_single_task_runs_of_the_same_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """benchmarks.multitask: one single-task run per task and seed, one run per weighting and seed; Δm% from
    the matching seed's baselines, signed by each metric's direction."""
    from benchmarks import multitask
    from benchmarks.suites import amazon_multitask

    calls: list[dict] = []

    def run_experiment(config, overrides=(), *, reuse=False):
        config = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
        calls.append(config)
        tasks = [t["name"] for t in config["tasks"]]
        multi = len(tasks) > 1
        # multi-task: sentiment +10 % relative, rating mae +10 % relative (worse), domain unchanged
        values = {"sentiment": 80.0 if multi else 72.72727, "rating": 1.1 if multi else 1.0, "domain": 90.0}
        metric = {"sentiment": "accuracy", "rating": "mae", "domain": "accuracy"}
        metrics = {
            f"test/{t}/{metric[t]}": values[t] + (config["seed"] if t == "domain" else 0) for t in tasks
        }
        result = SimpleNamespace(metrics=metrics)
        return result, RunProvenance("runs/x", {"commit": "d" * 40, "dirty": False}, "0" * 16, False)

    monkeypatch.setattr(multitask, "run_experiment", run_experiment)
    options = {"seeds": [0, 1], "quick": False, "methods": ["equal", "pcgrad"]}
    out = amazon_multitask.run(options)
    singles = [c for c in calls if len(c["tasks"]) == 1]
    assert sorted({c["tasks"][0]["name"] for c in singles}) == ["domain", "rating", "sentiment"]
    assert len(singles) == 6 and len(calls) == 6 + 2 * 2
    assert {c["weighting"]["name"] for c in calls if len(c["tasks"]) == 3} == {"equal", "pcgrad"}
    by_key = {(r.method, r.metric): r for r in out}
    assert by_key[("single_task", "rating mae")].higher_is_better is False
    assert by_key[("equal", "sentiment accuracy %")].value == pytest.approx(80.0)
    # (-10 % + 10 % + 0) / 3 = 0: a gain on one task and the same relative loss on another cancel out
    assert by_key[("pcgrad", multitask.DELTA_M)].value == pytest.approx(0.0, abs=1e-3)
