"""Loss balancing: every registered weighting trains, on parameters and on the representation where it
can; the shared mechanics (per-loss Jacobian, write-back, config errors); property tests of the math."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.engine.gradients import jacobian
from crosstask.errors import ConfigError, SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext, GradientWeighting
from crosstask.weighting.pcgrad import pcgrad_coefficients
from crosstask.weighting.solvers import min_norm_point
from tests.balancing import balance
from tests.conftest import tiny_config


def modes(name: str) -> list[str | None]:
    cls = WEIGHTINGS.get(name).obj
    if not cls.needs_task_gradients:
        return [None]
    return [
        m
        for m, ok in (
            ("parameters", cls.supports_parameters),
            ("representation", cls.supports_representation),
        )
        if ok
    ]


CASES = [(name, mode) for name in WEIGHTINGS.names() for mode in modes(name)]


def weighting_config(name: str, mode: str | None) -> dict:
    return {"name": name, **({"on": mode} if mode else {})}


def train_losses(run_dir: Path) -> list[dict]:
    return [
        r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if r["phase"] == "train"
    ]


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m or 'losses'}" for n, m in CASES])
def test_every_weighting_reduces_the_losses_with_finite_weights(
    tmp_path: Path, name: str, mode: str | None
) -> None:
    config = tiny_config(
        tmp_path,
        tasks=[{"name": f"t{i}", "num_classes": 2} for i in range(3)],
        weighting=weighting_config(name, mode),
        **{
            "data.train.source.dataset.num_tasks": 3,
            "train.steps": 60,
            "train.log_every": 10,
            "train.eval_every": None,
            "data.eval": {},
        },
    )
    records = train_losses(ct.run(config).run_dir)
    first, last = records[0], records[-1]
    total = lambda r: sum(v for k, v in r.items() if k.startswith("loss/"))  # noqa: E731
    assert total(last) < total(first)
    weights = [v for r in records for k, v in r.items() if k.startswith("weight/")]
    assert weights and all(v is not None and abs(v) < 1e6 for v in weights)


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m or 'losses'}" for n, m in CASES])
def test_every_weighting_runs_with_bf16_and_accumulation(tmp_path: Path, name: str, mode: str | None) -> None:
    config = tiny_config(
        tmp_path,
        weighting=weighting_config(name, mode),
        **{
            "train.steps": 6,
            "train.accumulate": 2,
            "train.bf16": True,
            "train.log_every": 2,
            "data.eval": {},
            "train.eval_every": None,
        },
    )
    records = train_losses(ct.run(config).run_dir)
    assert all(v is not None for r in records for v in r.values())


def test_gradient_weightings_balance_any_named_losses(tmp_path: Path) -> None:
    """A transfer method's source and target losses, balanced by PCGrad."""
    config = tiny_config(tmp_path, method="erm", weighting={"name": "pcgrad"}, **{"train.steps": 30})
    config["data"]["train"]["target"] = {"dataset": {"name": "synthetic", "n": 64, "dim": 8, "domain": 1}}
    records = train_losses(ct.run(config).run_dir)
    assert {"weight/source", "weight/target"} <= set(records[0])


def test_unsupported_choices_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'on'"):
        ct.run(tiny_config(tmp_path, weighting={"name": "uncertainty", "on": "representation"}))


def test_multi_input_data_balances_on_each_streams_representation(tmp_path: Path) -> None:
    """One forward pass per stream: the representation is one tensor per pass, and a representation-space
    weighting takes its rows on all of them."""
    config = tiny_config(tmp_path, weighting={"name": "graddrop"}, **{"train.steps": 20})
    config["data"]["train"] = {
        "a": {"dataset": {"name": "synthetic", "n": 64, "dim": 8}, "tasks": ["t0"]},
        "b": {"dataset": {"name": "synthetic", "n": 64, "dim": 8, "domain": 1}, "tasks": ["t1"]},
    }
    result = ct.run(config)
    assert result.summary["status"] == "completed"


def test_jacobian_rows_are_the_per_loss_gradients() -> None:
    w = torch.randn(4, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    losses = torch.stack([(w**2).sum() + v.sum(), (w * 3).sum(), (v**3).sum()])
    g = jacobian(losses, [w, v])
    for i in range(3):
        expected = torch.cat(
            torch.autograd.grad(
                losses[i], [w, v], retain_graph=True, allow_unused=True, materialize_grads=True
            )
        )
        assert torch.allclose(g[i], expected)


def test_equal_is_the_gradient_of_the_summed_loss() -> None:
    w = torch.randn(5, requires_grad=True)
    losses = {"a": (w**2).sum(), "b": torch.sin(w).sum()}
    entry = WEIGHTINGS.get("equal")
    balance(entry.obj(entry.config(name="equal"), list(losses)), losses, BalanceContext(0, [w]))
    expected = torch.autograd.grad((w**2).sum() + torch.sin(w).sum(), w)[0]
    assert torch.allclose(w.grad, expected)


def test_gradient_weighting_writes_the_direction_to_shared_and_plain_gradients_to_the_rest() -> None:
    shared, head_a, head_b = (torch.randn(3, requires_grad=True) for _ in range(3))
    z = shared * 2
    losses = {"a": (z * head_a).sum() ** 2, "b": (z - head_b).pow(2).sum()}
    entry = WEIGHTINGS.get("mgda")
    weighting = entry.obj(entry.config(name="mgda"), ["a", "b"])
    applied = balance(weighting, losses, BalanceContext(0, [shared], other_parameters=[head_a, head_b]))
    z = shared * 2
    la, lb = (z * head_a).sum() ** 2, (z - head_b).pow(2).sum()
    ga, gb = (torch.autograd.grad(loss, shared, retain_graph=True)[0] for loss in (la, lb))
    assert torch.allclose(shared.grad, applied["a"] * ga + applied["b"] * gb, atol=1e-5)
    assert torch.allclose(head_a.grad, torch.autograd.grad(la, head_a)[0])
    assert torch.allclose(head_b.grad, torch.autograd.grad(lb, head_b)[0])


# ----------------------------------------------------------------------------- property tests


@pytest.mark.parametrize("seed", range(20))
def test_pcgrad_leaves_no_conflict_between_two_gradients(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(2, 6, generator=g, dtype=torch.float64)
    grads[1] = -grads[0] + 0.5 * torch.randn(6, generator=g, dtype=torch.float64)  # conflicting
    projected = pcgrad_coefficients(grads @ grads.T, [[1], [0]]) @ grads
    assert float(projected[0] @ grads[1]) >= -1e-9 and float(projected[1] @ grads[0]) >= -1e-9


@pytest.mark.parametrize("seed", range(10))
def test_pcgrad_projection_removes_the_conflict_with_the_last_gradient_it_met(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(4, 5, generator=g, dtype=torch.float64)
    orders = [[j for j in torch.randperm(4, generator=g).tolist() if j != i] for i in range(4)]
    projected = pcgrad_coefficients(grads @ grads.T, orders) @ grads
    for i in range(4):
        assert float(projected[i] @ grads[orders[i][-1]]) >= -1e-9


@pytest.mark.parametrize("seed", range(20))
def test_mgda_two_gradients_match_the_closed_form(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, 5, generator=g, dtype=torch.float64)
    gamma = float(((b - a) @ b) / ((a - b) @ (a - b)))  # argmin over [0, 1] of ‖γa + (1−γ)b‖
    gamma = min(1.0, max(0.0, gamma))
    w = min_norm_point(torch.stack([a, b]) @ torch.stack([a, b]).T)
    assert w[0].item() == pytest.approx(gamma, abs=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_mgda_three_gradients_find_the_min_norm_point(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 4, generator=g, dtype=torch.float64)
    m = grads @ grads.T
    w = min_norm_point(m)
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= -1e-12).all())
    grid = [
        torch.tensor([a, b, 100 - a - b], dtype=torch.float64) / 100
        for a, b in itertools.product(range(101), repeat=2)
        if a + b <= 100
    ]
    brute = min(float(v @ m @ v) for v in grid)
    assert float(w @ m @ w) <= brute + 1e-9


def test_solvers_fail_loudly() -> None:
    with pytest.raises(SolverError, match="NaN"):
        min_norm_point(torch.full((3, 3), float("nan"), dtype=torch.float64))


def test_weightings_declare_what_they_need() -> None:
    for name in WEIGHTINGS.names():
        cls = WEIGHTINGS.get(name).obj
        assert cls.needs_task_gradients == issubclass(cls, GradientWeighting) or name == "gradnorm", name
        assert cls.supports_parameters or cls.supports_representation, name
