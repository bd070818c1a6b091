"""Assemble the report: figures (embedded as PNG and written beside the HTML), tables, the config and the
code revision, in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crosstask.checkpoint import write_text
from crosstask.errors import CrosstaskError, RunError
from crosstask.report import figures
from crosstask.report.data import RunData, read_run

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; font-size: 0.8rem; }
.meta { color: #555; font-size: 0.9rem; } .positive { color: #1a7f37; } .negative { color: #c62828; }
"""

CAPTIONS = {
    "learning_curves": "Training losses (mean per logged window) and evaluation metrics over training.",
    "weights": "The weight the loss balancing gave each objective over training.",
    "gradient_conflict": "Gradient-conflict monitor: fraction of conflicting pairs and cosines over training; "
    "mean pairwise cosine.",
    "task_affinity": "Task affinity from the lookahead (TAG) and the gradient cosine, averaged over training.",
    "gates": "Gate usage per task over the evaluation domain (crosstask interpret).",
    "embeddings": "Joint 2-D embedding of the domains' shared features (crosstask interpret).",
    "per_class": "Per-class accuracy, or its change from the --against run (crosstask interpret).",
    "attributions": "Integrated-gradients attributions per task head (crosstask interpret).",
    "confusion": "Confusion matrices on the evaluation domains (the best checkpoint, else the last).",
}


def write_report(
    runs: Sequence[str | Path], output: str | Path | None = None, *, confusion: bool = True
) -> Path:
    """One HTML file for one run (default ``<run>/report.html``) or a comparison of several (default
    ``crosstask-report.html``); the figures also go to PNG files in ``<output stem>_figures/``."""
    data = [read_run(r) for r in runs]
    if output is None:
        output = data[0].path / "report.html" if len(data) == 1 else Path("crosstask-report.html")
    output = Path(output)
    if output.is_dir():
        raise RunError(f"--output {output} is a directory; give the path of the HTML file to write")
    pictures = output.parent / f"{output.stem}_figures"
    try:
        pictures.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"cannot write the report to {output}: {exc.strerror or exc}; choose another --output"
        ) from None
    body = _run_body(data[0], pictures, confusion) if len(data) == 1 else _comparison_body(data, pictures)
    title = f"crosstask report: {data[0].name}" if len(data) == 1 else f"crosstask report: {len(data)} runs"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    write_text(output, page, "report")
    return output


def _figure_html(name: str, figure: Any, pictures: Path) -> str:
    if figure is None:
        return ""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    figure.savefig(pictures / f"{name}.png", dpi=150)
    import matplotlib.pyplot as plt

    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    caption = html.escape(CAPTIONS.get(name, ""))
    return (
        f"<section id='{name}'><h2>{html.escape(name.replace('_', ' '))}</h2><p class='meta'>{caption}</p>"
        f"<img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'></section>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return html.escape("" if value is None else str(value))


def _revision(summary: dict[str, Any]) -> str:
    revision = summary.get("revision") or {}
    commit = (revision.get("commit") or "unknown")[:10]
    return commit + ("+dirty" if revision.get("dirty") else "")


def _run_body(run: RunData, pictures: Path, confusion: bool) -> str:
    s = run.summary
    meta = (
        f"<p class='meta'>{html.escape(str(run.path))} · status {html.escape(str(s.get('status')))} at step "
        f"{s.get('step')} of {s.get('steps')} · method {html.escape(str(s.get('method')))} · weighting "
        f"{html.escape(str(s.get('weighting')))} · {s.get('elapsed_s', 0):.0f} s · code {_revision(s)} · config "
        f"{html.escape(str(s.get('config_hash') or '-'))}</p>"
    )
    parts = [
        meta,
        "<h2>final metrics</h2>",
        _table(["metric", "value"], sorted((s.get("final") or {}).items())),
    ]
    if "baselines" in s:
        rows = [(k, (s.get("final") or {}).get(k), v) for k, v in sorted(s["baselines"].items())]
        parts += [
            "<h2>against single-task baselines</h2>",
            f"<p class='meta'>Δm% {s.get('delta_m', float('nan')):+.2f} (lower is better). One run per side: "
            "for a verdict with a confidence interval, compare 3 seeds (crosstask negative-transfer).</p>",
            _table(["metric", "this run", "single-task"], rows),
        ]
    for name, make in figures.RUN_FIGURES.items():
        parts.append(_figure_html(name, make(run), pictures))
    if confusion:
        parts.append(_figure_html("confusion", figures.confusion(_confusion_matrices(run)), pictures))
    if run.grouping:
        g = run.grouping
        rows = [(", ".join(group),) for group in g["groups"]]
        parts += [f"<h2>grouping (budget {g['budget']}, {g['kind']})</h2>", _table(["group"], rows)]
        if "delta_m" in g:
            parts.append(_table(["option", "Δm% vs one-per-task"], sorted(g["delta_m"].items())))
    if run.config is not None:
        parts += ["<h2>config</h2>", f"<pre>{html.escape(yaml.safe_dump(run.config, sort_keys=False))}</pre>"]
    return "".join(parts)


def _confusion_matrices(run: RunData) -> dict[str, np.ndarray]:
    """Rows: true class, columns: predicted, per evaluation domain and classification task (from the best
    checkpoint, else the last); empty when the run's model or data cannot be loaded (a ct.fit run)."""
    try:
        from crosstask.analysis.interpret import collect
        from crosstask.experiment import build_domains, load_run

        experiment, model = load_run(run.path)
        out = {}
        for domain in build_domains(experiment, "eval").values():
            if domain.episodes is not None:  # an episode's classes are not the head's classes
                continue
            collected = collect(model, domain, limit=5000)
            for task in model.tasks:
                if task.kind != "classification" or task.name not in collected.labels:
                    continue
                labels, predicted = collected.labels[task.name], collected.outputs[task.name].argmax(1)
                keep = labels >= 0
                matrix = np.zeros((task.num_classes, task.num_classes), dtype=np.int64)
                np.add.at(matrix, (labels[keep].numpy(), predicted[keep].numpy()), 1)
                out[f"{domain.name}/{task.name}"] = matrix
        return out
    except (CrosstaskError, OSError) as exc:
        log.warning("confusion matrices left out: %s", exc)
        return {}


def _comparison_body(runs: Sequence[RunData], pictures: Path) -> str:
    keys = sorted({k for r in runs for k in (r.summary.get("final") or {})})
    rows = [[k, *((r.summary.get("final") or {}).get(k) for r in runs)] for k in keys]
    parts = [
        "<h2>runs</h2>",
        _table(
            ["run", "status", "method", "weighting", "steps", "code", "config"],
            [
                [
                    r.name,
                    r.summary.get("status"),
                    r.summary.get("method"),
                    r.summary.get("weighting"),
                    r.summary.get("step"),
                    _revision(r.summary),
                    r.summary.get("config_hash"),
                ]
                for r in runs
            ],
        ),
        "<h2>final metrics</h2>",
        _table(["metric", *(r.name for r in runs)], rows),
    ]
    for index, metric in enumerate([k for k in keys if k.count("/") == 2][:3]):
        parts.append(_figure_html(f"curves_{index}", figures.compare_curves(runs, metric), pictures))
    finished = [r for r in runs if r.summary.get("status") in ("completed", "stopped_early")]
    seeds = [r for r in finished if "baselines" in r.summary]
    if len(seeds) >= 2:
        from crosstask.analysis.negative_transfer import multitask_verdicts

        left_out = [r.name for r in runs if r not in seeds]
        note = f" ({', '.join(left_out)} left out: unfinished or without baselines)" if left_out else ""
        parts += [
            "<h2>negative transfer (the runs as seeds, against their single-task baselines)</h2>"
            f"<p class='meta'>{len(seeds)} runs{html.escape(note)}</p>",
            _verdict_table(multitask_verdicts([r.path for r in seeds])),
        ]
    return "".join(parts)


def _verdict_table(verdicts: Sequence[Any]) -> str:
    rows = []
    for v in verdicts:
        style = (
            "positive"
            if v.verdict == "positive transfer"
            else "negative"
            if v.verdict == "negative transfer"
            else ""
        )
        rows.append(
            f"<tr><td>{html.escape(v.key)}</td><td>{v.gain:+.3f}</td><td>[{v.ci_low:+.3f}, {v.ci_high:+.3f}]</td>"
            f"<td>{v.p_value:.3g}</td><td class='{style}'>{html.escape(v.verdict)}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("metric", "gain", "95% interval", "p", "verdict"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
