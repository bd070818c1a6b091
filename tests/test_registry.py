"""The generic registry: registration, duplicate and unknown names, listing."""

from __future__ import annotations

import pytest

from crosstask.errors import ConfigError
from crosstask.registry import ComponentConfig, Registry

FAMILIES = [
    "dataset",
    "backbone",
    "head",
    "architecture",
    "method",
    "weighting",
    "optimizer",
    "scheduler",
    "loss",
    "metric",
    "validator",
    "regularizer",
    "finetune",
    "shallow",
    "monitor",
    "transferability",
]


@pytest.fixture(autouse=True)
def _forget_test_families():
    yield
    for name in [n for n in Registry.families if n.startswith("_test")]:
        del Registry.families[name]


def make_registry(name: str) -> Registry:
    return Registry(name, "test family")


def test_register_and_get() -> None:
    registry = make_registry("_test_register")

    class Config(ComponentConfig):
        width: int = 3

    @registry.register("widget", config=Config)
    def build_widget() -> str:
        """Builds a widget."""
        return "w"

    entry = registry.get("widget")
    assert entry.obj is build_widget and entry.config is Config
    assert entry.description == "Builds a widget."
    assert registry.names() == ["widget"] and "widget" in registry


def test_duplicate_name_is_an_error() -> None:
    registry = make_registry("_test_duplicate")
    registry.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(int)


def test_unknown_name_lists_choices_and_suggests() -> None:
    registry = make_registry("_test_unknown")
    for name in ("resnet18", "resnet50", "lenet"):
        registry.register(name)(object)
    with pytest.raises(ConfigError) as info:
        registry.get("resnet19")
    message = str(info.value)
    assert "Did you mean 'resnet18'?" in message
    assert "lenet, resnet18, resnet50" in message


def test_duplicate_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="already exists"):
        Registry("dataset", "again")


def test_the_families_are_the_documented_ones() -> None:
    assert sorted(Registry.families) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_populated_with_described_components(family: str) -> None:
    registry = Registry.families[family]
    assert registry.names(), f"{family} has no components"
    for entry in registry.entries():
        assert entry.description, f"{family} '{entry.name}' has no description"
        assert issubclass(entry.config, ComponentConfig)
