"""Hostile input to run directories and checkpoints: escaping names, unwritable places, races, leftovers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import crosstask as ct
from crosstask.checkpoint import (
    checkpoint_step,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from crosstask.engine.run_dir import RunDir
from crosstask.errors import ConfigError, RunError

ESCAPING = ["..", ".", "../x", "a/../../x", "a/b", "/tmp/elsewhere", "", "x\\y"]


@pytest.mark.parametrize("name", ESCAPING)
@pytest.mark.parametrize("resume", [False, True])
def test_names_that_are_not_one_folder_are_refused(tmp_path: Path, name: str, resume: bool) -> None:
    output_dir = tmp_path / "a" / "runs"
    output_dir.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="is not a folder name") as info:
        RunDir.create(output_dir, name, resume=resume)
    assert "output_dir" in str(info.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere


def test_fit_refuses_a_name_outside_output_dir(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    model = ct.TransferModel("mlp", [ct.Task("label", num_classes=2)], input_shape=(5,))
    (tmp_path / "runs").mkdir()
    for name in ("../x", str(tmp_path / "abs")):
        with pytest.raises(ConfigError, match="is not a folder name"):
            ct.fit(model, source=data, steps=2, output_dir=tmp_path / "runs", name=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert not any((tmp_path / "runs").iterdir())


def test_output_dir_that_is_a_file_or_under_one(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for output_dir in (blocker, blocker / "runs"):
        with pytest.raises(RunError) as info:
            RunDir.create(output_dir, "x")
        message = str(info.value)
        assert str(output_dir) in message and f"{blocker} is a file" in message
        assert "output_dir" in message  # what to do
    assert blocker.read_text() == "not a folder"


def test_output_dir_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RunError, match=r"cannot create output_dir .*new.*Permission denied.*output_dir="):
        RunDir.create(tmp_path / "new", "x")
    with pytest.raises(RunError, match=r"cannot create .*run.*Permission denied.*--run-dir"):
        RunDir.at(tmp_path / "run")


def test_read_only_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output_dir = tmp_path / "runs"
    output_dir.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: pretend instead
        output_dir.chmod(0o555)
    else:
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != output_dir)
    try:
        with pytest.raises(RunError, match=rf"output_dir {output_dir} is not writable; make it writable"):
            RunDir.create(output_dir, "x")
    finally:
        output_dir.chmod(0o755)


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("x")
    for resume in (False, True):
        with pytest.raises(RunError, match=rf"run directory {path} is a file, not a directory.*--run-dir"):
            RunDir.at(path, resume=resume)
    assert path.read_text() == "x"


def test_a_name_taken_between_the_scan_and_the_mkdir_gets_the_next_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process creates ``name`` after this one looked: this one takes ``name-1``."""
    output_dir = tmp_path / "runs"
    output_dir.mkdir()
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == output_dir / "exp" and not self.exists():
            real_mkdir(self)  # the other process wins
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert RunDir.create(output_dir, "exp").path == output_dir / "exp-1"


def test_concurrent_creation_gives_distinct_directories(tmp_path: Path) -> None:
    output_dir = tmp_path / "runs"
    count = 16
    barrier = threading.Barrier(count)
    made: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            made.append(RunDir.create(output_dir, "exp").path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(made)) == count
    assert {p.name for p in made} == {"exp", *(f"exp-{n}" for n in range(1, count))}


def test_numbering_skips_files_and_resume_takes_the_latest(tmp_path: Path) -> None:
    output_dir = tmp_path / "runs"
    assert RunDir.create(output_dir, "exp").path.name == "exp"
    assert RunDir.create(output_dir, "exp").path.name == "exp-1"
    (output_dir / "exp-2").write_text("a file, not a run")
    assert RunDir.create(output_dir, "exp").path.name == "exp-3"
    assert RunDir.create(output_dir, "exp", resume=True).path.name == "exp-3"
    assert RunDir.create(output_dir, "other", resume=True).path.name == "other"  # nothing to resume: new


def test_release_if_unused_gives_the_name_back(tmp_path: Path) -> None:
    output_dir = tmp_path / "runs"
    directory = RunDir.create(output_dir, "exp")
    directory.config.write_text("name: exp\n")
    (directory.path / "checkpoints").mkdir()
    assert directory.release_if_unused()
    assert not directory.path.exists()
    assert RunDir.create(output_dir, "exp").path.name == "exp"  # the failed run did not claim the name


@pytest.mark.parametrize(
    "leftover", ["metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/.last.pt.abcdefgh.tmp"]
)
def test_release_if_unused_keeps_a_directory_with_anything_else(tmp_path: Path, leftover: str) -> None:
    directory = RunDir.create(tmp_path / "runs", "exp")
    directory.config.write_text("name: exp\n")
    (directory.path / leftover).parent.mkdir(exist_ok=True)
    (directory.path / leftover).write_text("work")
    assert not directory.release_if_unused()
    assert directory.config.is_file() and (directory.path / leftover).read_text() == "work"


def test_release_if_unused_keeps_a_directory_it_did_not_create(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    directory = RunDir.at(chosen)
    directory.config.write_text("name: exp\n")
    assert directory.release_if_unused()
    assert chosen.is_dir() and not any(chosen.iterdir())
    created = RunDir.at(tmp_path / "fresh")
    created.config.write_text("name: exp\n")
    assert created.release_if_unused() and not created.path.exists()


STALE = [
    "checkpoints/.last.pt.abcd1234.tmp",
    "checkpoints/.best_entropy.pt.x_y9z0k1.tmp",
    ".summary.json.k2j3h4g5.tmp",
]
KEPT = [
    "checkpoints/last.pt",
    "checkpoints/.last.pt.tmp",
    "checkpoints/notes.tmp",
    "checkpoints/.last.pt.ABCDEFGH.tmp",
    "config.yaml",
    "mine.tmp",
]


@pytest.mark.parametrize("how", ["create", "at"])
def test_resuming_removes_stale_temporary_checkpoints_only(tmp_path: Path, how: str) -> None:
    run = tmp_path / "runs" / "exp"
    for name in STALE + KEPT:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    opened = (
        RunDir.create(tmp_path / "runs", "exp", resume=True)
        if how == "create"
        else RunDir.at(run, resume=True)
    )
    assert opened.path == run
    assert not any((run / name).exists() for name in STALE)
    assert all((run / name).read_text() == "x" for name in KEPT)


def test_remove_stale_temporaries_leaves_folders_and_missing_directories_alone(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abcd1234.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_a_killed_save_leaves_a_temporary_that_the_next_resume_removes(tmp_path: Path) -> None:
    directory = RunDir.create(tmp_path / "runs", "exp")
    save_checkpoint(directory.last, {"step": 3})
    orphan = directory.last.parent / ".last.pt.q1w2e3r4.tmp"  # what a SIGKILL during torch.save leaves
    orphan.write_bytes(b"half a checkpoint")
    RunDir.create(tmp_path / "runs", "exp", resume=True)
    assert not orphan.exists() and load_checkpoint(directory.last)["step"] == 3


class NotATensor:
    """Pickled into a file that is not a crosstask checkpoint."""


def test_a_file_with_other_objects_is_refused_without_advising_unsafe_loading(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": {}, "extra": NotATensor()}, path)
    with pytest.raises(RunError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "not a crosstask checkpoint" in message and "NotATensor" in message
    assert "weights_only" not in message and "trust" not in message


def test_a_damaged_file_is_refused_without_advising_unsafe_loading(tmp_path: Path) -> None:
    for content in (b"garbage", b"\x80\x02}q\x00."[:-1], b""):
        path = tmp_path / "damaged.pt"
        path.write_bytes(content)
        with pytest.raises(RunError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "cannot read the checkpoint" in message
        assert "weights_only" not in message


def test_checkpoint_step(tmp_path: Path) -> None:
    directory = RunDir.create(tmp_path / "runs", "exp")
    save_checkpoint(directory.last, {"step": 12, "model": {}})
    save_checkpoint(directory.best, {"step": 8, "model": {}})
    assert checkpoint_step(directory.path, "best") == 8
    assert checkpoint_step(directory.path, "last") == 12
    assert checkpoint_step(directory.last) == 12
    save_checkpoint(directory.best, {"model": {}})
    assert checkpoint_step(directory.best) is None


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        directory = RunDir.create(tmp_path / "runs", "exp")
        save_checkpoint(directory.last, {"step": 1})
        directory.write_json(directory.summary, {"status": "completed"})
    finally:
        os.umask(old)
    assert directory.last.stat().st_mode & 0o777 == 0o644
    assert directory.summary.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in directory.last.parent.iterdir()] == ["last.pt"]  # no temporaries left


def test_a_read_only_run_directory_is_refused_before_resuming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: exp\n")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != run)
    with pytest.raises(RunError, match=rf"run directory {run} is not writable"):
        RunDir.create(tmp_path / "runs", "exp", resume=True)
    with pytest.raises(RunError, match=rf"run directory {run} is not writable"):
        RunDir.at(run, resume=True)
