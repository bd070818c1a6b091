"""crosstask.provenance: the code revision of a run (git, never failing) and the hash of its config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import crosstask as ct
from crosstask import provenance
from crosstask.provenance import code_revision, config_hash
from tests.conftest import tiny_config

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


# ----------------------------------------------------------------------------- config_hash


def test_config_hash_is_16_hex_digits_and_ignores_key_order(tmp_path: Path) -> None:
    config = ct.validate_config(tiny_config(tmp_path)).model_dump(mode="json")
    digest = config_hash(config)
    assert len(digest) == 16 and int(digest, 16) >= 0

    def reverse(value):
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value

    reordered = reverse(config)
    assert list(reordered) != list(config)
    assert config_hash(reordered) == digest


def test_config_hash_changes_with_what_is_trained(tmp_path: Path) -> None:
    config = ct.validate_config(tiny_config(tmp_path)).model_dump(mode="json")
    digest = config_hash(config)
    for path, value in [(("seed",), 1), (("train", "steps"), 61), (("optim", "lr"), 0.051)]:
        changed = yaml.safe_load(yaml.safe_dump(config))
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert config_hash(changed) != digest, path


def test_config_hash_ignores_name_and_output_dir(tmp_path: Path) -> None:
    config = ct.validate_config(tiny_config(tmp_path)).model_dump(mode="json")
    moved = {**config, "name": "elsewhere", "output_dir": "/somewhere/else"}
    assert config_hash(moved) == config_hash(config)
    # but a name deeper in the config is what it trains
    renamed_task = yaml.safe_load(yaml.safe_dump(config))
    renamed_task["tasks"][0]["name"] = "other"
    assert config_hash(renamed_task) != config_hash(config)


def test_config_hash_of_a_saved_config_yaml_matches(tmp_path: Path) -> None:
    """The resolved config as ct.run saves it (config.yaml) hashes like the one in memory."""
    experiment = ct.validate_config(tiny_config(tmp_path))
    saved = yaml.safe_load(yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False))
    assert config_hash(saved) == config_hash(experiment.model_dump(mode="json"))


def test_config_hash_needs_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        config_hash(["not", "a", "config"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- code_revision


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with a committed package directory ``src/pkg`` and a committed ``results.md`` beside it."""
    repo = tmp_path / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "src" / "pkg" / "__init__.py").write_text("x = 1\n")
    (repo / "results.md").write_text("old\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    return repo


@needs_git
def test_clean_checkout(checkout: Path) -> None:
    revision = code_revision(checkout / "src" / "pkg")
    assert revision == {"commit": git("rev-parse", "HEAD", cwd=checkout), "dirty": False}
    assert len(revision["commit"]) == 40


@needs_git
def test_changed_tracked_file_is_dirty(checkout: Path) -> None:
    package = checkout / "src" / "pkg"
    (package / "__init__.py").write_text("x = 2\n")
    assert code_revision(package)["dirty"] is True
    git("add", ".", cwd=checkout)  # staged but not committed: still dirty
    assert code_revision(package)["dirty"] is True
    git("commit", "-q", "-m", "second", cwd=checkout)
    assert code_revision(package) == {"commit": git("rev-parse", "HEAD", cwd=checkout), "dirty": False}


@needs_git
def test_new_module_is_dirty_but_ignored_files_are_not(checkout: Path) -> None:
    package = checkout / "src" / "pkg"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert code_revision(package)["dirty"] is False
    (package / "new_method.py").write_text("y = 1\n")  # registries import every module: code too
    assert code_revision(package)["dirty"] is True


@needs_git
def test_changes_outside_the_source_tree_do_not_count(checkout: Path) -> None:
    (checkout / "results.md").write_text("new numbers\n")
    (checkout / "notes.txt").write_text("untracked\n")
    assert code_revision(checkout / "src" / "pkg")["dirty"] is False
    assert code_revision(checkout)["dirty"] is True  # the whole checkout is dirty


@needs_git
def test_not_a_checkout_or_not_tracked(tmp_path: Path, checkout: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert code_revision(plain) == {"commit": None, "dirty": None}
    # inside a checkout that does not track it (a virtualenv in another project's tree, say)
    untracked = checkout / "venv" / "pkg"
    untracked.mkdir(parents=True)
    (untracked / "__init__.py").write_text("")
    (checkout / ".gitignore").write_text("__pycache__/\nvenv/\n")
    assert code_revision(untracked) == {"commit": None, "dirty": None}
    assert code_revision(tmp_path / "missing") == {"commit": None, "dirty": None}


def test_missing_git_gives_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert code_revision() == {"commit": None, "dirty": None}


def test_slow_or_broken_git_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def timeout(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout", 0))

    monkeypatch.setattr(provenance.subprocess, "run", timeout)
    assert code_revision() == {"commit": None, "dirty": None}


@needs_git
def test_git_status_failing_leaves_dirty_unknown(monkeypatch: pytest.MonkeyPatch, checkout: Path) -> None:
    real = subprocess.run

    def status_fails(command, *args, **kwargs):
        if "status" in command:
            raise subprocess.TimeoutExpired(command, 5)
        return real(command, *args, **kwargs)

    monkeypatch.setattr(provenance.subprocess, "run", status_fails)
    revision = code_revision(checkout / "src" / "pkg")
    assert revision["commit"] is not None and revision["dirty"] is None


def test_default_is_the_package_source() -> None:
    revision = code_revision()
    assert set(revision) == {"commit", "dirty"}
    assert revision["commit"] is None or len(revision["commit"]) == 40
    assert revision["dirty"] in (None, True, False)
