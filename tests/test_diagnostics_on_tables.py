"""The diagnostics on a table (a CSV read by the `tabular` dataset): monitors, grouping, interpret, report,
advise and negative-transfer, end to end from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from crosstask.cli import app


def write_table(path: Path, n: int, shift: float, seed: int) -> None:
    """Four numeric columns, one categorical; labels 'big' (from x1 + x2) and 'kind' (from x3, c)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) + shift
    c = rng.choice(["red", "green", "blue"], size=n)
    big = np.where(x[:, 0] + x[:, 1] > 2 * shift, "yes", "no")
    kind = np.where((x[:, 2] > shift) ^ (c == "red"), "a", "b")
    lines = ["x1,x2,x3,x4,colour,big,kind"]
    lines += [
        f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{r[3]:.4f},{cc},{b},{k}"
        for r, cc, b, k in zip(x, c, big, kind, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def table(name: str, **extra: object) -> dict:
    return {
        "name": "tabular",
        "path": name,
        "labels": {
            "big": {"column": "big", "positive": ["yes"]},
            "kind": {"column": "kind", "positive": ["a"]},
        },
        **extra,
    }


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    write_table(tmp_path / "source.csv", 400, 0.0, 0)
    write_table(tmp_path / "target.csv", 400, 1.5, 1)
    data = {
        "name": "table",
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "big", "num_classes": 2}, {"name": "kind", "num_classes": 2}],
        "data": {
            "root": str(tmp_path),
            "train": {"source": {"dataset": table("source.csv")}},
            "eval": {"test": {"dataset": table("source.csv", split="test")}},
        },
        "model": {
            "backbone": {"name": "mlp", "hidden": [32, 16]},
            "architecture": {"name": "mmoe", "experts": 3},
        },
        "method": "multitask",
        "optim": {"name": "adam", "lr": 0.01},
        "train": {
            "steps": 40,
            "batch_size": 32,
            "log_every": 10,
            "monitors": [{"name": "gradient_conflict", "every": 5}, {"name": "task_affinity", "every": 5}],
        },
    }
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_diagnostic_runs_on_a_table(config: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    runs = []
    for seed in range(2):
        result = cli.invoke(app, ["run", str(config), f"seed={seed}", "--baselines", "-q"])
        assert result.exit_code == 0, result.output
        runs.append(tmp_path / "runs" / ("table" if seed == 0 else f"table-{seed}"))
    run = runs[0]
    assert {p.name for p in (run / "diagnostics").iterdir()} == {
        "gradient_conflict.json",
        "task_affinity.json",
    }
    assert cli.invoke(app, ["group", str(run), "--budget", "2"]).exit_code == 0
    interpreted = cli.invoke(app, ["interpret", str(run), "--embedding", "pca", "--limit", "60"])
    assert interpreted.exit_code == 0, interpreted.output
    report = json.loads((run / "interpret.json").read_text())
    assert "gate_usage" in report and "attributions" not in report  # a table: no image attributions
    verdicts = cli.invoke(app, ["negative-transfer", *map(str, runs)])
    assert verdicts.exit_code == 0, verdicts.output
    pytest.importorskip("matplotlib")
    assert cli.invoke(app, ["report", str(run), "--no-confusion"]).exit_code == 0
    assert "id='gates'" in (run / "report.html").read_text()


def test_advise_on_tables_with_a_shifted_unlabeled_target(config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(config.read_text())
    # each table standardized by its own statistics would hide a shift of mean and scale: compare them raw
    data["data"]["train"]["source"] = {"dataset": table("source.csv", normalize=False)}
    data["data"]["train"]["target"] = {"dataset": table("target.csv", normalize=False), "labeled": False}
    data["model"]["architecture"] = "hard_sharing"
    path = tmp_path / "shifted.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["advise", str(path), "--output", str(tmp_path / "advised.yaml")])
    assert result.exit_code == 0, result.output
    assert "recommended: domain adaptation" in result.output
