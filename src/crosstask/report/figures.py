"""The report's figures, each a function of a run's data returning a matplotlib Figure (or None when the
run has nothing to show for it). Every axes has a title and labelled axes; layouts are constrained so that
nothing overlaps; long legends go beside the plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from crosstask.report.data import RunData

MAX_LINES = 12  # curves per axes before the rest is left out (said in the title)
MAX_PANELS = 6


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from crosstask.errors import ConfigError

        raise ConfigError(
            "the report's figures need matplotlib: pip install 'crosstask[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _figure(panels: int = 1, width: float = 6.4, height: float = 3.8) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), layout="constrained", squeeze=False)
    return fig, list(axes[0])


def _lines(ax: Any, series: dict[str, tuple[list[float], list[float]]], title: str, ylabel: str) -> None:
    shown = dict(list(series.items())[:MAX_LINES])
    for label, (x, y) in shown.items():
        ax.plot(x, y, label=label, linewidth=1.4, marker="o" if len(x) < 15 else None, markersize=3)
    more = f" (first {MAX_LINES} of {len(series)})" if len(series) > MAX_LINES else ""
    ax.set_title(title + more)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _series(records: Sequence[dict[str, Any]], prefix: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, int | float) and value is not None:
                xs, ys = out.setdefault(key[len(prefix) :], ([], []))
                xs.append(record["step"])
                ys.append(value)
    return out


def learning_curves(run: RunData) -> Any:
    if not run.train and not run.evaluations:
        return None
    fig, (left, right) = _figure(2)
    losses = {
        **_series(run.train, "loss/"),
        **{f"{k} (penalty)": v for k, v in _series(run.train, "penalty/").items()},
    }
    _lines(left, losses, "training losses per objective", "loss")
    metrics = {
        k: v
        for k, v in _series(run.evaluations, "").items()
        if k.count("/") == 2 and not k.startswith("validator/")
    }
    _lines(right, metrics, "evaluation per domain / task / metric", "value")
    return fig


def weights(run: RunData) -> Any:
    series = _series(run.train, "weight/")
    if not series:
        return None
    fig, (ax,) = _figure()
    _lines(
        ax,
        series,
        f"weights applied by '{run.summary.get('weighting', '?')}' (mean per logged window)",
        "weight",
    )
    return fig


def gradient_conflict(run: RunData) -> Any:
    lines = run.monitors.get("gradient_conflict")
    report = run.diagnostics.get("gradient_conflict")
    if not lines or not report:
        return None
    fig, (left, right) = _figure(2)
    series = {
        k: v for k, v in _series(lines, "conflict/").items() if k in ("fraction", "mean_cosine", "min_cosine")
    }
    _lines(left, series, "gradient conflict over training", "value")
    _heatmap(
        right,
        _matrix(report["cosine"]["mean"]),
        report["names"],
        "mean gradient cosine",
        "cosine",
        symmetric=True,
    )
    return fig


def _matrix(values: Any) -> np.ndarray:
    """A saved matrix as floats (a value saved as null, non-finite when measured, becomes NaN)."""
    return np.asarray([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def _heatmap(
    ax: Any, matrix: np.ndarray, names: list[str], title: str, label: str, symmetric: bool = False
) -> None:
    finite = np.abs(matrix[np.isfinite(matrix)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = ax.imshow(
        matrix, cmap="RdBu_r", vmin=-limit if symmetric else None, vmax=limit if symmetric else None
    )
    ticks = range(len(names))
    ax.set_xticks(list(ticks), names, rotation=90 if len(names) > 6 else 0, fontsize=7)
    ax.set_yticks(list(ticks), names, fontsize=7)
    ax.set_title(title)
    ax.set_xlabel("objective j")
    ax.set_ylabel("objective i")
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.8)
    if len(names) <= 10:
        for i in ticks:
            for j in ticks:
                dark = abs(matrix[i, j]) > 0.6 * limit
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if dark else "black",
                )


def task_affinity(run: RunData) -> Any:
    report = run.diagnostics.get("task_affinity")
    if not report:
        return None
    fig, (left, right) = _figure(2)
    lookahead = _matrix(report["lookahead"]["mean"])
    off = lookahead - np.diag(np.diag(lookahead))
    _heatmap(
        left,
        off,
        report["names"],
        "lookahead affinity i → j (TAG; diagonal left out)",
        "1 − L_j after / before",
        True,
    )
    _heatmap(
        right,
        _matrix(report["cosine"]["mean"]),
        report["names"],
        "gradient cosine on the parameters",
        "cosine",
        True,
    )
    if run.grouping:
        groups = "  ".join("{" + ", ".join(g) + "}" for g in run.grouping["groups"])
        fig.suptitle(f"grouping for a budget of {run.grouping['budget']}: {groups}", fontsize=9)
    return fig


def gates(run: RunData) -> Any:
    usage = (run.interpret or {}).get("gate_usage")
    if not usage:
        return None
    domain, tasks = next(iter(usage.items()))
    fig, (ax,) = _figure(width=7.0)
    width = 0.8 / len(tasks)
    for k, (task, row) in enumerate(tasks.items()):
        positions = np.arange(len(row["mean"])) + k * width
        ax.bar(
            positions,
            row["mean"],
            width,
            yerr=row["std"],
            label=f"{task} (entropy {row['entropy']:.2f})",
            capsize=2,
        )
    ax.set_xticks(np.arange(len(next(iter(tasks.values()))["mean"])) + 0.4 - width / 2)
    ax.set_xticklabels([f"expert {e}" for e in range(len(next(iter(tasks.values()))["mean"]))], fontsize=7)
    ax.set_title(f"gate usage per task on '{domain}' (mean ± std over the samples)")
    ax.set_xlabel("expert")
    ax.set_ylabel("mean gate weight")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def embeddings(run: RunData) -> Any:
    interpret = run.interpret or {}
    panels = [(k, interpret.get(k)) for k in ("embedding_before", "embedding") if interpret.get(k)]
    if not panels:
        return None
    fig, axes = _figure(2 * len(panels), width=4.6, height=4.2)
    for p, (which, embedding) in enumerate(panels):
        title = "before (--against run)" if which == "embedding_before" else "this run"
        by_domain, by_class = axes[2 * p], axes[2 * p + 1]
        task = next((t for d in embedding.values() for t in d["labels"]), None)
        for domain, points in embedding.items():
            xy = np.asarray(points["xy"])
            by_domain.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.6, label=domain)
        for points in embedding.values():
            xy = np.asarray(points["xy"])
            labels = points["labels"].get(task) if task else None
            if labels is not None:
                by_class.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.6, c=labels, cmap="tab10")
        for ax, colour in ((by_domain, "domain"), (by_class, f"class of '{task}'")):
            ax.set_title(f"{title}: coloured by {colour}", fontsize=9)
            ax.set_xlabel("embedding 1")
            ax.set_ylabel("embedding 2")
        by_domain.legend(fontsize=7, markerscale=2, frameon=False)
    return fig


def per_class_change(run: RunData) -> Any:
    interpret = run.interpret or {}
    values = interpret.get("per_class_change") or interpret.get("per_class_accuracy")
    if not values:
        return None
    changed = "per_class_change" in interpret
    panels = [(d, t, c) for d, tasks in values.items() for t, c in tasks.items() if c][:MAX_PANELS]
    if not panels:
        return None
    fig, axes = _figure(len(panels), width=4.2)
    for ax, (domain, task, classes) in zip(axes, panels, strict=True):
        keys = list(classes)
        heights = [classes[k] for k in keys]
        colours = ["tab:green" if h >= 0 else "tab:red" for h in heights] if changed else "tab:blue"
        ax.bar(range(len(keys)), heights, color=colours)
        ax.set_xticks(range(len(keys)), keys, fontsize=7)
        ax.set_title(f"{domain}/{task}", fontsize=9)
        ax.set_xlabel("class")
        ax.set_ylabel("accuracy change (points)" if changed else "accuracy %")
        ax.axhline(0, color="black", linewidth=0.6)
    fig.suptitle(
        f"per-class accuracy change from {interpret.get('against')}" if changed else "per-class accuracy",
        fontsize=9,
    )
    return fig


def attributions(run: RunData) -> Any:
    data = (run.interpret or {}).get("attributions")
    if not data:
        return None
    inputs = np.asarray(data["inputs"])
    heads = list(data["integrated_gradients"])[:4]
    n = min(len(inputs), 4)
    plt = _pyplot()
    fig, axes = plt.subplots(
        n, 1 + len(heads), figsize=(2.2 * (1 + len(heads)), 2.2 * n), layout="constrained", squeeze=False
    )
    for i in range(n):
        image = inputs[i].reshape(-1, *inputs[i].shape[-2:]).mean(0)
        axes[i][0].imshow(image, cmap="gray")
        axes[i][0].set_title(f"input {i}", fontsize=8)
        for h, head in enumerate(heads):
            attribution = np.asarray(data["integrated_gradients"][head][i])
            attribution = attribution.reshape(-1, *attribution.shape[-2:]).sum(0)
            limit = float(np.abs(attribution).max()) or 1.0
            axes[i][h + 1].imshow(attribution, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[i][h + 1].set_title(f"'{head}' head", fontsize=8)
        for ax in axes[i]:
            ax.set_xlabel("x (pixel)", fontsize=6)
            ax.set_ylabel("y (pixel)", fontsize=6)
            ax.tick_params(labelsize=5)
    fig.suptitle(
        f"integrated gradients per task head on '{data['domain']}' (red: for the predicted class)", fontsize=9
    )
    return fig


def confusion(matrices: dict[str, np.ndarray]) -> Any:
    """Confusion matrices (rows: true class, columns: predicted), one panel per domain/task."""
    if not matrices:
        return None
    panels = list(matrices.items())[:MAX_PANELS]
    fig, axes = _figure(len(panels), width=4.0, height=3.8)
    for ax, (key, matrix) in zip(axes, panels, strict=True):
        image = ax.imshow(matrix, cmap="Blues")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="samples")
    return fig


def compare_curves(runs: Sequence[RunData], metric: str) -> Any:
    fig, (ax,) = _figure(width=7.0)
    series = {}
    for run in runs:
        points = [(r["step"], r[metric]) for r in run.evaluations if isinstance(r.get(metric), int | float)]
        if points:
            series[run.name] = ([p[0] for p in points], [p[1] for p in points])
    if not series:
        return None
    _lines(ax, series, f"{metric} per run", metric.rsplit("/", 1)[-1])
    return fig


RUN_FIGURES: dict[str, Callable[[RunData], Any]] = {
    "learning_curves": learning_curves,
    "weights": weights,
    "gradient_conflict": gradient_conflict,
    "task_affinity": task_affinity,
    "gates": gates,
    "embeddings": embeddings,
    "per_class": per_class_change,
    "attributions": attributions,
}
