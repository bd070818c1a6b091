"""Rich tables for the terminal, printed whole at any width (the CLI and the demo use them)."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def metrics_table(title: str, metrics: dict[str, float]) -> Table:
    """Evaluation metrics (``domain/task/metric``) as a table; any other key (``validator/<name>``, ...) is
    listed whole below them."""
    table = Table(title=title, title_justify="left")
    for column in ("domain", "task", "metric", "value"):
        table.add_column(column, justify="right" if column == "value" else "left", no_wrap=True)
    other = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3:
            table.add_row(*parts, _number(value, ".2f"))
        else:
            other.append((key, value))
    if other:
        table.add_section()
        for key, value in other:
            table.add_row(key, "", "", _number(value, ".4g"))
    return table


def _number(value: object, spec: str) -> str:
    return (
        format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    )


def print_table(table: Table, to: Console | None = None) -> None:
    """Print ``table`` whole: when it is wider than the terminal it is drawn at its natural width instead of
    wrapping or cutting its cells, so metric names and paths always appear in full."""
    to = to or Console()
    needed = Measurement.get(to, to.options.update(max_width=100_000), table).maximum
    if needed <= to.width:
        to.print(table)
        return
    from rich.segment import Segments

    rendered = to.render(table, to.options.update(width=needed, max_width=needed))
    to.print(Segments(rendered), crop=False)
