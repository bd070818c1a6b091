"""The ``crosstask`` command: run, validate, list, evaluate, demo.

Errors a user can fix (bad config, missing data, unusable run directory) are printed as one message with
exit code 2 (3 when training diverged); no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crosstask.errors import CrosstaskError, RunError, suggest

app = typer.Typer(
    name="crosstask",
    help="Cross-domain transfer and multi-task learning: one trainer, named losses, one loss balancing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="overrides as key.path=value, e.g. train.steps=200")
]


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("crosstask")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("domain", "task", "metric", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for key, value in metrics.items():
        domain, task, metric = key.split("/")
        table.add_row(domain, task, metric, f"{value:.2f}")
    return table


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="experiment YAML file")],
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue output_dir/name from its last checkpoint")
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option(help="use this run directory instead of output_dir/name")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and the results")] = False,
    baselines: Annotated[
        bool,
        typer.Option("--baselines", help="also train each task alone from the same config and report Δm%"),
    ] = False,
) -> None:
    """Train an experiment; writes config.yaml, metrics.jsonl, summary.json and checkpoints to its run directory."""
    from crosstask.engine.logging import default_progress
    from crosstask.experiment import run as run_experiment

    _setup_logging(quiet)
    result = run_experiment(
        config,
        overrides or [],
        resume=resume,
        run_dir=run_dir,
        progress=default_progress(),
        baselines=baselines,
    )
    summary = result.summary
    if summary["final"]:
        console.print(
            metrics_table(
                f"{summary['name']}: final (step {summary['step']}, {summary['status']})", summary["final"]
            )
        )
    if summary.get("best"):
        best = summary["best"]
        console.print(
            f"best {best['metric']} = {best['value']:.2f} at step {best['step']} (checkpoints/best.pt)"
        )
    for validator, pick in summary.get("validators", {}).items():
        scored = ", ".join(f"{k} {v:.2f}" for k, v in pick["metrics"].items())
        console.print(
            f"validator {validator} ({'higher' if pick['higher_is_better'] else 'lower'} is better) picks step "
            f"{pick['step']} (score {pick['score']:.4g}; checkpoints/best_{validator}.pt){': ' + scored if scored else ''}",
            highlight=False,
        )
    if "delta_m" in summary:
        console.print(metrics_table("single-task baselines (final)", summary["baselines"]))
        console.print(f"Δm% against the single-task baselines: {summary['delta_m']:+.2f} (lower is better)")
    console.print(f"run directory: {result.run_dir}", highlight=False)


@app.command()
def lodo(
    config: Annotated[
        Path, typer.Argument(help="experiment YAML file whose data.train holds several labeled domains")
    ],
    overrides: Overrides = None,
    domains: Annotated[
        str | None,
        typer.Option(help="comma-separated domains to hold out (default: every labeled domain)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and the results")] = False,
) -> None:
    """Leave-one-domain-out: train once per held-out source domain; report its score and the mean."""
    from crosstask.engine.logging import default_progress
    from crosstask.lodo import leave_one_domain_out

    _setup_logging(quiet)
    held_out = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    result = leave_one_domain_out(config, overrides or [], held_out, progress=default_progress())
    table = Table(title=f"leave-one-domain-out: {result.metric} on the held-out domain", title_justify="left")
    table.add_column("held-out domain")
    table.add_column(result.metric, justify="right")
    table.add_column("run directory")
    for row in result.rows:
        table.add_row(row.domain, f"{row.value:.2f}", str(row.run_dir))
    table.add_row("mean", f"{result.mean:.2f}", "")
    console.print(table)


@app.command()
def select(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run directories (one per candidate)")],
    validator: Annotated[
        list[str] | None, typer.Option("--validator", "-v", help="only this validator (repeatable)")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="a metric key (domain/task/metric) to report for each run and each choice"),
    ] = None,
) -> None:
    """Pick a hyperparameter without target labels: each validator chooses one of several runs."""
    from crosstask.validators.selection import select_runs

    selection = select_runs(run_dirs, validator)
    names = list(selection.choices)
    evaluated = next(iter(selection.choices.values())).metrics
    if metric is not None and metric not in evaluated:
        raise RunError(
            f"--metric {metric}: not evaluated; the runs evaluate {', '.join(evaluated) or 'nothing'}"
        )
    runs = Table(title="validator scores (* = the validator's choice)", title_justify="left")
    runs.add_column("run directory")
    for name in names:
        arrow = "↑" if selection.choices[name].higher_is_better else "↓"
        runs.add_column(f"{name} {arrow}", justify="right")
    for run in selection.scores[names[0]]:
        cells = [
            f"{selection.scores[n][run]:.4g}{' *' if selection.choices[n].run_dir == run else ''}"
            for n in names
        ]
        runs.add_row(str(run), *cells)
    console.print(runs)
    chosen = Table(title="choices: the run and checkpoint each validator keeps", title_justify="left")
    for column in ("validator", "run directory", "step", "checkpoint", metric or "metrics at that step"):
        chosen.add_column(column)
    for choice in selection.choices.values():
        if metric is None:
            scored = ", ".join(f"{k} {v:.2f}" for k, v in choice.metrics.items())
        else:
            scored = f"{choice.metrics[metric]:.2f}" if metric in choice.metrics else "-"
        chosen.add_row(
            choice.validator, str(choice.run_dir), str(choice.step), choice.checkpoint.name, scored
        )
    console.print(chosen)
    for run, why in selection.skipped.items():
        err_console.print(f"left out {run}: {why}")


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="experiment YAML file")],
    overrides: Overrides = None,
) -> None:
    """Check an experiment file (and overrides) without running it."""
    from crosstask.config import load_config

    experiment = load_config(config, overrides or [])
    tasks = ", ".join(t.name for t in experiment.tasks)
    console.print(
        f"[green]ok[/green] {config}: '{experiment.name}', tasks {tasks}; method {experiment.method.name}, "
        f"weighting {experiment.weighting.name}, backbone {experiment.model.backbone.name}, {experiment.train.steps} steps"
    )


@app.command("list")
def list_components(
    family: Annotated[
        str | None, typer.Argument(help="a family (dataset, backbone, method, weighting, ...)")
    ] = None,
) -> None:
    """List the registered components of a family, or the families."""
    from crosstask.registry import Registry

    families = Registry.families
    if family is None:
        table = Table(title="component families (crosstask list FAMILY)", title_justify="left")
        table.add_column("family")
        table.add_column("components")
        table.add_column("what")
        for name, registry in families.items():
            table.add_row(name, ", ".join(registry.names()), registry.description)
        console.print(table)
        return
    name = family.rstrip("s") if family not in families and family.rstrip("s") in families else family
    if name not in families:
        raise typer.BadParameter(
            f"unknown family '{family}'.{suggest(family, families)} Families: {', '.join(families)}"
        )
    table = Table(title=f"{name} ({families[name].description})", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for entry in families[name].entries():
        table.add_row(entry.name, entry.description)
    console.print(table)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    overrides: Overrides = None,
    checkpoint: Annotated[
        str, typer.Option(help="best, last, or a validator's pick: best_<validator> (train.validation)")
    ] = "best",
) -> None:
    """Score a run's checkpoint on its evaluation sets (overrides may add or change data.eval)."""
    from crosstask.experiment import evaluate_run

    if checkpoint not in ("best", "last") and not checkpoint.startswith("best_"):
        raise typer.BadParameter("--checkpoint must be best, last or best_<validator>")
    _setup_logging(quiet=True)
    metrics = evaluate_run(run_dir, checkpoint, overrides or [])
    console.print(metrics_table(f"{run_dir} ({checkpoint} checkpoint)", metrics))


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="where the demo's runs go")] = Path("runs"),
) -> None:
    """Transfer and multi-task learning on scikit-learn's embedded digits, in well under a minute."""
    from crosstask.demo import run_demo

    _setup_logging(quiet=True)
    run_demo(output_dir, console)


def main() -> None:
    """Entry point: run the CLI and turn user errors into one message and an exit code."""
    try:
        app()
    except CrosstaskError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
