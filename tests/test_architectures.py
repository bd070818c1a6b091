"""Sharing architectures: every registered one, on an MLP and on LeNet, honours the contract (shapes, an
exact shared/task partition of the parameters that matches where each task's gradient goes, gates that are
distributions, a shared representation that carries every path to the shared parameters) and trains end to
end. Plus each architecture's own properties (soft sharing's penalty, cross-stitch's start, DSelect-k's
selection, PLE's levels) and its config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crosstask as ct
from crosstask.errors import ConfigError
from crosstask.models.architectures.dselect_k import smooth_step
from crosstask.registry import ARCHITECTURES
from tests.conftest import tiny_config

BACKBONES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "mlp": ({"name": "mlp", "hidden": [16, 16]}, (6,)),
    "lenet": ({"name": "lenet", "dropout": 0.0, "features": 24}, (1, 28, 28)),
}
UNSUPPORTED: set[tuple[str, str]] = set()  # (architecture, backbone) pairs an architecture refuses
CASES = [(a, b) for a in ARCHITECTURES.names() for b in BACKBONES if (a, b) not in UNSUPPORTED]
IDS = [f"{a}-{b}" for a, b in CASES]
TASKS = [
    ct.Task("cls", num_classes=3),
    ct.Task("reg", "regression"),
    ct.Task("bin", num_classes=2),
]
OUTPUT_SHAPES = {"cls": (3,), "reg": (), "bin": (2,)}
BATCH = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """These models are tiny: threads only add overhead (and contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(architecture: str | dict[str, Any], backbone: str = "mlp", seed: int = 0) -> ct.MultiTaskModel:
    """A model whose lazy layers are sized (by one forward pass)."""
    torch.manual_seed(seed)
    config, shape = BACKBONES[backbone]
    model = ct.MultiTaskModel(config, TASKS, architecture=architecture, input_shape=shape)
    model(sample(backbone))
    return model


def sample(backbone: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, *BACKBONES[backbone][1], generator=generator, dtype=dtype)


def task_losses(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: out.pow(2).mean() + out.sum() for name, out in outputs.items()}


def ids(parameters: Any) -> list[int]:
    return [id(p) for p in parameters]


# ----------------------------------------------------------------------------- the contract, for every one


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_outputs_have_the_shape_of_each_task(name: str, backbone: str) -> None:
    model = build(name, backbone)
    features, shared = model.architecture(sample(backbone))
    assert set(features) == {t.name for t in TASKS}
    for task in TASKS:
        assert features[task.name].shape == (BATCH, model.architecture.out_features(task.name))
    output = model.forward_all(sample(backbone))
    assert {k: tuple(v.shape) for k, v in output.outputs.items()} == {
        k: (BATCH, *s) for k, s in OUTPUT_SHAPES.items()
    }
    assert shared is None or shared.shape[0] == BATCH


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_shared_and_task_parameters_partition_the_model(name: str, backbone: str) -> None:
    model = build(name, backbone)
    shared = ids(model.shared_parameters())
    per_task = {t.name: ids(model.task_parameters(t.name)) for t in TASKS}
    every = ids(model.parameters())
    groups = [shared, *per_task.values()]
    assert all(len(set(g)) == len(g) for g in groups), "a parameter listed twice"
    assert sum(len(g) for g in groups) == len(every), "overlapping groups or gaps"
    assert set().union(*map(set, groups)) == set(every)
    for task in TASKS:
        assert set(ids(model.heads[task.name].parameters())) <= set(per_task[task.name])


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_each_task_reaches_exactly_the_shared_parameters_and_its_own(name: str, backbone: str) -> None:
    model = build(name, backbone)
    params = list(model.parameters())
    shared = set(ids(model.shared_parameters()))
    losses = task_losses(model(sample(backbone)))
    for task in TASKS:
        grads = torch.autograd.grad(losses[task.name], params, retain_graph=True, allow_unused=True)
        reached = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
        own = set(ids(model.task_parameters(task.name)))
        assert reached - shared - own == set(), f"task {task.name} reaches another task's parameters"
        assert own <= reached, f"task {task.name} does not reach all of its own parameters"
        assert shared <= reached, f"task {task.name} does not reach every shared parameter"


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_gates_are_distributions_over_the_experts(name: str, backbone: str) -> None:
    model = build(name, backbone)
    model(sample(backbone))
    gates = model.gates()
    if name in {"mmoe", "cgc", "ple", "dselect_k"}:
        assert set(gates) == {t.name for t in TASKS}
    for weights in gates.values():
        assert weights.shape[0] == BATCH and weights.dim() == 2
        assert bool((weights >= 0).all())
        assert torch.allclose(weights.sum(1), torch.ones(BATCH), atol=1e-5)


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_the_shared_representation_carries_every_path_to_the_shared_parameters(
    name: str, backbone: str
) -> None:
    model = build(name, backbone).double()
    output = model.forward_all(sample(backbone, torch.float64))
    if output.shared is None:
        pytest.skip(f"{name} has no shared representation")
    shared_params = list(model.shared_parameters())
    losses = task_losses(output.outputs)
    for task in TASKS:
        direct = torch.autograd.grad(losses[task.name], shared_params, retain_graph=True)
        (upstream,) = torch.autograd.grad(losses[task.name], output.shared, retain_graph=True)
        via_shared = torch.autograd.grad(output.shared, shared_params, upstream, retain_graph=True)
        for a, b in zip(direct, via_shared, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_trains_end_to_end(tmp_path: Path, name: str) -> None:
    config = tiny_config(
        tmp_path,
        **{
            "model.architecture": {"name": name},
            "train.steps": 40,
            "train.log_every": 10,
            "train.eval_every": None,
            "data.eval": {},
        },
    )
    records = [
        r
        for r in map(json.loads, (ct.run(config).run_dir / "metrics.jsonl").read_text().splitlines())
        if r["phase"] == "train"
    ]
    total = lambda r: sum(v for k, v in r.items() if k.startswith("loss/"))  # noqa: E731
    assert total(records[-1]) < total(records[0])


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_runs_with_bf16_and_accumulation(tmp_path: Path, name: str) -> None:
    config = tiny_config(
        tmp_path,
        **{
            "model.architecture": {"name": name},
            "train.steps": 3,
            "train.accumulate": 2,
            "train.bf16": True,
            "train.log_every": 1,
            "data.eval": {},
        },
    )
    records = [
        json.loads(line) for line in (ct.run(config).run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(v is not None for r in records for v in r.values())


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_weightings_on_the_representation_fall_back_to_the_parameters_without_one(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An architecture without one shared representation still trains with ``on: representation``: the
    engine takes the exact Jacobian on the shared parameters and says so once."""
    config = tiny_config(
        tmp_path,
        **{
            "model.architecture": {"name": name},
            "weighting": {"name": "mgda", "on": "representation"},
            "train.steps": 3,
            "data.eval": {},
        },
    )
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [32]},
        [{"name": "t0", "num_classes": 2}],
        architecture=name,
        input_shape=(8,),
    )
    result = ct.run(config)
    assert result.summary["status"] == "completed"
    fell_back = [
        r for r in caplog.records if "per-objective gradients on the shared parameters" in r.getMessage()
    ]
    shares = any(
        True for _ in model.shared_parameters()
    )  # soft sharing shares no parameter: nothing to balance
    assert bool(fell_back) == (shares and model.forward_all(torch.randn(2, 8)).shared is None)


def test_a_trained_gated_model_loads_back(tmp_path: Path) -> None:
    """Lazy layers (gates, attention) are sized by the first forward pass; after it, checkpoints load."""
    config = tiny_config(tmp_path, **{"model.architecture": {"name": "mmoe"}, "train.steps": 4})
    result = ct.run(config)
    assert ct.evaluate_run(result.run_dir)
    model = build("mtan")
    other = build("mtan", seed=1)
    model.load_matching(other.state_dict())
    theirs = other.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(("name", "old"), [("mmoe", "task_gates"), ("dselect_k", "selection")])
def test_expert_mixtures_load_checkpoints_with_their_older_gate_names(name: str, old: str) -> None:
    model = build(name)
    x = sample("mlp")
    expected = model(x)
    legacy = {k.replace(".gating.", f".{old}."): v for k, v in model.state_dict().items()}
    assert any(f".{old}." in k for k in legacy)
    fresh = build(name, seed=1)
    fresh(x)  # size the lazy gates
    fresh.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(expected.values(), fresh(x).values(), strict=True))


# ----------------------------------------------------------------------------- soft sharing


def test_soft_sharing_penalty_is_zero_for_identical_towers_and_grows_with_their_distance() -> None:
    weight = 0.1
    model = build({"name": "soft_sharing", "weight": weight, "identical_init": True})
    architecture = model.architecture
    assert float(architecture.regularization().detach()) < 1e-12
    tower = architecture.tower("reg")
    direction = [torch.randn_like(p) for p in tower.parameters()]
    start = [p.detach().clone() for p in tower.parameters()]
    squared = sum(float(d.pow(2).sum()) for d in direction)
    penalties = []
    for scale in (0.1, 0.2, 0.4):
        with torch.no_grad():
            for p, p0, d in zip(tower.parameters(), start, direction, strict=True):
                p.copy_(p0 + scale * d)
        penalty = architecture.regularization()
        # one tower moved by δ: Σ_k ‖w_k − w̄‖² = (K − 1)/K · ‖δ‖²
        assert float(penalty.detach()) == pytest.approx(weight * (2 / 3) * scale**2 * squared, rel=1e-4)
        penalties.append(float(penalty.detach()))
    assert penalties == sorted(penalties)
    penalty.backward()
    assert all(p.grad is not None for p in tower.parameters())


def test_soft_sharing_without_weight_or_frozen_has_no_penalty() -> None:
    assert build({"name": "soft_sharing", "weight": 0.0}).regularization() is None
    model = build("soft_sharing")
    assert float(model.regularization().detach()) > 0  # independent initialisations differ
    model.freeze_backbone()
    assert model.regularization() is None


# ----------------------------------------------------------------------------- cross-stitch


def test_cross_stitch_units_start_at_alpha_same_and_with_identity_units_towers_are_independent() -> None:
    model = build({"name": "cross_stitch", "alpha_same": 0.7})
    units = model.architecture.units.detach()
    assert units.shape == (2, 3, 3)  # one unit per stage of mlp [16, 16]
    assert torch.allclose(units[0], torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]]))
    independent = build({"name": "cross_stitch", "alpha_same": 1.0})
    x = sample("mlp")
    features, _ = independent.architecture(x)
    for task in TASKS:
        assert torch.allclose(features[task.name], independent.architecture.tower(task.name)(x))


# ----------------------------------------------------------------------------- DSelect-k


def test_smooth_step_is_a_continuously_differentiable_step() -> None:
    z = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64, requires_grad=True)
    s = smooth_step(z, 2.0)
    (slope,) = torch.autograd.grad(s.sum(), z)
    s = s.detach()
    assert float(s[0]) == 0.0 and float(s[-1]) == 1.0 and float(s[150]) == pytest.approx(0.5)
    assert bool((s.diff() >= 0).all())
    assert float(slope[z.detach().abs() >= 1].abs().max()) == 0.0  # flat outside (-γ/2, γ/2)
    assert float(slope[(z.detach().abs() - 1).abs() < 0.02].abs().max()) < 0.02  # no kink at ±γ/2


@pytest.mark.parametrize("experts", [3, 4, 5])
def test_dselect_k_selects_at_most_k_experts_once_the_selectors_are_binary(experts: int) -> None:
    model = build({"name": "dselect_k", "experts": experts, "k": 2, "per_example": False, "entropy": 0.1})
    assert float(model.regularization().detach()) > 0
    for selection in model.architecture.gating:
        with torch.no_grad():
            selection.z.copy_(torch.randn_like(selection.z).sign() * 5)  # every smooth step at 0 or 1
    model(sample("mlp"))
    for weights in model.gates().values():
        assert torch.allclose(weights.sum(1), torch.ones(BATCH))
        assert int((weights[0] > 0).sum()) <= 2
    assert float(model.regularization().detach()) == pytest.approx(
        0.0, abs=1e-9
    )  # binary selectors: no entropy


def test_dselect_k_entropy_penalty_trains_with_the_trainer(tmp_path: Path) -> None:
    for per_example in (True, False):
        model = build({"name": "dselect_k", "entropy": 0.1, "per_example": per_example})
        model.train()
        model(sample("mlp"))
        penalty = model.regularization()
        assert penalty is not None and float(penalty.detach()) > 0
        penalty.backward()
        for selection in model.architecture.gating:  # the selectors; the mixing weights α play no part
            selectors = selection.selectors.parameters() if per_example else [selection.z]
            assert all(p.grad is not None and bool(p.grad.any()) for p in selectors)
    config = tiny_config(
        tmp_path,
        **{"model.architecture": {"name": "dselect_k", "entropy": 0.01}, "train.steps": 5, "data.eval": {}},
    )
    ct.run(config)


# ----------------------------------------------------------------------------- PLE and CGC


def test_ple_splits_the_stages_into_levels() -> None:
    two = build({"name": "ple", "levels": 2}, "lenet")  # lenet: conv1, conv2, fc -> [conv1, conv2], [fc]
    assert (
        two.architecture.levels == 2
        and two.architecture._slots[0][0] == two.architecture.experts[0].stages()[:2]
    )
    assert build({"name": "ple"}, "lenet").architecture.levels == 3
    one = build({"name": "ple", "levels": 1, "shared_experts": 3, "task_experts": 2})
    output = one.forward_all(sample("mlp"))
    assert output.shared is not None and output.shared.shape == (BATCH, 3, 16)
    assert {k: tuple(v.shape) for k, v in one.gates().items()} == {t.name: (BATCH, 5) for t in TASKS}


def test_gated_architectures_without_task_experts_still_partition_their_parameters() -> None:
    for architecture in ({"name": "ple", "task_experts": 0}, {"name": "cgc", "task_experts": 0}):
        model = build(architecture, "lenet")
        shared = set(ids(model.shared_parameters()))
        losses = task_losses(model(sample("lenet")))
        params = list(model.parameters())
        for task in TASKS:
            grads = torch.autograd.grad(losses[task.name], params, retain_graph=True, allow_unused=True)
            reached = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
            assert reached == shared | set(ids(model.task_parameters(task.name)))


# ----------------------------------------------------------------------------- MTAN


def test_mtan_masks_scale_the_shared_features() -> None:
    model = build("mtan", "lenet")
    architecture = model.architecture
    x = sample("lenet")
    features, _ = architecture(x)
    shared = architecture.trunk(x)
    for task in TASKS:
        ratio = features[task.name] / shared.clamp_min(1e-6)
        assert bool(((ratio >= 0) & (ratio <= 1 + 1e-5) | (shared <= 1e-6)).all())


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"name": "mmoe", "experts": 0}, r"architecture\.experts = 0"),
        (
            {"name": "dselect_k", "experts": 4, "k": 5},
            r"architecture\.k = 5: k \(5\) must be at most experts",
        ),
        ({"name": "dselect_k", "experts": 1, "k": 1}, r"architecture\.experts = 1"),
        ({"name": "cross_stitch", "alpha_same": 0}, r"architecture\.alpha_same"),
        ({"name": "soft_sharing", "weight": -1}, r"architecture\.weight"),
        ({"name": "cgc", "task_experts": -1}, r"architecture\.task_experts"),
        ({"name": "cgc", "levels": 2}, r"architecture\.levels: unknown key"),
        ({"name": "ple", "levels": 3}, r"architecture\.levels: ple with levels=3 needs .* at least 3 stages"),
        ({"name": "mtan", "heads": 2}, r"architecture\.heads: unknown key"),
    ],
)
def test_bad_architecture_configs_are_config_errors_naming_the_key(
    architecture: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ct.MultiTaskModel(BACKBONES["mlp"][0], TASKS, architecture=architecture, input_shape=(6,))


def test_architectures_with_several_trunks_refuse_a_single_custom_module() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    module.num_features = 4
    for name in ("mmoe", "soft_sharing"):
        with pytest.raises(ConfigError, match="needs several backbones"):
            ct.MultiTaskModel(module, TASKS, architecture=name)
    ct.MultiTaskModel(module, TASKS, architecture="mtan")(torch.randn(2, 6))  # one trunk: fine
