"""`crosstask advise` on cases where the right choice is known, and every recommended config trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

import crosstask as ct
from crosstask.analysis.advise import advise
from crosstask.cli import app
from crosstask.config import validate_config
from crosstask.errors import ConfigError

SYN = {"name": "synthetic", "num_tasks": 1, "num_classes": 3, "n": 600, "dim": 16}


def experiment(train: dict[str, Any], tasks: int = 1, backbone: dict | None = None) -> ct.Experiment:
    return validate_config(
        {
            "name": "advised",
            "tasks": [{"name": f"t{i}", "num_classes": 3} for i in range(tasks)],
            "data": {"train": train},
            "model": {"backbone": backbone or {"name": "mlp", "hidden": [32]}},
        }
    )


def shifted(shift: float, labeled: bool = False, **extra: Any) -> dict[str, Any]:
    return {"dataset": {**SYN, "domain": 1, "shift": shift, **extra}, "labeled": labeled}


CASES = {
    "same distribution, unlabeled target": (
        {"source": {"dataset": SYN}, "target": shifted(0.0)},
        1,
        ("source-only", "erm"),
    ),
    "moderate shift, unlabeled target": (
        {"source": {"dataset": SYN}, "target": shifted(0.3)},
        1,
        ("domain adaptation (alignment)", "cdan"),
    ),
    "strong shift, unlabeled target": (
        {"source": {"dataset": SYN}, "target": shifted(2.0)},
        1,
        ("domain adaptation (self-training)", "mcc"),
    ),
    "strong shift, a labeled target": (
        {"source": {"dataset": SYN}, "target": shifted(2.0, labeled=True, per_class=20)},
        1,
        ("domain adaptation (semi-supervised)", "cdan"),
    ),
    "no shift, a few target labels, no pretrained weights": (
        {"source": {"dataset": SYN}, "target": shifted(0.0, labeled=True, per_class=5)},
        1,
        ("joint training", "erm"),
    ),
    "several labeled domains, no target": (
        {f"d{i}": {"dataset": {**SYN, "domain": i}} for i in range(3)},
        1,
        ("domain generalization", "vrex"),
    ),
    "one domain, several tasks": (
        {"train": {"dataset": {**SYN, "num_tasks": 3}}},
        3,
        ("multi-task learning", "multitask"),
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_advice_is_the_known_right_one_and_its_config_trains(case: str, tmp_path: Path) -> None:
    train, tasks, (family, method) = CASES[case]
    advice = advise(experiment(train, tasks))
    assert (advice.family, advice.method) == (family, method), advice.reason
    config = {**advice.config, "output_dir": str(tmp_path), "train": {**advice.config["train"], "steps": 3}}
    assert ct.run(config).summary["status"] == "completed"


def test_pretrained_weights_and_few_target_labels_get_a_linear_probe_and_more_get_l2sp(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "mlp.pt"
    backbone = {"name": "mlp", "hidden": [32]}
    body = ct.TransferModel(backbone, [ct.Task("t0", num_classes=3)], input_shape=(16,))
    torch.save(body.backbones()[0].state_dict(), weights)
    pretrained = {**backbone, "weights": str(weights)}
    few = advise(
        experiment(
            {"source": {"dataset": SYN}, "target": shifted(0.0, labeled=True, per_class=5)},
            backbone=pretrained,
        )
    )
    some = advise(
        experiment(
            {"source": {"dataset": SYN}, "target": shifted(0.0, labeled=True, per_class=40)},
            backbone=pretrained,
        )
    )
    assert (few.family, few.config["method"]["finetune"]["name"]) == ("fine-tuning", "linear_probe")
    assert some.config["method"]["regularizers"][0]["name"] == "l2sp"
    assert few.measurements["target_labels_per_class"] == 5
    config = {**some.config, "output_dir": str(tmp_path), "train": {**some.config["train"], "steps": 3}}
    assert ct.run(config).summary["status"] == "completed"


def test_strongly_shifted_images_get_fixmatch() -> None:
    digits = {"name": "digits", "split": "train"}
    config = validate_config(
        {
            "name": "digits",
            "tasks": [{"name": "digit", "num_classes": 10}],
            "data": {
                "train": {
                    "source": {"dataset": digits},
                    "target": {"dataset": {**digits, "rotate": 90, "invert": True}, "labeled": False},
                }
            },
            "model": {"backbone": {"name": "mlp", "hidden": [32]}},
        }
    )
    advice = advise(config)
    assert advice.method == "fixmatch" and advice.measurements["shift_level"] == "strong"


def test_the_target_must_be_a_training_domain() -> None:
    with pytest.raises(ConfigError, match="no training domain 'usps'"):
        advise(experiment({"source": {"dataset": SYN}, "target": shifted(0.3)}), target="usps")


def test_cli_prints_the_measurements_and_writes_a_ready_config(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            experiment({"source": {"dataset": SYN}, "target": shifted(2.0)}).model_dump(mode="json")
        )
    )
    out = tmp_path / "advised.yaml"
    result = CliRunner().invoke(app, ["advise", str(path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "pad_features" in result.output and "recommended: domain adaptation" in result.output
    assert validate_config(yaml.safe_load(out.read_text())).method.name == "mcc"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": [{"name": "t0", "kind": "regression"}]}, "classification task"),
        ({"source": "target", "target": "target"}, "is the target too"),
        ({"source": "target", "target": "source"}, "is not labeled"),
        ({"target_dim": 12}, "shape"),
    ],
)
def test_bad_advice_requests_get_one_clear_error(change: dict[str, Any], message: str) -> None:
    target = shifted(0.3)
    if "target_dim" in change:
        target = {"dataset": {**SYN, "dim": change["target_dim"], "domain": 1}, "labeled": False}
    data = experiment({"source": {"dataset": SYN}, "target": target}).model_dump(mode="json")
    if "tasks" in change:
        data["tasks"] = change["tasks"]
    with pytest.raises(ct.CrosstaskError, match=message):
        advise(validate_config(data), source=change.get("source"), target=change.get("target"))


def test_an_architecture_without_one_shared_representation_is_advised_on_its_inputs() -> None:
    data = experiment({"source": {"dataset": SYN}, "target": shifted(2.0)}).model_dump(mode="json")
    data["model"]["architecture"] = {"name": "cross_stitch"}
    advice = advise(validate_config(data))
    assert "pad_features" not in advice.measurements and advice.measurements["shift_level"] == "strong"
