"""Monitors (gradient conflict, task affinity): they measure what they claim, on every method, and leave the
run exactly as it would be without them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from crosstask.analysis.monitors.base import RunningMatrix, cosine_matrix
from crosstask.analysis.monitors.gradient_conflict import conflict_statistics
from crosstask.experiment import run
from crosstask.registry import MONITORS, WEIGHTINGS
from tests.conftest import tiny_config
from tests.test_gradient_engine import CASES, experiment


def with_monitors(config: dict, every: int = 1) -> dict:
    config["train"]["monitors"] = [{"name": name, "every": every} for name in MONITORS.names()]
    return config


def test_conflict_statistics_of_known_gradients() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])
    stats = conflict_statistics(jacobian)
    assert torch.allclose(
        stats["cosine"], torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    )
    assert stats["conflict_fraction"] == pytest.approx(1 / 3)
    assert stats["min_cosine"] == pytest.approx(-1.0)
    assert stats["norm_ratio"] == pytest.approx(3.0)
    assert stats["relative_norms"].tolist() == pytest.approx([0.5, 1.0, 1.5])


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_zero_for_a_zero_row() -> None:
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(5, 40, generator=generator)
    jacobian[3] = 0
    cosine = cosine_matrix(jacobian)
    assert torch.allclose(cosine, cosine.T)
    assert cosine[3].abs().sum() == 0
    assert torch.allclose(cosine.diagonal()[[0, 1, 2, 4]], torch.ones(4, dtype=torch.float64))
    assert (cosine.abs() <= 1 + 1e-12).all()


def test_running_matrix_gives_the_mean_and_sample_deviation_and_survives_a_checkpoint() -> None:
    values = [torch.randn(3, 3, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    first, resumed = RunningMatrix(), RunningMatrix()
    for v in values[:4]:
        first.add(v)
    resumed.load_state_dict(first.state_dict())
    for v in values[4:]:
        resumed.add(v)
    stacked = torch.stack(values).double()
    assert torch.allclose(resumed.mean, stacked.mean(0))
    assert torch.allclose(resumed.std, stacked.std(0))


def test_monitors_leave_the_run_exactly_as_without_them(tmp_path: Path) -> None:
    """Lookahead steps and the extra Jacobians change no parameter, buffer, random draw or optimizer state."""
    config = tiny_config(tmp_path)
    config["model"]["backbone"] = {"name": "mlp", "hidden": [32], "dropout": 0.2, "batch_norm": True}
    config["train"].update(steps=12, eval_every=None)
    plain = run({**config, "name": "plain"})
    monitored = run(with_monitors({**config, "name": "monitored"}, every=3))
    for (name, a), b in zip(
        plain.model.state_dict().items(), monitored.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert plain.metrics == monitored.metrics
    files = {p.name for p in (monitored.run_dir / "diagnostics").iterdir()}
    assert files == {f"{name}.json" for name in MONITORS.names()}


def test_the_lookahead_affinity_is_the_change_of_each_loss_after_a_step_on_another(tmp_path: Path) -> None:
    """Recompute one measurement by hand: a plain SGD step on task i's loss, then every task's loss."""
    from crosstask.analysis.monitors.task_affinity import TaskAffinity, TaskAffinityConfig

    seen = {}

    class Spy(TaskAffinity):
        def on_after_gradients(self, trainer, gradients):  # type: ignore[no-untyped-def]
            if self.due(trainer):
                model, batch = trainer.model, trainer.batch
                shared = gradients.parameters
                before = {
                    k: float(v.detach()) for k, v in trainer.method.training_step(batch).objectives.items()
                }
                saved = [p.detach().clone() for p in shared]
                manual = torch.zeros(2, 2, dtype=torch.float64)
                for i, task in enumerate(gradients.names):
                    model.zero_grad()
                    loss = trainer.method.training_step(batch).objectives[task]
                    grads = torch.autograd.grad(loss, shared, allow_unused=True, materialize_grads=True)
                    with torch.no_grad():
                        for p, g in zip(shared, grads, strict=True):
                            p.sub_(0.05 * g)
                    after = trainer.method.training_step(batch).objectives
                    for j, other in enumerate(gradients.names):
                        manual[i, j] = 1 - float(after[other].detach()) / before[other]
                    with torch.no_grad():
                        for p, s in zip(shared, saved, strict=True):
                            p.copy_(s)
                seen["manual"] = manual
            super().on_after_gradients(trainer, gradients)
            if "manual" in seen and "measured" not in seen:
                seen["measured"] = self.lookahead.mean.clone()

    config = tiny_config(tmp_path)
    config["model"]["backbone"] = {
        "name": "mlp",
        "hidden": [16],
    }  # no dropout: the hand computation draws none
    config["train"].update(steps=2, eval_every=None)
    run(config, callbacks=[Spy(TaskAffinityConfig(name="task_affinity", every=2, lr=0.05))])
    assert torch.allclose(seen["measured"], seen["manual"], atol=1e-6)
    assert (seen["manual"].diagonal() > 0).all()  # a step on a task lowers that task's loss


@pytest.mark.parametrize("case", CASES)
def test_every_monitor_runs_on_every_method(case: str, tmp_path: Path) -> None:
    """Every method's run with every monitor: finite reports over its objectives when it has two or more."""
    plain = run({**experiment(case, {"name": "static"}, tmp_path), "name": "plain"})
    config = with_monitors(experiment(case, {"name": "static"}, tmp_path))
    config["train"]["log_every"] = 1
    result = run(config)
    assert result.summary["status"] == "completed"
    for (name, a), b in zip(
        plain.model.state_dict().items(), result.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{case}: the monitors changed {name}"
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_line = next(r for r in lines if r["phase"] == "train")
    objectives = [k for k in train_line if k.startswith("loss/")]
    for record in (r for r in lines if r["phase"] == "gradient_conflict"):
        assert 0.0 <= record["conflict/fraction"] <= 1.0
        assert -1.0 - 1e-9 <= record["conflict/min_cosine"] <= 1.0 + 1e-9
    reports = {p.stem: json.loads(p.read_text()) for p in (result.run_dir / "diagnostics").glob("*.json")}
    if len(objectives) >= 2 and case != "adabn":  # AdaBN trains nothing: no gradients to read
        assert set(reports) == set(MONITORS.names()), case
    for report in reports.values():
        assert sorted(report["names"]) == sorted(k.split("/", 1)[1] for k in objectives)
        for matrix in (report["cosine"]["mean"], report.get("lookahead", {}).get("mean", [])):
            assert all(v is not None and math.isfinite(v) for row in matrix for v in row)


def test_a_monitor_with_a_gradient_weighting_on_the_representation(tmp_path: Path) -> None:
    config = with_monitors(tiny_config(tmp_path), every=5)
    config["weighting"] = {"name": "mgda", "on": "representation"}
    config["train"].update(steps=10, eval_every=None)
    result = run(config)
    report = json.loads((result.run_dir / "diagnostics" / "task_affinity.json").read_text())
    assert report["lookahead"]["measurements"] == 2
    conflict = json.loads((result.run_dir / "diagnostics" / "gradient_conflict.json").read_text())
    assert conflict["space"] == "representation"


def test_a_resumed_run_averages_its_measurements_over_the_whole_training(tmp_path: Path) -> None:
    config = with_monitors(tiny_config(tmp_path), every=2)
    config["train"].update(steps=8, eval_every=None, checkpoint_every=4)
    whole = run({**config, "name": "whole"})
    half = run({**config, "name": "half", "train": {**config["train"], "steps": 4}})
    resumed = run({**config, "name": "half", "train": {**config["train"], "steps": 8}}, resume=True)
    assert half.summary["step"] == 4 and resumed.summary["step"] == 8
    for name in MONITORS.names():
        a = json.loads((whole.run_dir / "diagnostics" / f"{name}.json").read_text())
        b = json.loads((resumed.run_dir / "diagnostics" / f"{name}.json").read_text())
        assert a["cosine"]["measurements"] == b["cosine"]["measurements"] == 4
        for part in ("mean", "std"):
            assert torch.allclose(torch.tensor(a["cosine"][part]), torch.tensor(b["cosine"][part]), atol=1e-6)


def test_a_monitor_listed_twice_is_a_config_error(tmp_path: Path) -> None:
    from crosstask.config import validate_config
    from crosstask.errors import ConfigError

    config = tiny_config(tmp_path)
    config["train"]["monitors"] = ["task_affinity", {"name": "task_affinity", "every": 3}]
    with pytest.raises(ConfigError, match="listed once"):
        validate_config(config)


def test_readers_get_the_objectives_own_gradients_under_a_prescaling_weighting(tmp_path: Path) -> None:
    """GradNorm multiplies the objectives by its weights before the Jacobian; readers get them undone."""
    from crosstask.engine.events import Callback

    seen = []

    class Reader(Callback):
        def wants_gradients(self, trainer):  # type: ignore[no-untyped-def]
            return "parameters"

        def on_after_gradients(self, trainer, gradients):  # type: ignore[no-untyped-def]
            output = trainer.method.training_step(trainer.batch)
            exact = [
                torch.cat(
                    [
                        g.reshape(-1)
                        for g in torch.autograd.grad(
                            output.objectives[n],
                            gradients.parameters,
                            retain_graph=True,
                            allow_unused=True,
                            materialize_grads=True,
                        )
                    ]
                )
                for n in gradients.names
            ]
            seen.append((gradients.parameter_jacobian, torch.stack(exact)))

    config = tiny_config(tmp_path)
    config["model"]["backbone"] = {"name": "mlp", "hidden": [16]}
    config["weighting"] = {"name": "gradnorm"}
    config["train"].update(steps=4, eval_every=None)
    run(config, callbacks=[Reader()])
    for reported, exact in seen[1:]:  # from the second step the weights differ from 1
        assert torch.allclose(reported, exact, atol=1e-5)


@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_every_monitor_leaves_every_weighting_unchanged(weighting: str, tmp_path: Path) -> None:
    """Monitors on a two-task run under each weighting: the same weights as without them, and a report."""
    config = tiny_config(tmp_path)
    config["model"]["backbone"] = {"name": "mlp", "hidden": [16], "dropout": 0.1}
    config["weighting"] = {"name": weighting}
    config["train"].update(steps=4, eval_every=None)
    plain = run({**config, "name": "plain"})
    monitored = run(with_monitors({**config, "name": "monitored"}, every=2))
    for (name, a), b in zip(
        plain.model.state_dict().items(), monitored.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{weighting}: the monitors changed {name}"
    assert {p.stem for p in (monitored.run_dir / "diagnostics").glob("*.json")} == set(MONITORS.names())
