"""The gradient engine: every method × loss and gradient weightings, the representation check, the safety net.

The central property: after the engine's backward pass, the gradient on the shared parameters equals the
weighted sum (with the weights the weighting reports) of the objectives' exact gradients, plus the
penalties' gradient — for every registered method, whatever the weighting and the space it works on.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import crosstask as ct
from crosstask.config import validate_config
from crosstask.engine.events import Callback
from crosstask.engine.gradients import GradientEngine, bypasses
from crosstask.engine.method import StreamSpec
from crosstask.evaluation.evaluator import Evaluator
from crosstask.experiment import build_domains, build_model
from crosstask.experiment.build import build_method, build_optimizers, build_streams, build_weighting
from crosstask.methods.adaptation import Adaptation
from crosstask.methods.coral import CORAL
from crosstask.methods.generalization import Generalization
from crosstask.models.model import infer_input_shape
from crosstask.registry import METHODS, WEIGHTINGS
from crosstask.weighting.base import GradientWeighting

SYNTHETIC = {"name": "synthetic", "n": 96, "n_test": 32, "dim": 6, "num_tasks": 2}
# what a method needs beyond its defaults to run on 6-d vectors with an MLP
OPTIONS: dict[str, dict[str, Any]] = {
    "mixstyle": {"layers": ["layer1"], "vectors": True},
    "mldg": {"inner_lr": 0.05},
    "dann": {"hidden": 8},
    "cdan": {"hidden": 8},
    "bsp": {"hidden": 8, "beta": 0.1},  # a visible penalty
    "mcd": {"schedule": "simultaneous"},  # both sides move in every step
    "afn": {"entropy": True},
}
EPISODES = {"ways": 2, "shots": 2, "queries": 3, "tasks": 2}
CASES = [*sorted(METHODS.names()), "erm+l2sp", "erm+bss", "erm+two_streams"]
WEIGHTINGS_TRIED = [
    {"name": "uncertainty"},
    {"name": "mgda", "on": "parameters"},
    {"name": "mgda", "on": "representation"},
    {"name": "pcgrad", "on": "parameters"},
    {"name": "pcgrad", "on": "representation"},
]


def experiment(case: str, weighting: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    name, _, variant = case.partition("+")
    method = {"name": name, **OPTIONS.get(name, {})}
    entry = METHODS.get(name).obj
    source_free = issubclass(entry, Adaptation) and not entry.needs_source
    if issubclass(entry, Adaptation) or entry is CORAL:
        train = {
            "source": {"dataset": SYNTHETIC},
            "target": {"dataset": {**SYNTHETIC, "domain": 1, "shift": 1.5}, "labeled": False},
        }
        if source_free:
            train.pop("source")
    elif issubclass(entry, Generalization):
        train = {f"d{i}": {"dataset": {**SYNTHETIC, "domain": i}} for i in range(3)}
    elif entry.reads_episodes:  # two 2-way episodes per step: two objectives to balance
        train = {"train": {"dataset": SYNTHETIC, "episodes": EPISODES}}
    else:
        train = {"train": {"dataset": SYNTHETIC}}
    if variant == "l2sp":
        method["regularizers"] = [{"name": "l2sp", "alpha": 1.0, "beta": 0.1}]
    elif variant == "bss":
        method["regularizers"] = [{"name": "bss", "eta": 0.1}]
    elif variant == "two_streams":
        train["other"] = {"dataset": {**SYNTHETIC, "domain": 1}}
    tasks = [{"name": "t0", "num_classes": 2}]
    if name == "multitask":
        tasks.append({"name": "t1", "num_classes": 2})
    return {
        "name": case.replace("+", "_"),
        "output_dir": str(tmp_path),
        "tasks": tasks,
        "data": {"train": train},
        "model": {"backbone": {"name": "mlp", "hidden": [16], "batch_norm": True}, "bottleneck": {"dim": 8}},
        "method": method,
        "weighting": weighting,
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"steps": 3, "batch_size": 16},
    }


def exact_gradients(output, shared: list[torch.nn.Parameter]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each objective's gradient on the shared parameters (flattened), and the penalties' summed gradient,
    computed directly from the step's graph."""

    def flat(loss: torch.Tensor) -> torch.Tensor:
        if not loss.requires_grad:
            return torch.zeros(sum(p.numel() for p in shared))
        grads = torch.autograd.grad(
            loss, shared, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        return torch.cat([g.reshape(-1) for g in grads])

    objectives = {n: flat(v.float()) for n, v in output.objectives.items()}
    penalty = sum(
        (flat(v.float()) for v in output.penalties.values()), torch.zeros(sum(p.numel() for p in shared))
    )
    return objectives, penalty


@pytest.mark.parametrize(
    "weighting", WEIGHTINGS_TRIED, ids=lambda w: f"{w['name']}-{w.get('on', '')}".strip("-")
)
@pytest.mark.parametrize("case", CASES)
def test_the_shared_update_is_the_reported_combination_of_the_objectives_gradients(
    case: str, weighting: dict[str, Any], tmp_path: Path
) -> None:
    if case == "adabn":
        pytest.skip("adabn returns no objective: its forward pass is the whole update (no gradient to check)")
    config = validate_config(experiment(case, weighting, tmp_path))
    torch.manual_seed(0)
    train_domains = build_domains(config, "train")
    model = build_model(
        config.model, config.tasks, infer_input_shape(next(iter(train_domains.values())).dataset)
    )
    method = build_method(config.method, model, train_domains)
    weighting_obj = build_weighting(config.weighting, method)
    optimizers, _ = build_optimizers(config.optim, config.scheduler, model, method, weighting_obj, 3)
    streams = build_streams(train_domains, method, model.tasks, config.train, 0, torch.device("cpu"), 0)
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    others = [p for o in optimizers.values() for g in o.param_groups for p in g["params"]]
    others = [
        p
        for p in others
        if all(p is not s for s in shared) and all(p is not w for w in weighting_obj.params.parameters())
    ]
    engine = GradientEngine(weighting_obj, shared, others)
    backbone = [p.detach().clone() for p in model.backbone_parameters()]
    model.train()
    for step in range(3):
        method.step, method.total_steps = step, 3
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        output = method.training_step(next(streams))
        expected, penalty = exact_gradients(output, shared)
        record = engine.backward(output.objectives, output.penalties, output.representation, step=step)
        combined = (
            sum((float(record.weights[n]) * g for n, g in expected.items()), torch.zeros_like(penalty))
            + penalty
        )
        actual = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared]
        )
        scale = max(1.0, float(combined.abs().max()))
        assert torch.allclose(actual, combined, atol=2e-5 * scale, rtol=1e-4), (
            f"step {step}: max difference {float((actual - combined).abs().max()):.3g} "
            f"(space {record.space}, reason {record.reason})"
        )
        if isinstance(weighting_obj, GradientWeighting):
            assert record.jacobian is not None and record.jacobian.shape[0] == len(expected)
        for optimizer in optimizers.values():
            optimizer.step()
    moved = any(
        not torch.equal(a, b.detach()) for a, b in zip(backbone, model.backbone_parameters(), strict=True)
    )
    assert moved, "the backbone did not move"


# ----------------------------------------------------------------------------- the defects this replaced


class BackboneAtStart(Callback):
    """Keeps the backbone's parameters as training finds them."""

    def on_fit_start(self, trainer) -> None:
        self.start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "backbone" in n}


@pytest.mark.parametrize("method", ["irm", "vrex", "groupdro", "mixstyle", "coral"])
@pytest.mark.parametrize(
    "weighting", [{"name": "mgda", "on": "representation"}, {"name": "pcgrad"}], ids=["mgda", "pcgrad"]
)
def test_domain_generalization_under_gradient_weightings_trains_the_backbone(
    tmp_path: Path, method: str, weighting: dict[str, Any]
) -> None:
    """They used to hand the weighting a concatenation of split features that no loss went through: a zero
    row on it, a zero update of the backbone while the heads trained, and no error."""
    config = experiment(method, weighting, tmp_path)
    if method == "coral":  # its generalization mode: labeled domains only
        config["data"]["train"] = {f"d{i}": {"dataset": {**SYNTHETIC, "domain": i}} for i in range(3)}
    watch = BackboneAtStart()
    result = ct.run(config, callbacks=[watch])
    assert result.summary["status"] == "completed"
    trained = dict(result.model.named_parameters())
    weights = {
        n: p for n, p in watch.start.items() if p.dim() > 1
    }  # (a bias before BatchNorm gets no gradient)
    assert weights and all(not torch.equal(p, trained[n]) for n, p in weights.items())


def test_a_regularizer_on_the_weights_no_longer_takes_the_task_gradient_away_under_mgda(
    tmp_path: Path,
) -> None:
    """erm + l2sp + mgda logged weight/source = 0 and weight/l2sp = 1 at every step: L2-SP reaches the
    backbone without passing through the representation, so MGDA's min-norm point was the regularizer's."""
    config = experiment("erm+l2sp", {"name": "mgda", "on": "representation"}, tmp_path)
    config["train"] = {"steps": 6, "batch_size": 16, "log_every": 1}
    result = ct.run(config)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, lines) if r["phase"] == "train"]
    assert all(r["weight/train"] == pytest.approx(1.0) for r in rows)
    assert all("weight/l2sp" not in r and r["penalty/l2sp"] >= 0 for r in rows)


# ----------------------------------------------------------------------------- the representation check


def test_an_objective_that_bypasses_the_representation_gets_its_exact_parameter_gradient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The safety net: a representation the objectives do not all pass through is never used with zeros."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    head = torch.nn.Linear(3, 1)
    x = torch.randn(8, 4)
    z = encoder(x)
    detour = torch.cat([z[:4], z[4:]])  # a new tensor built from z: no objective passes through it
    objectives = {"a": head(z).pow(2).mean(), "b": encoder.weight.pow(2).sum()}  # b never touches z at all
    weighting = WEIGHTINGS.get("mgda").obj(
        WEIGHTINGS.get("mgda").config(name="mgda", on="representation"), ["a", "b"]
    )
    engine = GradientEngine(weighting, list(encoder.parameters()), list(head.parameters()))
    exact = {
        n: torch.cat(
            [
                g.reshape(-1)
                for g in torch.autograd.grad(
                    v,
                    list(encoder.parameters()),
                    retain_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
            ]
        )
        for n, v in objectives.items()
    }
    record = engine.backward(objectives, {}, detour)
    assert record.space == "parameters" and "objective 'a'" in record.reason
    actual = torch.cat([p.grad.reshape(-1) for p in encoder.parameters()])
    expected = float(record.weights["a"]) * exact["a"] + float(record.weights["b"]) * exact["b"]
    assert torch.allclose(actual, expected, atol=1e-6)
    assert any("instead" in r.getMessage() for r in caplog.records)


def test_bypasses_follows_edges_not_nodes() -> None:
    """Two outputs of one split node: a loss through the other output does not pass through z."""
    w = torch.randn(4, 3, requires_grad=True)
    joint = torch.randn(6, 4) @ w
    z, rest = joint.split([3, 3])
    stops = {(z.grad_fn, z.output_nr)}
    assert not bypasses(z.sum(), stops, {id(w)})
    assert bypasses(rest.sum(), stops, {id(w)})
    assert bypasses((z.sum() + w.sum()), stops, {id(w)})  # a direct path to the weights as well
    assert not bypasses(torch.randn(3, requires_grad=True).sum(), stops, {id(w)})  # never reaches w


def test_a_reader_gets_the_jacobian_under_a_loss_weighting_without_changing_the_update() -> None:
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    x = torch.randn(8, 4)

    def objectives() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = encoder(x)
        out = head(z)
        return {"a": out[:, 0].pow(2).mean(), "b": out[:, 1].abs().mean()}, z

    entry = WEIGHTINGS.get("static")
    grads = []
    for keep in (False, True):
        for p in [*encoder.parameters(), *head.parameters()]:
            p.grad = None
        engine = GradientEngine(
            entry.obj(entry.config(name="static"), ["a", "b"]),
            list(encoder.parameters()),
            list(head.parameters()),
        )
        found, z = objectives()
        record = engine.backward(found, {}, z, keep_jacobian=keep)
        grads.append([p.grad.clone() for p in [*encoder.parameters(), *head.parameters()]])
        assert (record.jacobian is not None) == keep
    assert record.space == "representation" and record.jacobian.shape == (2, 8 * 3)
    assert all(torch.allclose(a, b) for a, b in zip(*grads, strict=True))


# ----------------------------------------------------------------------------- events, sides, test time


def test_events_arrive_in_order_and_a_callback_can_read_each_steps_gradients(tmp_path: Path) -> None:
    seen: list[str] = []

    class Monitor(Callback):
        def on_fit_start(self, trainer):
            seen.append(f"start fresh={trainer.fresh}")

        def on_step_start(self, trainer):
            seen.append(f"step {trainer.step}")

        def wants_gradients(self, trainer):
            return trainer.step % 2 == 0

        def on_after_gradients(self, trainer, gradients):
            seen.append(
                f"gradients {gradients.space} {None if gradients.jacobian is None else tuple(gradients.jacobian.shape)}"
            )

        def on_after_update(self, trainer):
            seen.append("update")

        def on_evaluation(self, trainer, metrics):
            seen.append("evaluation")

        def on_fit_end(self, trainer, status):
            seen.append(f"end {status}")

    config = experiment("multitask", {"name": "static"}, tmp_path)
    config["data"]["eval"] = {"test": {"dataset": {**SYNTHETIC, "split": "test"}}}
    config["train"] = {"steps": 2, "batch_size": 16, "eval_every": 2}
    ct.run(config, callbacks=[Monitor()])
    assert seen == [
        "start fresh=True",
        "step 0",
        "gradients representation (2, 128)",
        "update",
        "step 1",
        "gradients None None",
        "update",
        "evaluation",
        "end completed",
    ]


def test_mcds_classifiers_rest_with_their_own_optimizer_in_the_features_turns(tmp_path: Path) -> None:
    config = experiment("mcd", {"name": "static"}, tmp_path)
    config["method"] = {"name": "mcd", "generator_steps": 2}
    config["optim"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}
    heads: list[torch.Tensor] = []
    features: list[torch.Tensor] = []

    class Watch(Callback):
        def on_fit_start(self, trainer):
            assert set(trainer.optimizers) == {"features", "classifiers"}
            self.on_after_update(trainer)

        def on_after_update(self, trainer):
            heads.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.heads.parameters()]))
            features.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.shared_parameters()]))

    ct.run({**config, "train": {"steps": 6, "batch_size": 16}}, callbacks=[Watch()])
    # step 0 and 3: the classifiers' turn (they move); 1, 2, 4, 5: the features' turns (they rest)
    moved = [not torch.equal(heads[i], heads[i + 1]) for i in range(6)]
    assert moved == [True, False, False, True, False, False]
    assert all(not torch.equal(features[i], features[i + 1]) for i in range(6))


def test_tent_adapts_at_test_time_without_changing_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [16], "batch_norm": True}, [ct.Task("y", num_classes=3)], input_shape=(5,)
    )
    x = torch.randn(64, 5) * 3 + 1
    target = torch.utils.data.TensorDataset(x)
    test = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (64,)))
    result = ct.fit(
        model,
        method={"name": "tent", "test_time_steps": 3, "test_time_lr": 0.5},
        target=target,
        eval={"test": test},
        steps=1,
        optim={"name": "sgd", "lr": 1e-9},
        output_dir=tmp_path,
    )
    entry = METHODS.get("tent")
    config = entry.config(name="tent", test_time_steps=3, test_time_lr=0.5)
    method = entry.obj(config, result.model, [StreamSpec("target", False, ("y",))])
    state = copy.deepcopy(result.model.state_dict())
    evaluator = Evaluator({"test": ct.Domain("test", test)}, result.model.tasks)
    adapted = evaluator.predict(result.model, "test", method.predictor())[0]["y"]
    plain = evaluator.predict(result.model.eval(), "test")[0]["y"]
    assert not torch.allclose(adapted, plain)  # it adapted
    assert all(
        torch.equal(a, b) for a, b in zip(state.values(), result.model.state_dict().values(), strict=True)
    )


# ----------------------------------------------------------------------------- found in review


def test_adabn_changes_no_weight_even_with_an_architecture_penalty(tmp_path: Path) -> None:
    config = experiment("adabn", {"name": "static"}, tmp_path)
    config["model"]["architecture"] = {"name": "soft_sharing"}
    config["optim"] = {"name": "sgd", "lr": 0.1, "weight_decay": 0.1}
    watch = BackboneAtStart()
    result = ct.run(config, callbacks=[watch])
    trained = dict(result.model.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in watch.start.items())


def test_uncertainty_does_not_depend_on_accumulation() -> None:
    """Two identical micro-batches of half the loss make the same gradient as one plain step, log-variances
    included (the + s_i term is divided like the losses)."""
    entry = WEIGHTINGS.get("uncertainty")
    grads = []
    for accumulate in (1, 2):
        weighting = entry.obj(entry.config(name="uncertainty"), ["a", "b"])
        w = torch.tensor([1.0, -2.0], requires_grad=True)
        engine = GradientEngine(weighting, [w])
        for micro in range(accumulate):
            losses = {"a": (w**2).sum() / accumulate, "b": (w - 1).abs().sum() / accumulate}
            engine.backward(losses, step=0, micro_step=micro, accumulate=accumulate)
        grads.append((w.grad.clone(), weighting.params["log_var"].grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_parameters_no_optimizer_updates_are_not_balanced(tmp_path: Path) -> None:
    seen: list[int] = []

    class Look(Callback):
        def on_fit_start(self, trainer) -> None:
            seen.append(sum(p.numel() for p in trainer.engine.shared_parameters))
            seen.append(sum(p.numel() for p in trainer.model.backbone_parameters()))

    config = experiment("multitask", {"name": "mgda"}, tmp_path)
    config["optim"] = {"name": "sgd", "lr": 0.05, "backbone_lr_mult": 0.0}
    ct.run(config, callbacks=[Look()])
    bottleneck = 16 * 8 + 8 + 8 + 8  # the shared layer after the backbone: still trained
    assert seen[0] == bottleneck and seen[1] > 0


def test_a_trade_off_under_a_scale_invariant_weighting_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = experiment("dann", {"name": "nash_mtl"}, tmp_path)
    config["method"]["trade_off"] = 0.3
    ct.run(config)
    assert any("has no effect" in r.getMessage() for r in caplog.records)


def test_db_mtl_starts_its_average_again_when_gradual_unfreezing_adds_parameters(tmp_path: Path) -> None:
    config = experiment("erm", {"name": "db_mtl"}, tmp_path)
    config["method"]["finetune"] = {"name": "gradual", "unfreeze_every": 1}
    config["train"] = {"steps": 4, "batch_size": 16}
    assert ct.run(config).summary["status"] == "completed"


def test_a_failing_end_handler_does_not_hide_the_original_error(tmp_path: Path) -> None:
    class Breaks(Callback):
        def on_step_start(self, trainer) -> None:
            raise KeyError("first")

        def on_fit_end(self, trainer, status) -> None:
            raise ValueError("second")

    with pytest.raises(KeyError, match="first"):
        ct.run(experiment("erm", {"name": "static"}, tmp_path), callbacks=[Breaks()])
    summary = json.loads((tmp_path / "erm" / "summary.json").read_text())
    assert summary["status"] == "failed" and "first" in summary["error"]


def test_a_config_saved_by_an_earlier_version_resumes_when_it_means_the_same() -> None:
    from crosstask.experiment.api import _differences, _normalized

    now = validate_config(experiment("erm", {"name": "static"}, Path("/tmp"))).model_dump(mode="json")
    earlier = copy.deepcopy(now)
    earlier["method"]["finetune"] = "full"  # the older form: a bare name
    del earlier["method"]["regularizers"]  # a key added with its default since
    assert _differences(_normalized(earlier), _normalized(now), ignore=set()) == []
