"""The ``crosstask`` command: run, lodo, select, validate, list, evaluate, group, negative-transfer, interpret,
report, advise, demo.

Exit codes: 0 done; 2 an error a user can fix (bad config, missing data, unusable run directory), printed
as one message without a traceback; 3 training diverged; 130 (``EXIT_INTERRUPTED``) stopped by Ctrl-C or
SIGTERM (the run's checkpoint is written: continue it with ``--resume``).

Only typer and rich are imported here at module level; torch and the rest of crosstask are imported inside
the commands, so ``crosstask --help`` is fast.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crosstask.errors import CrosstaskError, RunError, suggest
from crosstask.tables import metrics_table, print_table

EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)

app = typer.Typer(
    name="crosstask",
    help="Cross-domain transfer and multi-task learning: one trainer, named losses, one loss balancing. "
    "Exit codes: 2 bad input (config, data, run directory), 3 training diverged, "
    f"{EXIT_INTERRUPTED} interrupted (Ctrl-C or SIGTERM; continue with --resume).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

INTERRUPTED_MESSAGE = (
    "interrupted; a run that had started training keeps its last checkpoint (continue it with --resume)"
)


def command(name: str | None = None) -> Callable[[Callable], Callable]:
    """``app.command``, with Ctrl-C/SIGTERM outside a training loop ending in one message and exit code 130
    (typer would exit 130 silently)."""

    def register(func: Callable) -> Callable:
        @functools.wraps(func)
        def interruptible(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except KeyboardInterrupt:
                err_console.print(INTERRUPTED_MESSAGE, highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None

        return app.command(name)(interruptible)

    return register


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


@command()
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
    """Train an experiment; writes config.yaml, metrics.jsonl, summary.json and checkpoints to its run directory.

    Ctrl-C or SIGTERM stops after the current step with a checkpoint (a second one aborts); the command then exits with code 130 (--resume continues the run). Bad input exits with 2, divergence with 3.
    """
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
        print_table(
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
        print_table(metrics_table("single-task baselines (final)", summary["baselines"]))
        console.print(f"Δm% against the single-task baselines: {summary['delta_m']:+.2f} (lower is better)")
    console.print(f"run directory: {result.run_dir}", highlight=False)
    if summary.get("status") == "interrupted":
        import shlex

        again = ["crosstask", "run", str(config), *(overrides or []), "--resume"]
        resume = shlex.join(again + (["--run-dir", str(run_dir)] if run_dir else []))
        err_console.print(
            f"interrupted at step {summary['step']} of {summary.get('steps', '?')}; the checkpoint is saved. "
            f"Continue with: {resume}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)


@command()
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
    print_table(table)


@command()
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
    print_table(runs)
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
    print_table(chosen)
    for run, why in selection.skipped.items():
        err_console.print(f"left out {run}: {why}")


@command()
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


@command("list")
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
        table.add_column("family", no_wrap=True)
        table.add_column("components")
        table.add_column("what")
        for name, registry in families.items():
            table.add_row(name, ", ".join(registry.names()), registry.description)
        console.print(table)  # prose: wrapping it is fine
        return
    name = family.rstrip("s") if family not in families and family.rstrip("s") in families else family
    if name not in families:
        raise typer.BadParameter(
            f"unknown family '{family}'.{suggest(family, families)} Families: {', '.join(families)}"
        )
    table = Table(title=f"{name} ({families[name].description})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for entry in families[name].entries():
        table.add_row(entry.name, entry.description)
    console.print(table)


@command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    overrides: Overrides = None,
    checkpoint: Annotated[
        str, typer.Option(help="best, last, or a validator's pick: best_<validator> (train.validation)")
    ] = "best",
) -> None:
    """Score a run's checkpoint on its evaluation sets (overrides may add or change data.eval).

    The table's title says which checkpoint file was scored and the training step it was taken at."""
    from crosstask.checkpoint import checkpoint_step, resolve_checkpoint
    from crosstask.experiment import evaluate_run

    if checkpoint not in ("best", "last") and not checkpoint.startswith("best_"):
        raise typer.BadParameter("--checkpoint must be best, last or best_<validator>")
    _setup_logging(quiet=True)
    metrics = evaluate_run(run_dir, checkpoint, overrides or [])
    used = resolve_checkpoint(run_dir, checkpoint)
    step = checkpoint_step(used)
    scored = f"checkpoints/{used.name}" + (
        "" if used.stem == checkpoint else f", as there is no {checkpoint}.pt"
    )
    at = f"step {step}" if step is not None else "step unknown"
    print_table(metrics_table(f"{run_dir}: {scored} ({at})", metrics))


@command()
def group(
    source: Annotated[
        Path,
        typer.Argument(help="experiment YAML (trained with the task_affinity monitor) or its run directory"),
    ],
    overrides: Overrides = None,
    budget: Annotated[int, typer.Option(help="at most this many models (groups of tasks)")] = 2,
    kind: Annotated[str, typer.Option(help="affinity: lookahead (TAG) or cosine")] = "lookahead",
    every: Annotated[
        int | None, typer.Option(help="measure every N steps (default: about 50 measurements)")
    ] = None,
    train: Annotated[
        bool,
        typer.Option("--train", help="train the groups and compare with all-in-one and one-per-task (Δm%)"),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and the results")] = False,
) -> None:
    """Which tasks to train together: task affinity from one joint run (TAG lookahead or gradient cosine),
    the best grouping for a budget of models, and with --train the trained comparison. Writes grouping.json
    in the run directory."""
    from crosstask.analysis.grouping_runs import group_tasks
    from crosstask.engine.logging import default_progress

    _setup_logging(quiet)
    report = group_tasks(
        source, budget, overrides or [], kind=kind, every=every, train=train, progress=default_progress()
    )
    names = report["names"]
    table = Table(
        title=f"task affinity ({kind}: row i, column j = effect of a step on i on j)", title_justify="left"
    )
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, report["affinity"], strict=True):
        table.add_row(name, *(f"{v:+.4f}" for v in row))
    print_table(table)
    groups = "  ".join("{" + ", ".join(g) + "}" for g in report["groups"])
    how = "every partition scored" if report["exhaustive"] else "local search (approximate)"
    console.print(f"groups for a budget of {report['budget']}: {groups} (score {report['score']:.4f}; {how})")
    if "delta_m" in report:
        for option, value in report["delta_m"].items():
            console.print(
                f"Δm% {option.replace('_', '-')}: {value:+.2f} (against one-per-task; lower is better)"
            )
    console.print(f"written: {Path(report['run_dir']) / 'grouping.json'}", highlight=False)


@command("negative-transfer")
def negative_transfer(
    runs: Annotated[list[Path], typer.Argument(help="run directories, one per seed")],
    against: Annotated[
        list[Path] | None,
        typer.Option(
            help="reference runs (target-only, source-only, ...); without it, the runs' --baselines are the reference"
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="significance level (the interval is 1 - alpha)")] = 0.05,
    output: Annotated[Path | None, typer.Option(help="also write the verdicts to this JSON file")] = None,
) -> None:
    """Per task and metric: the gain over the reference with its confidence interval (Welch's t-test) and a
    verdict: positive transfer, no evidence, negative transfer."""
    import json

    from crosstask.analysis.negative_transfer import multitask_verdicts, transfer_verdicts

    found = transfer_verdicts(runs, against, alpha) if against else multitask_verdicts(runs, alpha)
    reference = "reference runs" if against else "single-task baselines"
    table = Table(
        title=f"{len(runs)} run(s) against {len(against) if against else len(runs)} {reference}",
        title_justify="left",
    )
    for column in ("metric", "gain", f"{100 * (1 - alpha):.0f}% interval", "p", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    colour = {"positive transfer": "green", "negative transfer": "red"}
    for v in found:
        table.add_row(
            v.key,
            f"{v.gain:+.3f}",
            f"[{v.ci_low:+.3f}, {v.ci_high:+.3f}]",
            f"{v.p_value:.3g}",
            Text(v.verdict, style=colour.get(v.verdict, "")),
        )
    print_table(table)
    if min(len(runs), len(against or runs)) < 3:
        err_console.print("note: fewer than 3 runs per side; a verdict needs 3 or more seeds to mean much")
    if output is not None:
        from crosstask.checkpoint import write_text

        write_text(output, json.dumps([v.as_dict() for v in found], indent=2) + "\n", "verdicts file")


@command()
def interpret(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    against: Annotated[
        Path | None, typer.Option(help="another run on the same data (source-only, say): per-class change")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best, last or best_<validator>")] = "best",
    limit: Annotated[int, typer.Option(help="samples per evaluation domain")] = 500,
    embedding: Annotated[str, typer.Option(help="tsne, umap (umap-learn installed) or pca")] = "tsne",
    attributions: Annotated[int, typer.Option(help="image samples to attribute per task head")] = 8,
) -> None:
    """Gate usage per task over each evaluation domain (gated architectures), per-class accuracy (and its
    change from --against), a joint 2-D embedding of the domains' shared features, integrated-gradients
    attributions per task head for image inputs. Writes interpret.json in the run directory."""
    from crosstask.analysis.interpret import interpret_run

    _setup_logging(quiet=True)
    report = interpret_run(
        str(run_dir),
        against=str(against) if against else None,
        checkpoint=checkpoint,
        limit=limit,
        method=embedding,
        attributions=attributions,
    )
    for domain, usage in report.get("gate_usage", {}).items():
        table = Table(title=f"gate usage on {domain} (mean weight per expert)", title_justify="left")
        table.add_column("task")
        width = len(next(iter(usage.values()))["mean"])
        for e in range(width):
            table.add_column(f"e{e}", justify="right")
        table.add_column("entropy", justify="right")
        for task, row in usage.items():
            table.add_row(task, *(f"{v:.2f}" for v in row["mean"]), f"{row['entropy']:.2f}")
        print_table(table)
    changes = report.get("per_class_change") or report["per_class_accuracy"]
    title = "per-class accuracy change (points)" if "per_class_change" in report else "per-class accuracy %"
    for domain, tasks in changes.items():
        for task, classes in tasks.items():
            shown = "  ".join(
                f"{c}: {v:+.1f}" if "per_class_change" in report else f"{c}: {v:.1f}"
                for c, v in classes.items()
            )
            console.print(f"{title}, {domain}/{task}: {shown}", highlight=False, soft_wrap=True)
    console.print(f"written: {run_dir / 'interpret.json'}", highlight=False)


@command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="one run directory, or several to compare")],
    output: Annotated[
        Path | None, typer.Option(help="the HTML file (default: <run>/report.html, or crosstask-report.html)")
    ] = None,
    confusion: Annotated[
        bool, typer.Option("--confusion/--no-confusion", help="confusion matrices from the run's checkpoint")
    ] = True,
) -> None:
    """One self-contained HTML report (figures embedded; also written as PNG files beside it): learning
    curves, applied weights, gradient conflict, task affinity and grouping, gates, embeddings, per-class
    change, attributions, confusion matrices, negative-transfer verdicts (several runs with --baselines),
    the config and the code revision. Needs matplotlib (pip install 'crosstask[plot]')."""
    from crosstask.report.html import write_report

    _setup_logging(quiet=True)
    path = write_report(runs, output, confusion=confusion)
    console.print(
        f"written: {path} (figures as PNG in {path.parent / (path.stem + '_figures')})", highlight=False
    )


@command()
def advise(
    config: Annotated[Path, typer.Argument(help="experiment YAML: data.train with source(s) and a target")],
    overrides: Overrides = None,
    source: Annotated[str | None, typer.Option(help="the source domain (default: the labeled ones)")] = None,
    target: Annotated[
        str | None, typer.Option(help="the target domain (default: the unlabeled one, or one named *target*)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="write the recommended config here")] = None,
) -> None:
    """Which method to use: measures label counts, the domain distance (proxy A-distance) and the starting
    model's transferability (LogME), then recommends fine-tuning, domain adaptation (which family), domain
    generalization or multi-task learning, with the reason and a ready config."""
    import yaml

    from crosstask.analysis.advise import advise as advise_on
    from crosstask.config import load_config

    _setup_logging(quiet=True)
    advice = advise_on(load_config(config, overrides or []), source=source, target=target)
    table = Table(title="measured", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in advice.measurements.items():
        shown = (
            f"{value:.3f}"
            if isinstance(value, float)
            else ", ".join(value)
            if isinstance(value, list)
            else str(value)
        )
        table.add_row(key, shown)
    print_table(table)
    console.print(f"recommended: {advice.family}, method '{advice.method}'", highlight=False)
    console.print(f"why: {advice.reason}", highlight=False, soft_wrap=True)
    path = output or Path(f"{advice.config['name']}.yaml")
    if output is None and path.exists():
        raise RunError(f"{path} exists; choose where to write the recommended config with --output")
    from crosstask.checkpoint import write_text

    write_text(path, yaml.safe_dump(advice.config, sort_keys=False), "config")
    console.print(f"ready config: {path} (crosstask run {path})", highlight=False)


@command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="where the demo's runs go")] = Path("runs"),
) -> None:
    """Transfer and multi-task learning on scikit-learn's embedded digits, in well under a minute.

    Ctrl-C or SIGTERM stops the demo after the current run's step: it prints what was done and exits with code 130.
    """
    from crosstask.demo import run_demo

    _setup_logging(quiet=True)
    runs = run_demo(output_dir, console)
    if any(result.summary.get("status") == "interrupted" for result in runs.values()):
        raise typer.Exit(EXIT_INTERRUPTED)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run the CLI and turn user errors into one message and an exit code."""
    # SIGTERM outside training (loading data, between runs) ends like Ctrl-C: cleanly, with exit code 130.
    # While training, the Trainer's own handler turns the first signal into a stop with a checkpoint.
    import signal

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except CrosstaskError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130 itself)
        err_console.print(INTERRUPTED_MESSAGE, highlight=False, soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
