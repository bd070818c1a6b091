"""The Trainer: named losses through the weighting, accumulation, bf16, checkpoints, resume, divergence,
early stopping, parameter groups and schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.engine.optim import build_optimizer
from crosstask.engine.schedulers import build_scheduler
from crosstask.errors import ConfigError, RunError, TrainingDiverged
from crosstask.registry import SCHEDULERS, WEIGHTINGS
from crosstask.weighting.base import BalanceContext
from tests.balancing import balance
from tests.conftest import tiny_config


def test_static_weighting_is_the_gradient_of_the_weighted_sum() -> None:
    w = torch.randn(3, requires_grad=True)
    losses = {"a": (w**2).sum(), "b": w.sum() * 3, "c": w.prod()}
    config = WEIGHTINGS.get("static").config(name="static", weights={"a": 0.5, "c": 2.0})
    weighting = WEIGHTINGS.get("static").obj(config, list(losses))
    applied = balance(weighting, losses, BalanceContext(0, [w]))
    assert applied == {"a": 0.5, "b": 1.0, "c": 2.0}
    expected = torch.autograd.grad(0.5 * (w**2).sum() + 1.0 * w.sum() * 3 + 2.0 * w.prod(), w)[0]
    assert torch.allclose(w.grad, expected)
    with pytest.raises(ConfigError, match="no loss 'd'.*Its losses: a, b, c"):
        WEIGHTINGS.get("static").obj(config.model_copy(update={"weights": {"d": 1.0}}), list(losses))


def test_multitask_run_learns_and_writes_its_outputs(tmp_path: Path) -> None:
    result = ct.run(tiny_config(tmp_path, **{"train.steps": 150, "train.eval_every": 50}))
    run_dir = result.run_dir
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints",
    }
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    assert train[-1]["loss/t0"] < train[0]["loss/t0"] and train[-1]["loss/t1"] < train[0]["loss/t1"]
    assert train[0]["weight/t0"] == 1.0
    assert result.metrics["source_test/t0/accuracy"] > 70  # chance is 50
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 150
    assert ct.load_config(run_dir / "config.yaml").name == "tiny"


def test_transfer_weights_are_applied_per_named_loss(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        method={"name": "erm"},
        weighting={"name": "static", "weights": {"source": 1.0, "target": 0.25}},
    )
    config["data"]["train"]["target"] = {"dataset": {"name": "synthetic", "n": 64, "domain": 1, "dim": 8}}
    result = ct.run(config)
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["weight/source"] == 1.0 and first["weight/target"] == 0.25


def test_resume_continues_to_the_same_result(tmp_path: Path) -> None:
    base = tiny_config(tmp_path, **{"train.steps": 80, "train.eval_every": 20, "train.deterministic": True})
    full = ct.run({**base, "name": "full"})
    ct.run({**base, "name": "part", "train": {**base["train"], "steps": 40}})
    resumed = ct.run({**base, "name": "part"}, resume=True)
    assert resumed.summary["final"] == full.summary["final"]
    assert resumed.run_dir == tmp_path / "runs" / "part"
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((full.run_dir / "metrics.jsonl").read_text().splitlines())


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    base = tiny_config(tmp_path, **{"train.steps": 20})
    ct.run(base)
    with pytest.raises(RunError, match=r"optim\.lr: 0\.05 -> 0\.1"):
        ct.run(base, ["optim.lr=0.1"], resume=True)


def test_new_run_never_overwrites_an_old_one(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"train.steps": 5})
    first, second = ct.run(config), ct.run(config)
    assert first.run_dir.name == "tiny" and second.run_dir.name == "tiny-1"


def test_nan_loss_stops_with_step_and_loss_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        tasks=[{"name": "t0", "kind": "regression"}],
        **{
            "data.train.source.dataset.task_kind": "regression",
            "optim.lr": 5.0,
            "train.steps": 500,
            "train.checkpoint_every": 1,
        },
    )
    config["data"]["eval"] = {}
    with pytest.raises(TrainingDiverged) as info:
        ct.run(config)
    message = str(info.value)
    assert "training diverged at step" in message and "t0=" in message and "last good checkpoint" in message
    run_dir = tmp_path / "runs" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] < int(message.split("step ")[1].split(":")[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_early_stopping_and_best_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        **{
            "optim.lr": 1e-9,
            "train.steps": 200,
            "train.eval_every": 10,
            "train.early_stopping": {"metric": "source_test/t0/accuracy", "patience": 2},
        },
    )
    result = ct.run(config)
    assert result.summary["status"] == "stopped_early"
    assert result.summary["step"] == 30  # the first evaluation is best; two more without gain
    assert result.summary["best"]["step"] == 10
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 10 and "model_spec" in best


def test_gradient_accumulation_matches_a_large_batch(tmp_path: Path) -> None:
    common = {
        "model.backbone": {"name": "mlp", "hidden": [16]},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
        "train.steps": 10,
        "train.deterministic": True,
    }
    big = ct.run(tiny_config(tmp_path, name="big", **common, **{"train.batch_size": 32}))
    small = ct.run(
        tiny_config(tmp_path, name="small", **common, **{"train.batch_size": 16, "train.accumulate": 2})
    )
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_bf16_autocast_runs_the_forward_pass_in_bf16(tmp_path: Path) -> None:
    task = ct.Task("label", num_classes=2)
    model = ct.TransferModel("mlp", [task], input_shape=(5,))
    seen: list[torch.dtype] = []
    model.backbones()[0].layer1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data = torch.utils.data.TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    result = ct.fit(model, data=data, eval={"test": data}, steps=20, bf16=True, output_dir=tmp_path)
    # the first call is the input check's dry forward pass, before training
    assert seen[1:] and all(dtype == torch.bfloat16 for dtype in seen[1:])
    assert result.summary["status"] == "completed"
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_parameter_groups_and_frozen_layers() -> None:
    model = ct.TransferModel("mlp", [ct.Task("a", num_classes=2)], input_shape=(4,), bottleneck=8)
    from crosstask.engine.optim import SGDConfig

    optimizer = build_optimizer(SGDConfig(name="sgd", lr=0.1, backbone_lr_mult=0.1), model)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(0.01), "new": 0.1}
    model.freeze_backbone()
    optimizer = build_optimizer(SGDConfig(name="sgd"), model)
    assert [g["name"] for g in optimizer.param_groups] == ["new"]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        build_optimizer(SGDConfig(name="sgd"), model)


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_schedules_start_at_the_base_rate_and_stay_positive(name: str) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    config = SCHEDULERS.get(name).config(name=name)
    schedule = build_scheduler(config, optimizer, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 1.0 and all(r >= 0 for r in rates)


def test_schedule_formulas() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    config = SCHEDULERS.get("inverse_decay").config(
        name="inverse_decay", gamma=0.001, power=0.75, warmup_steps=0
    )
    schedule = build_scheduler(config, optimizer, 1000)
    for _ in range(500):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 + 0.001 * 500) ** -0.75)
    cosine = SCHEDULERS.get("cosine").config(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = build_scheduler(cosine, optimizer, 110)
    rates = []
    for _ in range(110):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_select_and_early_stopping_follow_their_own_metrics(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        **{
            "train.steps": 120,
            "train.eval_every": 20,
            "train.select": "target_test/t1/accuracy",
            "train.early_stopping": {"metric": "source_test/t0/accuracy", "patience": 50},
        },
    )
    result = ct.run(config)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["phase"] == "eval"]
    best = max(evals, key=lambda r: (r["target_test/t1/accuracy"], -r["step"]))
    assert result.summary["best"]["metric"] == "target_test/t1/accuracy"
    assert result.summary["best"]["step"] == best["step"]


def test_early_stopping_needs_evaluations(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"train.early_stopping": {"metric": "source_test/t0/accuracy"}})
    del config["train"]["eval_every"]
    with pytest.raises(ConfigError, match="early_stopping needs train.eval_every"):
        ct.run(config)


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    first = ct.run(tiny_config(tmp_path, **{"train.steps": 20}))
    before = (first.run_dir / "metrics.jsonl").read_text()
    again = ct.run(tiny_config(tmp_path, **{"train.steps": 20}), resume=True)
    assert again.summary == first.summary
    assert (first.run_dir / "metrics.jsonl").read_text() == before
    longer = ct.run(tiny_config(tmp_path, **{"train.steps": 40}), resume=True)
    assert longer.summary["step"] == 40 and longer.run_dir == first.run_dir


def test_resume_continues_the_latest_run_of_a_name(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"train.steps": 10})
    ct.run(config)
    second = ct.run(config)
    assert second.run_dir.name == "tiny-1"
    resumed = ct.run(tiny_config(tmp_path, **{"train.steps": 20}), resume=True)
    assert resumed.run_dir.name == "tiny-1" and resumed.summary["step"] == 20


def test_an_explicit_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"train.steps": 10})
    ct.run(config, run_dir=tmp_path / "mine")
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        ct.run(config, run_dir=tmp_path / "mine")


def test_fit_resumes(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(128, 5), torch.randint(0, 2, (128,)))

    def fit(steps: int, name: str, resume: bool = False) -> ct.RunResult:
        torch.manual_seed(0)
        model = ct.TransferModel("mlp", [ct.Task("label", num_classes=2)], input_shape=(5,))
        return ct.fit(
            model,
            data=data,
            eval={"test": data},
            steps=steps,
            name=name,
            output_dir=tmp_path,
            resume=resume,
            deterministic=True,
        )

    full = fit(40, "full")
    fit(20, "part")
    resumed = fit(40, "part", resume=True)
    assert resumed.summary["final"] == full.summary["final"]


def test_resume_is_exact_for_datasets_served_by_a_dataloader(tmp_path: Path) -> None:
    """image_folder is read through a DataLoader: creating its iterator must not disturb the RNG."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            value = 40 * i if label == "a" else 255 - 10 * i
            Image.new("L", (8, 8), color=value).save(tmp_path / "images" / label / f"{i}.png")
    dataset = {"name": "image_folder", "path": str(tmp_path / "images"), "size": 8, "grayscale": True}
    config = tiny_config(
        tmp_path,
        tasks=[{"name": "label", "num_classes": 2}],
        **{
            "data.train": {"source": {"dataset": {**dataset, "split": "train"}}},
            "data.eval": {"test": {"dataset": {**dataset, "split": "test"}}},
            "method": "erm",
            "train.steps": 30,
            "train.eval_every": 10,
            "train.batch_size": 4,
            "train.deterministic": True,
        },
    )
    full = ct.run({**config, "name": "full"})
    ct.run({**config, "name": "part", "train": {**config["train"], "steps": 15}})
    resumed = ct.run({**config, "name": "part"}, resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_labels_outside_num_classes_are_a_data_error(tmp_path: Path) -> None:
    from crosstask.errors import DataError

    config = tiny_config(tmp_path, **{"data.train.source.dataset.num_classes": 3})
    with pytest.raises(DataError, match="task 't0' has num_classes 2 but its labels range over 0..2"):
        ct.run(config)


def test_float64_inputs_are_accepted(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 2, (64,)))
    model = ct.TransferModel("mlp", [ct.Task("label", num_classes=2)], input_shape=(5,))
    result = ct.fit(model, data=data, eval={"test": data}, steps=5, output_dir=tmp_path)
    assert result.summary["status"] == "completed"


# ----------------------------------------------------------------------------- what a run leaves, whatever happens


def test_a_run_that_completes_its_steps_is_completed_even_if_early_stopping_would_fire(
    tmp_path: Path,
) -> None:
    """Early stopping firing at the very last evaluation used to report stopped_early for a complete run."""
    stopping = {"metric": "source_test/t0/accuracy", "patience": 1, "min_delta": 1000.0}
    config = tiny_config(
        tmp_path, **{"train.steps": 40, "train.eval_every": 20, "train.early_stopping": stopping}
    )
    summary = ct.run(config).summary
    assert summary["status"] == "completed" and summary["step"] == 40
    early = ct.run({**config, "name": "early", "train": {**config["train"], "steps": 60}}).summary
    assert early["status"] == "stopped_early" and early["step"] == 40


def test_an_unexpected_error_in_training_leaves_a_failed_summary_with_the_message(tmp_path: Path) -> None:
    from crosstask.engine.events import Callback

    class Breaks(Callback):
        def on_step_start(self, trainer) -> None:
            if trainer.step == 3:
                raise ZeroDivisionError("something inside broke")

    with pytest.raises(ZeroDivisionError):
        ct.run(tiny_config(tmp_path), callbacks=[Breaks()])
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["status"] == "failed" and "ZeroDivisionError: something inside broke" in summary["error"]


def test_the_summary_records_the_code_revision_and_the_config_hash(tmp_path: Path) -> None:
    from crosstask.provenance import config_hash

    result = ct.run(tiny_config(tmp_path, **{"train.steps": 2}))
    summary = result.summary
    assert set(summary["revision"]) >= {"commit", "dirty"}
    saved = __import__("yaml").safe_load((result.run_dir / "config.yaml").read_text())
    assert summary["config_hash"] == config_hash(saved)


def test_weighting_parameters_are_never_weight_decayed(tmp_path: Path) -> None:
    from crosstask.engine.events import Callback

    groups: dict[str, float] = {}

    class Look(Callback):
        def on_fit_start(self, trainer) -> None:
            groups.update({g["name"]: g["weight_decay"] for g in trainer.optimizer.param_groups})

    config = tiny_config(
        tmp_path,
        weighting={"name": "uncertainty"},
        optim={"name": "sgd", "lr": 0.05, "weight_decay": 0.1},
        **{"train.steps": 2},
    )
    ct.run(config, callbacks=[Look()])
    assert groups["weighting"] == 0.0 and groups["backbone"] == 0.1


def test_select_on_a_source_evaluation_while_a_target_stream_exists_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_config(
        tmp_path, method="dann", **{"train.steps": 2, "train.select": "source_test/t0/accuracy"}
    )
    config["tasks"] = [{"name": "t0", "num_classes": 2}]
    config["data"]["train"]["target"] = {
        "dataset": {"name": "synthetic", "n": 256, "n_test": 128, "dim": 8, "domain": 1, "shift": 0.5},
        "labeled": False,
    }
    ct.run(config)
    assert any(
        "source_test" in r.getMessage() and "not the unlabeled target" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    ct.run({**config, "name": "target", "train": {**config["train"], "select": "target_test/t0/accuracy"}})
    assert not any("not the unlabeled target" in r.getMessage() for r in caplog.records)


def test_mixstyle_leaves_no_hook_on_the_trained_model(tmp_path: Path) -> None:
    domains = {
        f"d{i}": {"dataset": {"name": "synthetic", "n": 64, "dim": 8, "domain": i, "num_tasks": 1}}
        for i in range(2)
    }
    config = tiny_config(tmp_path, method={"name": "mixstyle", "layers": ["layer1"], "vectors": True})
    config["tasks"] = [{"name": "t0", "num_classes": 2}]
    config["data"] = {"train": domains}
    config["train"] = {"steps": 3, "batch_size": 16}
    model = ct.run(config).model
    assert all(not m._forward_hooks for m in model.modules())


def test_a_seed_that_does_not_fit_64_bits_is_a_config_error_in_fit(tmp_path: Path) -> None:
    model = ct.TransferModel("mlp", [ct.Task("y", num_classes=2)], input_shape=(3,))
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(ConfigError, match="64 bits"):
        ct.fit(model, data=data, steps=1, seed=2**70, output_dir=tmp_path)


def test_a_run_resumed_at_another_code_revision_lists_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crosstask.experiment.api as api

    config = tiny_config(tmp_path, **{"train.steps": 20, "train.eval_every": 10})
    monkeypatch.setattr(api, "code_revision", lambda: {"commit": "a" * 40, "dirty": False})
    ct.run({**config, "train": {**config["train"], "steps": 10}})
    monkeypatch.setattr(api, "code_revision", lambda: {"commit": "b" * 40, "dirty": False})
    summary = ct.run(config, resume=True).summary
    assert summary["revision"]["commit"] == "b" * 40
    assert [r["commit"] for r in summary["revisions"]] == ["a" * 40, "b" * 40]
