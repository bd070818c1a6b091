"""`crosstask report`: every figure has a title and labelled axes and no two panels overlap, the HTML holds
every section the run has data for, comparisons carry negative-transfer verdicts, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import crosstask as ct
from crosstask.cli import app
from crosstask.errors import ConfigError, RunError
from crosstask.report import figures
from crosstask.report.data import read_run
from crosstask.report.html import write_report

pytest.importorskip("matplotlib")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_multitask.yaml"


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gated multi-task run on the digits with both monitors, its baselines, a grouping and interpret."""
    out = tmp_path_factory.mktemp("report")
    overrides = [
        f"output_dir={out}",
        "name=gated",
        "train.steps=60",
        "train.eval_every=30",
        "train.log_every=10",
        "train.early_stopping=null",
        "model.architecture.name=mmoe",
        "model.architecture.experts=3",
        "train.monitors=[{name: gradient_conflict, every: 5}, {name: task_affinity, every: 5}]",
    ]
    result = ct.run(ct.load_config(CONFIG, overrides), baselines=True)
    runner = CliRunner()
    assert runner.invoke(app, ["group", str(result.run_dir), "--budget", "2"]).exit_code == 0
    against = result.run_dir / "baselines" / "digit"
    interpreted = runner.invoke(
        app,
        ["interpret", str(result.run_dir), "--against", str(against), "--limit", "80", "--attributions", "2"],
    )
    assert interpreted.exit_code == 0, interpreted.output
    return result.run_dir


def test_the_report_holds_every_section_and_writes_the_pictures(analysed_run: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(analysed_run)])
    assert result.exit_code == 0, result.output
    page = (analysed_run / "report.html").read_text()
    for section in [*figures.RUN_FIGURES, "confusion"]:
        assert f"id='{section}'" in page, section
        assert (analysed_run / "report_figures" / f"{section}.png").stat().st_size > 1000
    assert "data:image/png;base64," in page and "<h2>config</h2>" in page
    assert "against single-task baselines" in page and "grouping (budget 2" in page


def test_every_figure_has_titles_and_labelled_axes_and_no_panels_overlap(analysed_run: Path) -> None:
    import matplotlib.pyplot as plt

    run = read_run(analysed_run)
    made = {name: make(run) for name, make in figures.RUN_FIGURES.items()}
    assert all(fig is not None for fig in made.values()), [n for n, f in made.items() if f is None]
    for name, fig in made.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        for ax in panels:
            assert ax.get_title(), f"{name}: an axes without a title"
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: '{ax.get_title()}' has an unlabelled axis"
        boxes = [ax.get_window_extent(renderer) for ax in panels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), f"{name}: two panels overlap"
        plt.close(fig)


def test_a_comparison_of_seeds_with_baselines_gives_verdicts(analysed_run: Path, tmp_path: Path) -> None:
    copies = []
    for seed in range(2):
        copy = tmp_path / f"seed{seed}"
        shutil.copytree(analysed_run, copy)
        copies.append(copy)
    output = tmp_path / "compare.html"
    path = write_report(copies, output)
    page = path.read_text()
    assert "negative transfer (the runs as seeds" in page
    assert "final metrics" in page and page.count("<img") >= 1


def test_a_report_without_matplotlib_says_how_to_install_it(
    analysed_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"crosstask\[plot\]"):
        figures.learning_curves(read_run(analysed_run))


def test_a_report_of_something_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no summary.json"):
        write_report([tmp_path])


def test_an_unwritable_output_is_one_clear_error(analysed_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="is a directory"):
        write_report([analysed_run], tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode
            pytest.skip("this user can write to a read-only directory (root)")
        with pytest.raises(RunError, match="cannot write the report"):
            write_report([analysed_run], locked / "r.html", confusion=False)
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(analysed_run: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt install chromium)")
    page = write_report([analysed_run], tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,3000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 3000)
    assert len(np.unique(np.asarray(image))) > 50  # text and figures, not a blank page
