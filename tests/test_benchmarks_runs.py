"""benchmarks.runs: a suite reuses a finished run only when it was made by the same code and config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from benchmarks import runs as runs_module
from benchmarks.records import Record
from benchmarks.runs import existing_runs, mismatches, resolve, run_experiment

from crosstask.provenance import config_hash
from tests.conftest import tiny_config

CLEAN = {"commit": "a" * 40, "dirty": False}
OTHER = {"commit": "b" * 40, "dirty": False}


def config(tmp_path: Path, **train: Any) -> dict[str, Any]:
    data = tiny_config(tmp_path)
    data["train"].update({"steps": 20, "eval_every": 10, "log_every": 10, **train})
    return data


@pytest.fixture
def revision(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The code revision benchmarks.runs sees; tests change it in place."""
    current = dict(CLEAN)
    monkeypatch.setattr(runs_module, "code_revision", lambda: dict(current))
    return current


def stamp(run_dir: Path, revision: dict[str, Any] | None, digest: str | None) -> None:
    """Write what the run's summary records (as the Trainer will), or remove it (``None``)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text())
    for key, value in (("revision", revision), ("config_hash", digest)):
        if value is None:
            summary.pop(key, None)
        else:
            summary[key] = value
    path.write_text(json.dumps(summary))


def first_run(tmp_path: Path, revision: dict[str, Any], **train: Any) -> tuple[dict, Path]:
    data = config(tmp_path, **train)
    result, provenance = run_experiment(data)
    assert not provenance.reused and Path(result.run_dir).name == "tiny"
    stamp(result.run_dir, dict(revision), config_hash(resolve(data)))
    return data, Path(result.run_dir)


def test_no_run_yet_trains_one(tmp_path: Path, revision: dict) -> None:
    result, provenance = run_experiment(config(tmp_path))
    assert result.summary["status"] == "completed"
    assert Path(provenance.run_dir) == tmp_path / "runs" / "tiny"
    assert provenance.reused is False
    assert provenance.config_hash == config_hash(resolve(config(tmp_path)))
    assert provenance.revision == result.summary.get("revision", CLEAN)


def test_same_code_and_config_is_reused(tmp_path: Path, revision: dict) -> None:
    data, run_dir = first_run(tmp_path, revision)
    before = (run_dir / "metrics.jsonl").read_text()
    result, provenance = run_experiment(data)
    assert provenance.reused is True and Path(result.run_dir) == run_dir
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing trained
    assert provenance.revision == CLEAN and provenance.config_hash == config_hash(resolve(data))
    assert existing_runs(tmp_path / "runs", "tiny") == [run_dir]


@pytest.mark.parametrize(
    ("recorded", "now", "expected"),
    [
        (None, CLEAN, "records no code revision"),
        (OTHER, CLEAN, "made at bbbbbbbbbb (clean), the code is now at aaaaaaaaaa"),
        ({**CLEAN, "dirty": True}, CLEAN, "uncommitted code cannot be matched"),
        (CLEAN, {**CLEAN, "dirty": True}, "the code now is aaaaaaaaaa with uncommitted changes"),
        (CLEAN, {"commit": None, "dirty": None}, "current code revision is unknown"),
    ],
)
def test_another_code_state_is_trained_again(
    tmp_path: Path,
    revision: dict,
    caplog: pytest.LogCaptureFixture,
    recorded: dict | None,
    now: dict,
    expected: str,
) -> None:
    data, run_dir = first_run(tmp_path, revision)
    stamp(run_dir, recorded, config_hash(resolve(data)))
    if recorded is None:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert "revision" not in summary
    revision.clear()
    revision.update(now)
    old_summary = (run_dir / "summary.json").read_text()
    with caplog.at_level(logging.WARNING, logger="benchmarks.runs"):
        result, provenance = run_experiment(data)
    assert Path(result.run_dir) == run_dir.with_name("tiny-1") and provenance.reused is False
    assert (run_dir / "summary.json").read_text() == old_summary  # the old run is left as it was
    warning = caplog.text
    assert str(run_dir) in warning and "not reused" in warning and expected in warning
    assert existing_runs(tmp_path / "runs", "tiny") == [run_dir, run_dir.with_name("tiny-1")]


def test_another_config_is_trained_again_not_continued(
    tmp_path: Path, revision: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """ct.run(resume=True) would continue a 20-step run to 30 steps; the suite trains a fresh one."""
    _, run_dir = first_run(tmp_path, revision)
    longer = config(tmp_path, steps=30)
    with caplog.at_level(logging.WARNING, logger="benchmarks.runs"):
        result, provenance = run_experiment(longer)
    assert Path(result.run_dir) == run_dir.with_name("tiny-1")
    assert "config hash" in caplog.text
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 20
    assert result.summary["step"] == 30 and provenance.config_hash == config_hash(resolve(longer))
    # next time the new run is the latest, and it matches
    stamp(result.run_dir, dict(revision), config_hash(resolve(longer)))
    _, again = run_experiment(longer)
    assert again.reused and Path(again.run_dir) == run_dir.with_name("tiny-1")


def test_summary_config_hash_falls_back_to_config_yaml(tmp_path: Path, revision: dict) -> None:
    data, run_dir = first_run(tmp_path, revision)
    stamp(run_dir, dict(revision), None)  # a summary with a revision but no config_hash
    assert mismatches(run_dir, revision, config_hash(resolve(data))) == []
    assert mismatches(run_dir, revision, "0" * 16) != []


def test_run_without_summary_is_not_continued(tmp_path: Path, revision: dict) -> None:
    """Killed before it wrote a summary (or still running in another process): its code is unknown."""
    data, run_dir = first_run(tmp_path, revision)
    (run_dir / "summary.json").unlink()
    result, provenance = run_experiment(data)
    assert Path(result.run_dir) == run_dir.with_name("tiny-1") and not provenance.reused


def test_reuse_runs_accepts_a_mismatch_and_says_so(
    tmp_path: Path, revision: dict, caplog: pytest.LogCaptureFixture
) -> None:
    data, run_dir = first_run(tmp_path, revision)
    stamp(run_dir, OTHER, config_hash(resolve(data)))
    with caplog.at_level(logging.WARNING, logger="benchmarks.runs"):
        result, provenance = run_experiment(data, reuse=True)
    assert Path(result.run_dir) == run_dir and provenance.reused
    assert provenance.revision == OTHER  # the record carries what the run was made from
    assert "reused although" in caplog.text and "--reuse-runs" in caplog.text


def test_overrides_and_experiment_objects(tmp_path: Path, revision: dict) -> None:
    import crosstask as ct

    experiment = ct.validate_config(config(tmp_path))
    result, provenance = run_experiment(experiment, ["name=other"])
    assert Path(result.run_dir).name == "other"
    assert provenance.config_hash == config_hash(experiment.model_dump(mode="json"))  # name is not hashed


def test_existing_runs_order(tmp_path: Path) -> None:
    for name in ["tiny-10", "tiny", "tiny-2", "tiny-1", "tinyx", "tiny-x", "other"]:
        (tmp_path / name).mkdir()
    (tmp_path / "tiny-3").write_text("a file, not a run")
    assert [p.name for p in existing_runs(tmp_path, "tiny")] == ["tiny", "tiny-1", "tiny-2", "tiny-10"]
    assert existing_runs(tmp_path / "missing", "tiny") == []


def test_records_carry_the_runs_provenance(tmp_path: Path, revision: dict) -> None:
    data, _ = first_run(tmp_path, revision)
    provenances = []
    for seed in (0, 1):
        seeded = {**data, "seed": seed, "name": f"tiny_seed{seed}"}
        provenances.append(run_experiment(seeded)[1])
    record = Record.measured("b", "m", "metric", [1.0, 2.0], [0, 1], True, runs=provenances)
    assert record.config_hashes == [p.config_hash for p in provenances]
    assert len(set(record.config_hashes)) == 2  # the seed is part of the config
    assert record.revisions == [provenances[0].revision]


def test_an_interrupted_run_stops_the_suite(
    tmp_path: Path, revision: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C stops the run with a checkpoint; the suite must not go on to start the next run."""
    import crosstask as ct
    from crosstask.errors import RunInterrupted

    real_run = ct.run

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        result = real_run(*args, **kwargs)
        result.summary["status"] = "interrupted"
        return result

    monkeypatch.setattr(ct, "run", interrupted)
    with pytest.raises(RunInterrupted, match="run the suite again"):
        run_experiment(config(tmp_path))
