"""Domain adaptation methods: every registered ``Adaptation`` subclass runs end to end with any weighting, the
building blocks (gradient reversal, MMD/JMMD, CDAN's maps, BSP's penalty, AFN's norm loss) have the
properties their papers rely on, and alignment beats source-only training on a planted shift."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import crosstask as ct
from crosstask.engine.method import StreamSpec
from crosstask.errors import ConfigError
from crosstask.methods.adaptation import Adaptation, View, Views
from crosstask.methods.afn import AFN, AFNConfig, l2_preserving_dropout
from crosstask.methods.bsp import batch_spectral_penalty
from crosstask.methods.cdan import CDAN, CDANConfig
from crosstask.methods.mcd import MCD, MCDConfig, classifier_discrepancy
from crosstask.methods.mdd import log_probability_not
from crosstask.modules.discriminator import domain_loss
from crosstask.modules.grl import (
    ReversalConfig,
    call_with_reversed_parameters,
    reverse_gradient,
    scale_gradient,
)
from crosstask.modules.heads import fresh_copy
from crosstask.modules.kernels import GaussianKernels, joint_mmd, mean_squared_distance, mmd
from crosstask.modules.multilinear import MultilinearMap, RandomizedMultilinearMap, multilinear_map
from crosstask.registry import METHODS

ADAPTATION = sorted(
    name
    for name in METHODS.names()
    if isinstance(METHODS.get(name).obj, type) and issubclass(METHODS.get(name).obj, Adaptation)
)
OURS = [
    "afn",
    "bsp",
    "cdan",
    "dan",
    "dann",
    "jan",
    "mcd",
    "mdd",
]  # the feature-alignment methods of this file
SYNTHETIC = {"name": "synthetic", "n": 128, "n_test": 64, "dim": 8, "num_tasks": 1}
REGRESSION = {  # da_config changes: one regression task, read from the synthetic data's regression labels
    "tasks": [{"name": "t0", "kind": "regression"}],
    **{
        f"data.{part}.dataset.task_kind": "regression"
        for part in ("train.source", "train.target", "eval.target_test")
    },
}


def da_config(tmp_path: Path, method: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A few steps of adaptation from synthetic domain 0 (labeled) to domain 1 (unlabeled)."""
    target = {**SYNTHETIC, "domain": 1, "shift": 2.0}
    config: dict[str, Any] = {
        "name": method["name"],
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "t0", "num_classes": 2}],
        "data": {
            "train": {"source": {"dataset": SYNTHETIC}, "target": {"dataset": target, "labeled": False}},
            "eval": {"target_test": {"dataset": {**target, "split": "test"}}},
        },
        "model": {"backbone": {"name": "mlp", "hidden": [16]}, "bottleneck": {"dim": 8}},
        "method": method,
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"steps": 6, "batch_size": 16, "eval_every": 6, "log_every": 3},
    }
    config = copy.deepcopy(config)  # changes below must not reach SYNTHETIC
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return config


def logged_losses(run_dir: Path) -> list[dict[str, float]]:
    """Every logged objective (``loss/``) and penalty (``penalty/``) of the training rows, by name."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(("loss/", "penalty/"))}
        for r in rows
        if r["phase"] == "train"
    ]


def small(name: str) -> dict[str, Any]:
    """Our methods with a small discriminator, so the runs stay fast."""
    return {"name": name, "hidden": 16} if name in ("dann", "cdan", "bsp") else {"name": name}


# ----------------------------------------------------------------------------- every method, end to end


@pytest.mark.parametrize("name", ADAPTATION)
def test_every_adaptation_method_runs_and_logs_finite_losses_with_any_weighting(
    tmp_path: Path, name: str
) -> None:
    method = small(name)
    result = ct.run(da_config(tmp_path, method))
    assert result.summary["status"] == "completed"
    rows = logged_losses(result.run_dir)
    assert len(rows) == 2 and rows[0].keys() == rows[1].keys()
    assert rows[0] or name == "adabn"  # AdaBN's forward pass is its update: nothing to log
    assert all(math.isfinite(v) for row in rows for v in row.values())
    if METHODS.get(name).obj.needs_source:
        assert next(iter(rows[0])) == "source"  # the supervised loss first, then the method's own
    # "any dynamic weighting works too": a gradient weighting on the shared representation (the engine takes
    # the parameters instead where a method's objectives do not all pass through it)
    gradient = {"name": "mgda", "on": "representation"}
    again = ct.run(da_config(tmp_path, method, weighting=gradient, name=f"{name}_mgda"))
    rows = logged_losses(again.run_dir)
    assert (
        again.summary["status"] == "completed" and rows[-1].keys() == logged_losses(result.run_dir)[0].keys()
    )
    assert all(math.isfinite(v) for row in rows for v in row.values())


@pytest.mark.parametrize("name", OURS)
def test_semi_supervised_adaptation_adds_the_target_loss(tmp_path: Path, name: str) -> None:
    few_labels = {"dataset": {**SYNTHETIC, "n": 32, "domain": 1, "shift": 2.0}, "batch_size": 8}
    config = da_config(tmp_path, {**small(name), "labeled_target": "few"}, **{"data.train.few": few_labels})
    rows = logged_losses(ct.run(config).run_dir)
    assert list(rows[0])[:2] == ["source", "target"]
    assert all(math.isfinite(v) for row in rows for v in row.values())


@pytest.mark.parametrize(
    "weighting",
    [
        {"name": "static"},
        {"name": "uncertainty"},
        {"name": "dwa"},
        {"name": "pcgrad", "on": "representation"},
    ],
    ids=["static", "uncertainty", "dwa", "pcgrad"],
)
def test_the_papers_trade_offs_hold_under_every_weighting(tmp_path: Path, weighting: dict[str, Any]) -> None:
    """BSP's β, AFN's λ and MCD's balance weight are the methods' own coefficients: each penalty is logged,
    and applied, at that coefficient times its raw value, whatever the weighting; the weighting only sees
    the objectives."""

    def rows(method: dict[str, Any]) -> list[dict[str, Any]]:
        run = ct.run(da_config(tmp_path, method, weighting=weighting, name=method["name"]))
        lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in lines if r["phase"] == "train"]

    bsp = rows({**small("bsp"), "beta": 1e-4})
    assert "weight/spectral" not in bsp[0] and {"weight/source", "weight/transfer"} <= set(bsp[0])
    assert 0 < bsp[0]["penalty/spectral"] < 1e-2  # β · σ₁², not σ₁²
    afn = rows({"name": "afn", "delta": 0.3})
    assert afn[0]["penalty/norm"] == pytest.approx(0.05 * 0.3**2, rel=1e-4)  # λ · Δr², λ = 0.05
    mcd = rows({"name": "mcd", "balance_weight": 0.01})
    assert "weight/balance" not in mcd[0] and "penalty/balance" in mcd[0]
    unbalanced = rows({"name": "mcd", "balance": False})
    assert "penalty/balance" not in unbalanced[0]


def test_a_weight_on_a_penalty_is_a_config_error_naming_its_coefficient(tmp_path: Path) -> None:
    bad = da_config(tmp_path, small("bsp"), weighting={"name": "static", "weights": {"spectral": 0.5}})
    with pytest.raises(ConfigError, match=r"'spectral' is a penalty .* method\.beta"):
        ct.run(bad)


@pytest.mark.parametrize("name", ["cdan", "mcd"])
def test_resume_of_a_method_with_its_own_modules_is_exact(tmp_path: Path, name: str) -> None:
    method = {**small(name), "warmup_steps": 8}  # a warm-up that does not depend on train.steps
    if name == "cdan":
        method["randomized"] = True  # random projections are buffers: they must come back too
    base = da_config(
        tmp_path, method, **{"train.steps": 8, "train.eval_every": 4, "train.deterministic": True}
    )
    full = ct.run({**base, "name": "full"})
    ct.run({**base, "name": "part", "train": {**base["train"], "steps": 4}})
    resumed = ct.run({**base, "name": "part"}, resume=True)
    assert resumed.summary["final"] == full.summary["final"]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("method", "changes", "message"),
    [
        ({"name": "mdd", "margin": -1.0}, {}, "margin"),
        ({"name": "dan", "estimator": "quadratic"}, {}, "estimator"),
        ({"name": "dan", "bandwidths": [1.0, 0.0]}, {}, "bandwidths"),
        ({"name": "cdan"}, REGRESSION, "classification"),
        ({"name": "afn", "entropy": True}, REGRESSION, "entropy"),
        ({"name": "dan"}, {"data.train.target.labeled": True}, "unlabeled target"),
        ({"name": "dan"}, {"train.batch_size": 1}, "at least 2 samples"),
    ],
)
def test_bad_configs_are_reported_clearly(
    tmp_path: Path, method: dict[str, Any], changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ct.run(da_config(tmp_path, method, **changes))


def test_feature_alignment_adapts_a_regression_task(tmp_path: Path) -> None:
    for name, term in (("dann", "transfer"), ("dan", "transfer"), ("afn", "norm")):
        rows = logged_losses(ct.run(da_config(tmp_path, small(name), **REGRESSION)).run_dir)
        assert list(rows[0]) == ["source", term]
        assert all(math.isfinite(v) for row in rows for v in row.values())


# ----------------------------------------------------------------------------- gradient reversal


def test_gradient_reversal_flips_the_gradient_times_the_coefficient() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    weights = torch.randn(5, 3)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -0.3 * weights)
    x.grad = None
    (scale_gradient(x, 2.0) * weights).sum().backward()
    assert torch.allclose(x.grad, 2.0 * weights)


def test_warm_up_goes_monotonically_from_zero_to_the_reversal_coefficient() -> None:
    config = ReversalConfig(name="x", reversal=0.5)
    values = [config.coefficient(step, 200) for step in range(201)]
    assert values[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(0.5, abs=1e-4) and values[100] < 0.5
    fixed = ReversalConfig(name="x", warmup_steps=10)
    assert fixed.coefficient(10, 1000) == fixed.coefficient(500, 1000) == pytest.approx(1.0, abs=1e-4)


def test_a_module_with_reversed_parameters_ascends_what_its_input_descends() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    plain = layer(x).pow(2).sum()
    expected = torch.autograd.grad(plain, [x, *layer.parameters()])
    reversed_loss = call_with_reversed_parameters(layer, x, 1.0).pow(2).sum()
    got = torch.autograd.grad(reversed_loss, [x, *layer.parameters()])
    assert reversed_loss.item() == pytest.approx(plain.item())
    assert torch.allclose(got[0], expected[0])  # the input: same gradient
    for g, e in zip(got[1:], expected[1:], strict=True):
        assert torch.allclose(g, -e)  # the parameters: reversed


# ----------------------------------------------------------------------------- MMD and JMMD


def test_mmd_is_about_zero_for_one_distribution_and_grows_with_a_mean_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 5, generator=g), torch.randn(200, 5, generator=g)
    kernels = GaussianKernels()
    for estimator in ("linear", "unbiased", "biased"):
        values = [float(mmd(a, b + shift, kernels, estimator)) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
        assert abs(values[0]) < 0.05 * values[-1], estimator
        assert all(y > x for x, y in itertools.pairwise(values)), (estimator, values)
    assert float(mmd(a, a.clone(), kernels, "biased")) == pytest.approx(0.0, abs=1e-6)


def test_joint_mmd_sees_a_shift_in_either_layer_and_is_a_product_kernel() -> None:
    g = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(150, 4, generator=g), torch.randn(150, 4, generator=g)
    p1 = torch.softmax(torch.randn(150, 3, generator=g), 1)
    p2 = torch.softmax(torch.randn(150, 3, generator=g), 1)
    kernels = [GaussianKernels(), GaussianKernels(sigma=0.92)]
    same = float(joint_mmd([f1, p1], [f2, p2], kernels))
    feature_shift = [float(joint_mmd([f1, p1], [f2 + s, p2], kernels)) for s in (0.5, 1.0, 2.0)]
    flipped = torch.softmax(3 * torch.eye(3)[torch.zeros(150, dtype=torch.long)], 1)  # confident class-0
    output_shift = float(joint_mmd([f1, p1], [f2, flipped], kernels))
    assert abs(same) < 0.05 * feature_shift[-1]
    assert feature_shift == sorted(feature_shift) and feature_shift[0] > 10 * abs(same)
    assert output_shift > 10 * abs(same)
    # with one layer it is the MMD; with a constant second layer the product changes nothing
    ones = torch.ones(150, 1)
    one = [GaussianKernels(), GaussianKernels(sigma=1.0)]
    assert float(joint_mmd([f1, ones], [f2 + 1, ones], one, "biased")) == pytest.approx(
        float(mmd(f1, f2 + 1, GaussianKernels(), "biased")), rel=1e-5
    )


def test_kernel_bandwidths_follow_the_batch_and_carry_no_gradient() -> None:
    x = torch.randn(50, 3, requires_grad=True)
    pairwise = torch.cdist(x.detach(), x.detach()).pow(2).mean()
    assert float(mean_squared_distance(x).detach()) == pytest.approx(float(pairwise), rel=1e-4)
    variances = GaussianKernels((0.5, 2.0)).variances(x)
    assert not variances.requires_grad
    assert torch.allclose(variances, pairwise * torch.tensor([0.5, 2.0]), rtol=1e-4)


# ----------------------------------------------------------------------------- CDAN, BSP, MDD, MCD, AFN


def test_multilinear_map_is_the_flattened_outer_product() -> None:
    f, g = torch.randn(6, 5), torch.softmax(torch.randn(6, 3), 1)
    out = multilinear_map(f, g)
    assert out.shape == (6, 15) and MultilinearMap(5, 3).out_features == 15
    assert torch.allclose(out.view(6, 3, 5), g[:, :, None] * f[:, None, :])


def test_randomized_multilinear_map_approximates_inner_products() -> None:
    torch.manual_seed(0)
    f, g = torch.randn(40, 8), torch.softmax(torch.randn(40, 4), 1)
    exact = multilinear_map(f, g) @ multilinear_map(f, g).T  # = <f, f'> <g, g'>
    assert torch.allclose(exact, (f @ f.T) * (g @ g.T), atol=1e-4)
    randomized = RandomizedMultilinearMap(8, 4, out_features=20000)
    approx = randomized(f, g) @ randomized(f, g).T
    assert randomized(f, g).shape == (40, 20000)
    assert float((approx - exact).norm() / exact.norm()) < 0.1


def test_cdan_randomizes_the_map_above_the_threshold_and_weights_by_entropy() -> None:
    specs = [StreamSpec("source", True, ("y",)), StreamSpec("target", False, ("y",))]

    def cdan(features: int, classes: int, **options: Any) -> CDAN:
        model = ct.MultiTaskModel(
            "mlp", [ct.Task("y", num_classes=classes)], input_shape=(4,), bottleneck=features
        )
        return CDAN(CDANConfig(name="cdan", hidden=8, **options), model, specs)

    assert isinstance(cdan(64, 10).modules["map"], MultilinearMap)  # 640 <= 4096: the exact map
    wide = cdan(512, 10)  # 5120 > 4096
    assert isinstance(wide.modules["map"], RandomizedMultilinearMap)
    assert wide.modules["discriminator"].net[0].in_features == 1024
    # CDAN+E: confident samples weigh more; uniform weights give the plain loss
    logits = torch.tensor([3.0, -1.0, 0.5, 2.0])
    uniform = domain_loss(logits[:2], logits[2:], torch.ones(2) * 7, torch.ones(2))
    assert float(uniform) == pytest.approx(float(domain_loss(logits[:2], logits[2:])))
    weighted = domain_loss(logits[:2], logits[2:], torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    expected = 0.5 * (
        torch.nn.functional.softplus(-logits[0]) + torch.nn.functional.softplus(logits[3])
    )  # only the weighted samples count
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)


def test_bsp_penalty_is_the_sum_of_squared_top_singular_values() -> None:
    features = torch.randn(32, 10, requires_grad=True)
    singular = np.linalg.svd(features.detach().numpy(), compute_uv=False)
    for k in (1, 3):
        assert float(batch_spectral_penalty(features, k).detach()) == pytest.approx(
            float((singular[:k] ** 2).sum()), rel=1e-4
        )
    batch_spectral_penalty(features, 1).backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_mdd_disparity_terms_and_mcd_discrepancy() -> None:
    logits = torch.randn(7, 4)
    classes = torch.randint(0, 4, (7,))
    p = torch.softmax(logits, 1).gather(1, classes[:, None]).squeeze(1)
    assert torch.allclose(log_probability_not(logits, classes), torch.log1p(-p), atol=1e-5)
    extreme = torch.tensor([[60.0, -60.0]])
    assert torch.isfinite(log_probability_not(extreme, torch.tensor([0])))  # no log(0)
    p1, p2 = torch.softmax(torch.randn(5, 3), 1), torch.softmax(torch.randn(5, 3), 1)
    assert float(classifier_discrepancy(p1, p1)) == 0.0
    assert float(classifier_discrepancy(p1, p2)) == pytest.approx(float((p1 - p2).abs().sum() / 15))
    head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    copy_ = fresh_copy(head)
    assert copy_ is not head and not torch.equal(copy_[0].weight, head[0].weight)


def test_mcd_alternates_a_classifier_step_with_generator_steps() -> None:
    """Step B (classifiers maximize d, features untouched), then n steps C (features minimize d, classifiers
    untouched); the simultaneous schedule moves both sides every step."""
    torch.manual_seed(0)
    model = ct.MultiTaskModel("mlp", [ct.Task("y", num_classes=3)], input_shape=(4,))
    specs = [StreamSpec("source", True, ("y",)), StreamSpec("target", False, ("y",))]
    features = torch.randn(8, model.architecture.out_features("y"), requires_grad=True)
    views = Views(
        View(model.heads["y"](features[:4]), features[:4], torch.tensor([0, 1, 2, 0]), True),
        View(model.heads["y"](features[4:]), features[4:]),
        None,
        features,
    )

    def gradients(method: MCD, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        method.step, method.total_steps = step, 100
        features.grad, model.heads["y"].weight.grad = None, None
        method.transfer(views)["transfer"].backward(retain_graph=True)
        grads = [features.grad, model.heads["y"].weight.grad]
        return tuple(torch.zeros(1) if g is None else g.abs().sum() for g in grads)

    alternating = MCD(MCDConfig(name="mcd", generator_steps=2, warmup_steps=1), model, specs)
    for step, turn in [(0, "classifiers"), (1, "features"), (2, "features"), (3, "classifiers")]:
        to_features, to_classifier = gradients(alternating, step)
        assert (to_features > 0, to_classifier > 0) == (turn == "features", turn == "classifiers"), step
    simultaneous = MCD(MCDConfig(name="mcd", schedule="simultaneous", warmup_steps=1), model, specs)
    assert all(float(g) > 0 for g in gradients(simultaneous, 1))
    # the classifiers ascend d: a small step against their gradient raises it
    before = float(alternating.transfer(views)["transfer"].detach())
    alternating.step = 0
    alternating.transfer(views)["transfer"].backward()
    with torch.no_grad():
        for module in (model.heads["y"], alternating.modules["second_classifier"]):
            for p in module.parameters():
                p -= 0.5 * p.grad
    assert float(alternating.transfer(views)["transfer"].detach()) > before


def test_afn_loss_asks_every_norm_to_grow_by_delta() -> None:
    model = ct.MultiTaskModel("mlp", [ct.Task("y", num_classes=2)], input_shape=(3,))
    specs = [StreamSpec("source", True, ("y",)), StreamSpec("target", False, ("y",))]
    method = AFN(AFNConfig(name="afn", delta=0.3, trade_off=1.0), model, specs)
    features = torch.randn(6, 5, requires_grad=True)
    logits = torch.randn(6, 2)
    views = Views(View(logits[:3], features[:3]), View(logits[3:], features[3:]), None, features)
    loss = method.transfer(views)["norm"]
    assert loss.item() == pytest.approx(0.3**2)
    loss.backward()
    direction = features.detach() / features.detach().norm(dim=1, keepdim=True)
    assert torch.allclose(features.grad, -2 * 0.3 * direction / 6, atol=1e-6)  # descent: every norm grows
    torch.manual_seed(0)
    x = torch.randn(4000, 16)
    dropped = l2_preserving_dropout(x, 0.5)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert dropped.pow(2).sum(1).mean().item() == pytest.approx(x.pow(2).sum(1).mean().item(), rel=0.03)


# ----------------------------------------------------------------------------- a planted shift


def blobs(n: int, seed: int, offset: tuple[float, float] = (0.0, 0.0)) -> ct.ArrayDataset:
    """Two Gaussian classes at x₁ = ±2 (σ = 0.7), translated by ``offset``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.stack([torch.where(y == 1, 2.0, -2.0), torch.zeros(n)], 1)
    return ct.ArrayDataset(centers + 0.7 * torch.randn(n, 2, generator=g) + torch.tensor(offset), {"y": y})


SHIFT = (2.5, 2.5)  # target class 0 lands at x₁ = 0.5, on the source's class-1 side: source-only ≈ 65-70 %


def target_accuracy(tmp_path: Path, method: str | dict[str, Any], **options: Any) -> float:
    """Target accuracy after 500 steps; the shift is removable by projecting out its direction (a linear
    feature map keeps the classes apart along (1, −1))."""
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [64, 64]}, [ct.Task("y", num_classes=2)], input_shape=(2,)
    )
    name = method if isinstance(method, str) else method["name"]
    result = ct.fit(
        model,
        method=method,
        source=blobs(512, 1),
        target=None if name == "erm" else blobs(512, 2, SHIFT),
        eval={"test": blobs(512, 3, SHIFT)},
        steps=500,
        batch_size=64,
        optim={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        output_dir=tmp_path,
        name=name,
        eval_every=500,
        log_every=500,
        **options,
    )
    return result.metrics["test/y/accuracy"]


@pytest.fixture(scope="module")
def source_only(tmp_path_factory: pytest.TempPathFactory) -> float:
    accuracy = target_accuracy(tmp_path_factory.mktemp("erm"), "erm")
    assert accuracy < 75  # the shift is real
    return accuracy


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ({"name": "dann", "hidden": 32, "batch_norm": False}, {}),  # the paper's discriminator (no BN)
        ({"name": "cdan", "hidden": 32, "batch_norm": False}, {}),
        ({"name": "dan"}, {}),
        ({"name": "jan"}, {}),
        ({"name": "bsp", "hidden": 32, "batch_norm": False, "beta": 1e-4}, {}),
    ],
    ids=["dann", "cdan", "dan", "jan", "bsp"],
)
def test_alignment_beats_source_only_on_a_planted_shift(
    tmp_path: Path, source_only: float, method: dict[str, Any], options: dict[str, Any]
) -> None:
    """Seeds 0-3 of each of these gave 90-98 % against 65-70 % for source-only: a margin of 15 points is safe.

    Not here: MCD, MDD and AFN, which on this translation are no better than source-only (MCD 60-62 %, AFN
    50-74 %) or collapse to one class on some seeds (MDD). They move decision boundaries out of dense target
    regions, and are tested on a shift that needs that: ``test_self_training.py``'s clustered rotation."""
    assert target_accuracy(tmp_path, method, **options) > source_only + 15
