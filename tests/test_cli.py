"""End-to-end: the CLI on tiny data, including a resume after SIGKILL and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from crosstask.cli import EXIT_INTERRUPTED
from tests.conftest import run_cli, tiny_config


def write(tmp_path: Path, config: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def long_config(tmp_path: Path, name: str) -> dict:
    """Long enough to be killed mid-run. Dropout exercises the RNG state; the first checkpoint (step 150)
    comes after the first evaluation (step 100), so the best-checkpoint and early-stopping state are saved
    and restored too."""
    return tiny_config(
        tmp_path,
        name=name,
        **{
            "train.steps": 4000,
            "train.eval_every": 100,
            "train.checkpoint_every": 150,
            "train.log_every": 50,
            "train.deterministic": True,
            "train.select": "source_test/t0/accuracy",
            "train.early_stopping": {"metric": "target_test/t1/accuracy", "patience": 1000},
        },
    )


def start(path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "crosstask.cli", "run", str(path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"finished before a checkpoint appeared: {proc.stderr.read()}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_run_and_evaluate(tmp_path: Path) -> None:
    path = write(tmp_path, tiny_config(tmp_path, **{"train.select": "target_test/t1/accuracy"}))
    done = run_cli("run", str(path), "train.steps=40", "-q")
    assert done.returncode == 0, done.stderr
    assert "source_test" in done.stdout and "run directory:" in done.stdout
    run_dir = tmp_path / "runs" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 40 and summary["best"]["metric"] == "target_test/t1/accuracy"
    evaluated = run_cli("evaluate", str(run_dir), "--checkpoint", "last")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{summary['final']['source_test/t0/accuracy']:.2f}" in evaluated.stdout
    assert "checkpoints/last.pt (step 40)" in evaluated.stdout
    best = run_cli("evaluate", str(run_dir))
    assert best.returncode == 0, best.stderr
    assert f"checkpoints/best.pt (step {summary['best']['step']})" in best.stdout
    missing = run_cli("evaluate", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


def test_evaluate_refuses_a_checkpoint_that_does_not_fit_and_data_of_another_shape(tmp_path: Path) -> None:
    path = write(tmp_path, tiny_config(tmp_path))
    assert run_cli("run", str(path), "train.steps=5", "-q").returncode == 0
    run_dir = tmp_path / "runs" / "tiny"
    # evaluation data of another input shape: one message, exit 2
    other = run_cli("evaluate", str(run_dir), "--checkpoint", "last", "data.eval.source_test.dataset.dim=5")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "source_test" in other.stderr and "(5,)" in other.stderr and "(8,)" in other.stderr
    # a checkpoint whose weights do not fit its spec
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    key = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][key] = torch.zeros(3, 3)
    torch.save(state, last)
    broken = run_cli("evaluate", str(run_dir), "--checkpoint", "last")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "do not fit" in broken.stderr


def test_list_shows_families_and_components() -> None:
    listed = run_cli("list")
    assert listed.returncode == 0 and "weighting" in listed.stdout and "static" in listed.stdout
    datasets = run_cli("list", "dataset")
    for name in ("digits", "synthetic", "mnist", "usps", "mnist1d", "image_folder", "tabular"):
        assert name in datasets.stdout
    unknown = run_cli("list", "weighing")
    assert unknown.returncode == 2 and "weighting" in unknown.stderr


def test_bad_data_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, **{"data.train.source.dataset": {"name": "mnist"}, "data.root": str(tmp_path)}
    )
    failed = run_cli("run", str(write(tmp_path, config)))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "train-images-idx3-ubyte.gz" in failed.stderr and str(tmp_path / "mnist") in failed.stderr


def test_resume_after_sigkill_matches_an_uninterrupted_run_bitwise(tmp_path: Path) -> None:
    killed_cfg = write(tmp_path, long_config(tmp_path, "killed"), "killed.yaml")
    proc = start(killed_cfg)
    wait_for_checkpoint(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt", weights_only=True)[
        "step"
    ]
    assert 150 <= interrupted_at < 4000

    resumed = run_cli("run", str(killed_cfg), "--resume", "-q", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    straight = run_cli(
        "run",
        str(write(tmp_path, long_config(tmp_path, "straight"), "straight.yaml")),
        "-q",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert straight.returncode == 0, straight.stderr

    a = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())
    b = json.loads((tmp_path / "runs" / "straight" / "summary.json").read_text())
    assert a["final"] == b["final"] and a["best"] == b["best"] and a["step"] == b["step"] == 4000
    last_a = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    last_b = torch.load(tmp_path / "runs" / "straight" / "checkpoints" / "last.pt", weights_only=True)[
        "model"
    ]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_b)


def test_sigterm_finishes_the_step_and_checkpoints(tmp_path: Path) -> None:
    path = write(tmp_path, long_config(tmp_path, "stopped"))
    proc = start(path)
    wait_for_checkpoint(tmp_path / "runs" / "stopped" / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED == 130, stderr
    assert "Traceback" not in stderr and f"crosstask run {path} --resume" in stderr
    summary = json.loads((tmp_path / "runs" / "stopped" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    state = torch.load(tmp_path / "runs" / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == summary["step"] < 4000


def test_demo_prints_the_results_table(tmp_path: Path) -> None:
    done = run_cli("demo", "--output-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for fragment in ("transfer", "source only", "fine-tuned", "multi-task", "parity", "run directories"):
        assert fragment in done.stdout
    runs = next(tmp_path.iterdir())
    assert {p.name for p in runs.iterdir()} >= {
        "source_only",
        "target_only",
        "joint",
        "fine_tuned",
        "multitask",
    }


def test_unusable_output_dir_or_run_dir_exits_2_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    path = write(tmp_path, tiny_config(tmp_path, output_dir=str(blocker / "runs")))
    failed = run_cli("run", str(path), "train.steps=2", "-q")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"cannot create output_dir {blocker / 'runs'}" in failed.stderr
    assert f"{blocker} is a file" in failed.stderr and "output_dir=DIR" in failed.stderr
    failed = run_cli("run", str(path), "train.steps=2", "-q", "--run-dir", str(blocker))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"run directory {blocker} is a file" in failed.stderr and "--run-dir" in failed.stderr
    assert blocker.read_text() == "keep me"


def test_a_run_name_of_dot_dot_never_writes_into_the_parent(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    for extra in ([], ["--resume"]):
        path = write(tmp_path, tiny_config(tmp_path, name=".."))
        failed = run_cli("run", str(path), "train.steps=2", "-q", *extra)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr
        assert "not a run name" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "runs"]
    assert not any((tmp_path / "runs").iterdir())


def test_validator_scores_and_long_names_print_whole_at_80_columns(tmp_path: Path) -> None:
    long_domain = "target_test_with_a_rather_long_evaluation_domain_name"
    config = tiny_config(tmp_path, name="validated", **{"train.steps": 20, "train.eval_every": 10})
    config["data"]["eval"][long_domain] = config["data"]["eval"].pop("target_test")
    config["tasks"][0].update(name="a_long_task_name_that_needs_room", label="t0")
    config["train"]["validation"] = {
        "validators": ["entropy", "source_accuracy"],
        "target": long_domain,
        "source": "source_test",
        "max_samples": 64,
    }
    done = run_cli("run", str(write(tmp_path, config)), "-q", env={"COLUMNS": "80", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "validator/entropy" in done.stdout and "validator/source_accuracy" in done.stdout
    assert long_domain in done.stdout and "a_long_task_name_that_needs_room" in done.stdout
    assert "…" not in done.stdout
    run_dir = tmp_path / "runs" / "validated"
    evaluated = run_cli("evaluate", str(run_dir), "--checkpoint", "best_entropy", env={"COLUMNS": "80"})
    assert evaluated.returncode == 0, evaluated.stderr
    assert long_domain in evaluated.stdout
    # the title (it holds the run's path, whose length varies) may wrap at 80 columns
    assert "checkpoints/best_entropy.pt (step" in " ".join(evaluated.stdout.split())


def test_metrics_table_lists_other_keys_whole() -> None:
    from rich.console import Console

    from crosstask.cli import metrics_table, print_table

    console = Console(width=60, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    metrics = {
        "a_long_domain_name_for_the_table/a_long_task_name/balanced_accuracy": 91.234,
        "validator/entropy": 0.01234,
        "validator/snd": -1.5,
    }
    print_table(metrics_table("final", metrics), console)
    text = console.export_text()
    for fragment in ("a_long_domain_name_for_the_table", "a_long_task_name", "balanced_accuracy", "91.23"):
        assert fragment in text
    assert "validator/entropy" in text and "0.01234" in text and "validator/snd" in text and "-1.5" in text
    assert "…" not in text


def test_demo_stops_at_the_first_interrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crosstask.cli", "demo", "--output-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("demo-*/source_only/metrics.jsonl")):  # training (step 100 of 400)
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the demo did not start its first run"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "interrupted" in stdout + stderr
    started = {p.name for p in next(tmp_path.iterdir()).iterdir()}
    assert "single_ge5" not in started and len(started) <= 2  # it stopped where it was told to
    if "interrupted during 'source_only'" in stdout:  # the usual case: stopped inside the training loop
        assert "finished: nothing" in stdout and "multi-task" not in stdout


def test_importing_the_cli_does_not_import_torch() -> None:
    code = (
        "import sys, crosstask.cli, crosstask as ct\n"
        "assert 'torch' not in sys.modules, 'the CLI imported torch'\n"
        "assert ct.__version__\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    helped = run_cli("--help")
    assert helped.returncode == 0 and "130" in helped.stdout


def test_the_public_names_resolve_lazily() -> None:
    import crosstask as ct

    assert sorted(ct._EXPORTS) == sorted(ct.__all__)
    for name in ct.__all__:
        assert getattr(ct, name) is not None
    from crosstask import RunError, Task, fit

    assert fit is ct.fit and Task is ct.Task and issubclass(RunError, ct.CrosstaskError)
    assert set(ct.__all__) <= set(dir(ct))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ct.nope
