"""Experiment configs: validation, component configs, overrides, and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crosstask.config import apply_overrides, load_config, read_yaml, validate_config
from crosstask.errors import ConfigError
from tests.conftest import run_cli, tiny_config


def write(tmp_path: Path, config: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def error_of(tmp_path: Path, config: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, config), overrides)
    return str(info.value)


def test_valid_config_resolves_components_with_their_own_models(tmp_path: Path) -> None:
    experiment = load_config(write(tmp_path, tiny_config(tmp_path)))
    assert type(experiment.model.backbone).__name__ == "MLPConfig"
    assert experiment.model.backbone.hidden == [32]
    assert experiment.data.train["source"].dataset.dim == 8
    assert experiment.weighting.name == "static" and experiment.optim.momentum == 0.9  # defaults filled in


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    experiment = load_config(write(tmp_path, tiny_config(tmp_path)))
    again = validate_config(yaml.safe_load(experiment.to_yaml()))
    assert again.model_dump() == experiment.model_dump()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["train.steps=abc"], ["train.steps = 'abc'", "valid integer"]),
        (["train.steps=0"], ["train.steps = 0", "greater than or equal to 1"]),
        (["optim.lr=-1"], ["optim.lr = -1", "greater than 0"]),
        (["train.stpes=5"], ["train.stpes", "unknown key 'stpes'", "Did you mean 'steps'?", "Allowed keys:"]),
        (
            ["model.backbone.name=resnet19"],
            ["model.backbone", "unknown backbone 'resnet19'", "resnet18", "Choices:"],
        ),
        (["model.backbone.depth=3"], ["model.backbone.depth", "unknown key 'depth'", "hidden"]),
        (["weighting=pcgradd"], ["weighting", "unknown weighting 'pcgradd'"]),
        (["data.train.source.dataset.n=-5"], ["data.train.source.dataset.n = -5"]),
        (["tasks.0.kind=ranking"], ["tasks[0].kind", "'classification', 'multilabel' or 'regression'"]),
        (["train.early_stopping.metric=nope/t0/accuracy"], ["nope/t0/accuracy", "source_test/t0/accuracy"]),
        (["data.train.source.tasks=[t9]"], ["unknown task", "t9"]),
    ],
)
def test_invalid_values_name_file_key_value_and_what_is_allowed(
    tmp_path: Path, change: list[str], expected: list[str]
) -> None:
    message = error_of(tmp_path, tiny_config(tmp_path), change)
    assert "exp.yaml" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    message = error_of(
        tmp_path, tiny_config(tmp_path), ["train.steps=x", "optim.lr=0", "foo=1", "train.bogus=2"]
    )
    assert message.count("\n  - ") == 4


def test_missing_required_section(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    del config["model"]
    assert "model: required key is missing" in error_of(tmp_path, config)


def test_missing_file_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - name: a\n   kind: x\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at .*bad.yaml:3:"):
        read_yaml(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\nname: b\n")
    with pytest.raises(ConfigError, match="key 'name' appears twice"):
        read_yaml(twice)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(listing)


def test_overrides_parse_yaml_values_and_address_lists() -> None:
    data = {"train": {"steps": 1}, "tasks": [{"name": "a"}], "model": {"backbone": "mlp"}}
    out = apply_overrides(
        data,
        [
            "train.steps=200",
            "train.bf16=true",
            "tasks.0.num_classes=5",
            "model.backbone.hidden=[8, 8]",
            "data.root=/x",
        ],
    )
    assert out["train"] == {"steps": 200, "bf16": True}
    assert out["tasks"][0]["num_classes"] == 5
    assert out["model"]["backbone"] == {"name": "mlp", "hidden": [8, 8]}
    assert out["data"] == {"root": "/x"}
    assert data["train"]["steps"] == 1  # the input is not modified
    with pytest.raises(ConfigError, match="malformed override"):
        apply_overrides(data, ["train.steps"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["tasks.3.name=b"])
    with pytest.raises(ConfigError, match="is a value, not a mapping"):
        apply_overrides(data, ["train.steps.x=1"])


def test_cli_validate_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, tiny_config(tmp_path))
    ok = run_cli("validate", str(path))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = run_cli("validate", str(path), "train.steps=abc", "model.backbone=mpl")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "train.steps = 'abc'" in bad.stderr and "Did you mean 'mlp'?" in bad.stderr
    missing = run_cli("run", str(tmp_path / "absent.yaml"))
    assert (
        missing.returncode == 2
        and "config file not found" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_yaml_anchors_and_merge_keys_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nchild: {<<: *b, y: 3}\n")
    assert read_yaml(path)["child"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")),
    ids=lambda p: str(p.relative_to(Path(__file__).parents[1] / "configs")),
)
def test_shipped_configs_validate(path: Path) -> None:
    experiment = load_config(path)
    assert experiment.name == path.stem


def test_a_list_where_a_component_is_expected_shows_the_value(tmp_path: Path) -> None:
    message = error_of(tmp_path, tiny_config(tmp_path, optim=["sgd"]))
    assert "optim: expected the optimizer's name or a mapping with 'name:', got ['sgd']" in message
    assert "got ['sgd']" in message and "!r" not in message and "{value" not in message


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_a_seed_that_does_not_fit_64_bits_is_a_config_error(tmp_path: Path, seed: int) -> None:
    message = error_of(tmp_path, tiny_config(tmp_path, seed=seed))
    assert f"seed = {seed}" in message and "64 bits" in message and str(2**64 - 1) in message


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 0])
def test_every_seed_torch_accepts_validates(tmp_path: Path, seed: int) -> None:
    import torch

    assert load_config(write(tmp_path, tiny_config(tmp_path, seed=seed))).seed == seed
    torch.manual_seed(seed)  # the same range


def test_cli_validate_refuses_a_huge_seed(tmp_path: Path) -> None:
    bad = run_cli("validate", str(write(tmp_path, tiny_config(tmp_path))), f"seed={2**64}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "64 bits" in bad.stderr


@pytest.mark.parametrize("name", ["..", ".", "../x", "/tmp/x", "a/b"])
def test_run_names_must_be_one_folder_name(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, tiny_config(tmp_path, name=name))
    assert f"name = {name!r}" in message and "not a run name" in message and "output_dir" in message


def test_overriding_a_key_of_a_default_component_keeps_its_name(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    del config["optim"], config["method"]
    experiment = load_config(write(tmp_path, config), ["optim.lr=0.01", "scheduler.warmup_steps=3"])
    assert experiment.optim.name == "sgd" and experiment.optim.lr == 0.01
    assert experiment.scheduler.name == "constant" and experiment.scheduler.warmup_steps == 3
    # an explicit empty block (optim: with nothing after it) is the default too
    config["optim"] = None
    assert load_config(write(tmp_path, config), ["optim.lr=0.2"]).optim.lr == 0.2
    # a block without a default component still needs its name
    config["model"] = {}
    assert "missing 'name:'" in error_of(tmp_path, config, ["model.backbone.hidden=[4]"])


def test_cli_overrides_a_shipped_config_without_an_optim_block() -> None:
    shipped = Path(__file__).parents[1] / "configs" / "adabn_digits.yaml"
    assert "optim" not in read_yaml(shipped)
    done = run_cli("validate", str(shipped), "optim.lr=0.01")
    assert done.returncode == 0, done.stderr
    assert load_config(shipped, ["optim.lr=0.01"]).optim.model_dump()["lr"] == 0.01


def test_train_threads(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, tiny_config(tmp_path))).train.threads is None
    assert load_config(write(tmp_path, tiny_config(tmp_path)), ["train.threads=2"]).train.threads == 2
    assert "train.threads = 0" in error_of(tmp_path, tiny_config(tmp_path), ["train.threads=0"])
