"""Shared fixtures: tiny experiment configs, the data root, and a CLI runner."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# One intra-op thread for the suite and every subprocess it starts: the tests' models are small, and
# with other processes on the same cores extra threads only wait for each other.
PINNED_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
os.environ.update(PINNED_THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

from crosstask.data.datasets.base import resolve_data_root  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crosstask")


@pytest.fixture
def data_root() -> Path:
    """The benchmark data root; tests that need it skip with the reason when it is absent."""
    root = resolve_data_root()
    if not root.is_dir():
        pytest.skip(
            f"benchmark data not found at {root} (set CROSSTASK_DATA to the folder holding mnist/, usps/, ...)"
        )
    return root


def need(root: Path, folder: str) -> Path:
    if not (root / folder).is_dir():
        pytest.skip(f"{folder}/ not found under the data root {root}")
    return root / folder


def tiny_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A fast experiment on synthetic data: 2 tasks, 2 domains, an MLP with dropout."""
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "t0", "num_classes": 2}, {"name": "t1", "num_classes": 2}],
        "data": {
            "train": {"source": {"dataset": {"name": "synthetic", "n": 256, "n_test": 128, "dim": 8}}},
            "eval": {
                "source_test": {
                    "dataset": {"name": "synthetic", "split": "test", "n": 256, "n_test": 128, "dim": 8}
                },
                "target_test": {
                    "dataset": {
                        "name": "synthetic",
                        "split": "test",
                        "n": 256,
                        "n_test": 128,
                        "dim": 8,
                        "domain": 1,
                        "shift": 0.5,
                    }
                },
            },
        },
        "model": {"backbone": {"name": "mlp", "hidden": [32], "dropout": 0.1}},
        "method": {"name": "multitask"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"steps": 60, "batch_size": 32, "eval_every": 20, "log_every": 10},
    }
    for key, value in changes.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return config


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m crosstask.cli ARGS`` in a subprocess, capturing its output."""
    full_env = {**os.environ, **PINNED_THREADS, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "crosstask.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
