"""Meta-learning under bad input: each case one clear error, a wrong setting refused rather than ignored, and
no training lost to a failing evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.data.episodes import EpisodeConfig, EpisodeSampler, EpisodeStream
from crosstask.errors import ConfigError, DataError, RunError
from crosstask.evaluation.episodes import evaluate_episodes
from crosstask.registry import METHODS
from tests.conftest import run_cli
from tests.test_meta_learning import anil_learner, episode, meta_config


def uneven_runs() -> ct.ArrayDataset:
    """Two fixed 3-way episodes: one query per class in the first, two in the second."""
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    run = torch.tensor([0] * 6 + [1] * 9)
    role = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    x = torch.nn.functional.one_hot(y, 3).float() + 0.01 * torch.randn(
        15, 3, generator=torch.Generator().manual_seed(0)
    )
    return ct.ArrayDataset(x, {"y": y, "run": run, "role": role})


def test_fixed_episodes_of_different_sizes_are_scored_one_size_at_a_time() -> None:
    sampler = EpisodeSampler(uneven_runs(), EpisodeConfig(ways=3, fixed={}), "y", "runs")
    assert [sampler.size(i) for i in range(2)] == [(3, 3), (3, 6)]

    def predict(episodes):  # the query's own one-hot input as logits: every query right
        return episodes.query

    scores = evaluate_episodes(predict, sampler, 2, torch.device("cpu"))
    assert scores["accuracy"] == pytest.approx(100.0)
    # a training stream cannot stack them into one meta-batch: said before the first step
    config = EpisodeConfig(ways=3, fixed={}, tasks=2)
    with pytest.raises(DataError, match=r"fixed episodes differ in size .*set episodes\.tasks: 1"):
        EpisodeStream(EpisodeSampler(uneven_runs(), config, "y", "runs"))


def test_non_finite_predictions_score_nan_not_a_plausible_accuracy(caplog: pytest.LogCaptureFixture) -> None:
    sampler = EpisodeSampler(uneven_runs(), EpisodeConfig(ways=3, fixed={}), "y", "runs")
    scores = evaluate_episodes(lambda e: torch.full_like(e.query, math.nan), sampler, 2, torch.device("cpu"))
    assert math.isnan(scores["accuracy"])
    assert "not finite" in caplog.text and "test_lr" in caplog.text


def test_anil_honours_first_order_and_reptile_refuses_second_order() -> None:
    def gradients(first_order: bool) -> list[torch.Tensor]:
        learner, model, _ = anil_learner(first_order=first_order)
        xs, ys, xq, yq = episode(6)
        loss, _ = learner.episode_loss(xs.float(), ys, xq.float(), yq, 2)
        return list(torch.autograd.grad(loss, list(model.heads["y"].parameters())))

    second, first = gradients(False), gradients(True)
    assert any(not torch.allclose(a, b) for a, b in zip(second, first, strict=True))
    with pytest.raises(ValueError, match="first_order"):
        METHODS.get("reptile").config(name="reptile", first_order=False)


def test_the_baseline_refuses_finetuning_a_classifier_per_episode(tmp_path: Path) -> None:
    config = meta_config(tmp_path, {"name": "baseline", "episode_adaptation": "finetune"})
    config["data"]["train"]["train"].pop("episodes")
    with pytest.raises(
        ConfigError, match="episode_adaptation: finetune keeps the pretraining head.*new_head"
    ):
        ct.run(config)


def test_regression_episodes_take_one_function(tmp_path: Path) -> None:
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [8]}, [ct.Task("y", kind="regression")], input_shape=(1,)
    )
    with pytest.raises(
        ConfigError, match=r"regression episode holds the samples of one function .* got ways: 2"
    ):
        ct.fit(
            model,
            method="maml",
            data=ct.load_dataset({"name": "sinusoid", "functions": 20, "points": 15}),
            episodes={"ways": 2, "shots": 5, "queries": 5, "label": "function", "tasks": 2},
            steps=1,
            output_dir=tmp_path,
        )


def test_warps_refuse_episodes_of_inputs_that_are_not_images(tmp_path: Path) -> None:
    x = torch.randn(60, 4, 16)  # sequences of 4 channels: 3 dimensions per sample, but not images
    data = ct.ArrayDataset(x, {"y": torch.arange(6).repeat_interleave(10)})
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [8]}, [ct.Task("y", num_classes=3)], input_shape=(4, 16)
    )
    with pytest.raises(DataError, match="augment warps images, but its inputs are"):
        ct.fit(
            model,
            method="protonet",
            streams={"train": ct.Domain("train", data, augment=ct.WarpConfig())},
            episodes={"ways": 3, "shots": 1, "queries": 2, "tasks": 2},
            steps=1,
            output_dir=tmp_path,
        )


def test_a_failing_evaluation_keeps_the_steps_trained(tmp_path: Path) -> None:
    """An evaluation set the model cannot score stops the run, but only after the steps so far are saved."""
    config = meta_config(tmp_path, "protonet", steps=4, eval_every=2)

    def broken(*args, **kwargs):
        raise DataError("this evaluation set cannot be scored")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("crosstask.engine.trainer.Trainer._evaluate", broken)
        with pytest.raises(DataError, match="cannot be scored"):
            ct.run(config)
    run = tmp_path / "protonet"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    resumed = ct.run(config, resume=True)
    assert resumed.summary["status"] == "completed"


def test_evaluating_a_run_with_another_method_is_one_clear_error(tmp_path: Path) -> None:
    config = meta_config(tmp_path, {"name": "metasgd", "inner_lr": 0.1}, steps=2, eval_every=2)
    result = ct.run(config)
    done = run_cli("evaluate", str(result.run_dir), "method.name=maml", "--checkpoint", "last")
    assert done.returncode == 2, done.stderr
    assert "method state does not fit method 'maml'" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(RunError, match="trained with another method"):
        ct.evaluate_run(result.run_dir, "last", ["method.name=maml"])


def test_a_bad_override_at_evaluation_is_blamed_not_the_run(tmp_path: Path) -> None:
    result = ct.run(meta_config(tmp_path, "protonet", steps=2, eval_every=2))
    with pytest.raises(
        RunError, match=r"(?s)the overrides method.test_steps=-1 do not fit .*the run's config.yaml is fine"
    ):
        ct.evaluate_run(result.run_dir, "last", ["method.test_steps=-1"])


def test_model_overrides_at_evaluation_are_said_to_change_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = ct.run(meta_config(tmp_path, "protonet", steps=2, eval_every=2))
    plain = ct.evaluate_run(result.run_dir, "last")
    assert ct.evaluate_run(result.run_dir, "last", ["model.backbone.channels=8"]) == plain
    assert "model.backbone.channels=8 change nothing" in caplog.text
