"""End-to-end: the CLI on tiny data, including a resume after SIGKILL and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

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
    missing = run_cli("evaluate", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


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
    proc.wait(timeout=60)
    assert proc.returncode == 0
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
