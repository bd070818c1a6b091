"""Validators: model selection without target labels (the scores' math, and the Trainer's picks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import crosstask as ct
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.registry import VALIDATORS
from crosstask.validators.base import Outputs, ValidationData
from tests.conftest import run_cli

TASK = Task("y", num_classes=3)


def score(name: str, source: Outputs | None, target: Outputs, **config) -> float:
    entry = VALIDATORS.get(name)
    return entry.obj(entry.config(name=name, **config)).score(ValidationData(source, target, TASK))


def outputs(logits: torch.Tensor, labels: torch.Tensor | None = None, features=None) -> Outputs:
    return Outputs(logits.float(), logits.float() if features is None else features, labels)


def test_every_validator_is_registered() -> None:
    assert {"source_accuracy", "entropy", "snd", "dev"} <= set(VALIDATORS.names())


def test_source_accuracy_ignores_missing_labels() -> None:
    logits = torch.eye(3)[[0, 1, 2, 0]] * 5
    labels = torch.tensor([0, 1, 0, -1])
    assert score("source_accuracy", outputs(logits, labels), outputs(logits)) == pytest.approx(200 / 3)


def test_entropy_is_zero_for_confident_and_log_c_for_uniform_predictions() -> None:
    confident = outputs(torch.eye(3)[[0, 1, 2]] * 100)
    uniform = outputs(torch.zeros(4, 3))
    assert score("entropy", None, confident) == pytest.approx(0.0, abs=1e-6)
    assert score("entropy", None, uniform) == pytest.approx(math.log(3))
    assert not VALIDATORS.get("entropy").obj.higher_is_better


def test_snd_prefers_dense_class_neighborhoods() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    clustered = torch.eye(3)[labels] * 6 + 0.05 * torch.randn(60, 3, generator=generator)
    scattered = torch.randn(60, 3, generator=generator) * 2
    assert score("snd", None, outputs(clustered)) > score("snd", None, outputs(scattered))
    # the entropy of a distribution over n - 1 neighbors is at most log(n - 1)
    assert score("snd", None, outputs(clustered)) <= math.log(59) + 1e-9


def test_dev_is_the_plain_validation_loss_without_a_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(800, 4, generator=generator)
    labels = torch.randint(0, 3, (800,), generator=generator)
    logits = torch.randn(800, 3, generator=generator)
    target = torch.randn(800, 4, generator=generator)  # the same distribution as the source features
    dev = score("dev", outputs(logits, labels, features), outputs(torch.zeros(800, 3), features=target))
    plain = float(torch.nn.functional.cross_entropy(logits, labels))
    assert dev == pytest.approx(plain, rel=0.1)


def test_dev_weights_the_source_samples_that_look_like_the_target() -> None:
    # the model is wrong exactly on the source samples that resemble the target: DEV sees a high risk
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1000, 2, generator=generator)
    labels = torch.zeros(1000, dtype=torch.long)
    near_target = features[:, 0] > 1.0
    logits = torch.where(near_target[:, None], torch.tensor([-3.0, 3.0, 0.0]), torch.tensor([3.0, -3.0, 0.0]))
    target = torch.randn(1000, 2, generator=generator) + torch.tensor([2.0, 0.0])
    dev = score("dev", outputs(logits, labels, features), outputs(torch.zeros(1000, 3), features=target))
    plain = float(torch.nn.functional.cross_entropy(logits, labels))
    assert dev > 2 * plain


def _config(tmp_path: Path, validation: dict) -> dict:
    def synthetic(domain: int, split: str = "train") -> dict:
        return {
            "name": "synthetic",
            "n": 300,
            "dim": 8,
            "num_tasks": 1,
            "domain": domain,
            "shift": 2.0,
            "split": split,
            "val_fraction": 0.2,
        }

    return {
        "name": "validated",
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "t0", "num_classes": 2}],
        "data": {
            "train": {
                "source": {"dataset": synthetic(0)},
                "target": {"dataset": synthetic(1), "labeled": False},
            },
            "eval": {
                "source_val": {"dataset": synthetic(0, "val")},
                "target_test": {"dataset": synthetic(1, "test")},
            },
        },
        "model": {"backbone": {"name": "mlp", "hidden": [16]}},
        "method": "dann",
        "train": {"steps": 30, "batch_size": 32, "eval_every": 10, "log_every": 10, "validation": validation},
    }


def test_the_run_reports_each_validators_pick_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    validation = {
        "validators": ["source_accuracy", "entropy", "snd", "dev"],
        "target": "target",
        "source": "source_val",
    }
    result = ct.run(_config(tmp_path, validation))
    picked = result.summary["validators"]
    assert set(picked) == {"source_accuracy", "entropy", "snd", "dev"}
    evaluations = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in evaluations if e["phase"] == "eval"]
    for name, pick in picked.items():
        scores = {e["step"]: e[f"validator/{name}"] for e in evaluations}
        best = max(scores.values()) if pick["higher_is_better"] else min(scores.values())
        assert pick["score"] == pytest.approx(best) and scores[pick["step"]] == pytest.approx(best)
        assert "target_test/t0/accuracy" in pick["metrics"]  # what the choice scores on target labels
        assert (result.run_dir / "checkpoints" / f"best_{name}.pt").is_file()
    done = run_cli("evaluate", str(result.run_dir), "--checkpoint", "best_snd")
    assert done.returncode == 0, done.stderr
    assert f"{picked['snd']['metrics']['target_test/t0/accuracy']:.2f}" in done.stdout
    missing = run_cli("evaluate", str(result.run_dir), "--checkpoint", "best_nope")
    assert missing.returncode == 2 and "best_snd" in missing.stderr


def test_validation_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need labeled source validation data"):
        ct.run(_config(tmp_path, {"validators": ["dev"], "target": "target"}))
    with pytest.raises(ConfigError, match="no domain named 'usps'"):
        ct.run(_config(tmp_path, {"validators": ["snd"], "target": "usps"}))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, {"validators": ["snt"], "target": "target"})))
    done = run_cli("validate", str(path))
    assert done.returncode == 2 and "snd" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- choosing among runs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs of one config that differ in the trade-off λ: a hyperparameter to choose."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    validation = {
        "validators": ["source_accuracy", "entropy", "snd"],
        "target": "target",
        "source": "source_val",
    }
    runs = []
    for weight in (0.0, 0.3, 1.0):
        config = _config(tmp_path, validation)
        config.update(name=f"lambda_{weight}", weighting={"name": "static", "weights": {"transfer": weight}})
        runs.append(ct.run(config).run_dir)
    return runs


def test_each_validator_chooses_the_run_with_its_best_score(sweep: list[Path]) -> None:
    selection = ct.select_runs(sweep)
    assert set(selection.choices) == {"entropy", "snd", "source_accuracy"} and not selection.skipped
    for name, choice in selection.choices.items():
        picks = {run: json.loads((run / "summary.json").read_text())["validators"][name] for run in sweep}
        scores = {run: pick["score"] for run, pick in picks.items()}
        best = max(scores.values()) if choice.higher_is_better else min(scores.values())
        assert choice.score == pytest.approx(best) and scores[choice.run_dir] == pytest.approx(best)
        assert selection.scores[name] == pytest.approx(scores)
        assert (
            choice.metrics == picks[choice.run_dir]["metrics"]
            and choice.step == picks[choice.run_dir]["step"]
        )
        assert choice.checkpoint.is_file()
    assert set(ct.select_runs(sweep, ["snd"]).choices) == {"snd"}


def test_select_on_the_command_line_reports_the_choices(sweep: list[Path]) -> None:
    done = run_cli("select", *map(str, sweep), "--metric", "target_test/t0/accuracy")
    assert done.returncode == 0, done.stderr
    choice = ct.select_runs(sweep).choices["snd"]
    assert "best_snd.pt" in done.stdout and f"{choice.metrics['target_test/t0/accuracy']:.2f}" in done.stdout
    bad = run_cli("select", *map(str, sweep), "--metric", "target_test/t0/acc")
    assert bad.returncode != 0 and "target_test/t0/accuracy" in bad.stderr and "Traceback" not in bad.stderr


def copied_run(tmp_path: Path, run: Path, name: str, config=None, summary=None) -> Path:
    """A run directory with ``run``'s files, its config and summary changed by the given functions."""
    target = tmp_path / name
    target.mkdir()
    loaded = yaml.safe_load((run / "config.yaml").read_text())
    (target / "config.yaml").write_text(yaml.safe_dump(config(loaded) if config else loaded))
    data = json.loads((run / "summary.json").read_text())
    (target / "summary.json").write_text(json.dumps(summary(data) if summary else data))
    return target


def test_select_compares_the_validation_data_not_the_rest_of_the_config(
    tmp_path: Path, sweep: list[Path]
) -> None:
    def batch_size(config):
        config["data"]["train"]["target"]["batch_size"] = 7
        return config

    def other_target(config):
        config["data"]["train"]["target"]["dataset"]["shift"] = 3.0
        return config

    bigger = copied_run(tmp_path, sweep[0], "batch", config=batch_size)
    assert bigger in ct.select_runs([*sweep, bigger]).scores["snd"]  # a swept batch size is fine
    shifted = copied_run(tmp_path, sweep[0], "shifted", config=other_target)
    with pytest.raises(ct.RunError, match="different data"):
        ct.select_runs([*sweep, shifted])


def test_select_refuses_runs_it_cannot_compare(tmp_path: Path, sweep: list[Path]) -> None:
    other = ct.run(
        _config(tmp_path, {"validators": ["snd"], "target": "target", "source": "target_test"})
    ).run_dir
    with pytest.raises(ct.RunError, match="different data"):
        ct.select_runs([*sweep, other])

    def only_entropy(summary):
        summary["validators"] = {"entropy": summary["validators"]["entropy"]}
        return summary

    def only_snd(summary):
        summary["validators"] = {"snd": summary["validators"]["snd"]}
        return summary

    disjoint = [
        copied_run(tmp_path, sweep[0], "a", summary=only_entropy),
        copied_run(tmp_path, sweep[1], "b", summary=only_snd),
    ]
    with pytest.raises(ct.RunError, match="share no validator"):
        ct.select_runs(disjoint)
    done = run_cli("select", *map(str, disjoint))
    assert done.returncode != 0 and "share no validator" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ct.RunError, match="not reported by every usable run"):
        ct.select_runs(sweep, ["dev"])
    with pytest.raises(ct.RunError, match="no summary.json"):
        ct.select_runs([tmp_path])
    plain = _config(tmp_path, None)
    plain["name"] = "unvalidated"
    with pytest.raises(ct.RunError, match="no validator picks"):
        ct.select_runs([ct.run(plain).run_dir])
    done = run_cli("select", str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "Traceback" not in done.stderr and "nowhere" in done.stderr


def test_diverged_and_interrupted_runs_are_left_out_and_said_so(tmp_path: Path, sweep: list[Path]) -> None:
    broken = copied_run(tmp_path, sweep[0], "broken", summary=lambda s: {**s, "status": "diverged"})
    stopped = copied_run(
        tmp_path, sweep[1], "stopped", summary=lambda s: {**s, "status": "interrupted", "step": 20}
    )
    selection = ct.select_runs([*sweep, broken, stopped])
    assert selection.skipped == {broken: "status diverged", stopped: "status interrupted at step 20 of 30"}
    assert broken not in selection.scores["snd"] and stopped not in selection.scores["snd"]
