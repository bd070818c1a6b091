"""Benchmark records, published numbers, and the JSON + Markdown result files.

Every measured number is one record::

    {"benchmark", "method", "metric", "value", "std", "seeds", "higher_is_better", "published", "published_source"}

``published`` comes from ``benchmarks/published.yaml`` (null where nothing was published).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class Record:
    benchmark: str
    method: str
    metric: str
    value: float
    std: float | None
    seeds: list[int]
    higher_is_better: bool
    published: float | None = None
    published_source: str | None = None
    notes: str | None = field(default=None)

    @classmethod
    def measured(
        cls,
        benchmark: str,
        method: str,
        metric: str,
        values: list[float],
        seeds: list[int],
        higher_is_better: bool,
        notes: str | None = None,
    ) -> Record:
        value = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
        published = lookup_published(benchmark, method, metric)
        return cls(
            benchmark,
            method,
            metric,
            round(value, 4),
            None if std is None else round(std, 4),
            list(seeds),
            higher_is_better,
            published.get("value"),
            published.get("source"),
            notes,
        )


def lookup_published(benchmark: str, method: str, metric: str) -> dict[str, Any]:
    table = yaml.safe_load((HERE / "published.yaml").read_text()) or {}
    for entry in table.get(benchmark, []):
        if entry["method"] == method and entry["metric"] == metric:
            return entry
    return {}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(
    suite: str, records: list[Record], options: dict[str, Any], keep_other_methods: bool = False
) -> tuple[Path, Path]:
    """Write ``<suite>.json`` and ``.md``. With ``keep_other_methods`` (a run of some methods only), the
    records of the other methods already in the file stay, and ``options["kept"]`` names them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{suite}.json"
    rows = [asdict(r) for r in records]
    if keep_other_methods and json_path.exists():
        measured = {r["method"] for r in rows}
        kept = [r for r in json.loads(json_path.read_text())["records"] if r["method"] not in measured]
        if kept:
            options = {**options, "kept": sorted({r["method"] for r in kept})}
            rows += kept
    payload = {
        "suite": suite.removesuffix(".quick"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "options": options,
        "records": rows,
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path = RESULTS / f"{suite}.md"
    md_path.write_text(markdown(payload))
    return json_path, md_path


def _number(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        f"# Benchmark suite `{payload['suite']}`",
        "",
        f"Measured {payload['date']} on {m['cpus']} CPU(s) ({m['processor']}), torch {m['torch']}"
        + (f", {m['cuda']}" if m.get("cuda") else ", no GPU")
        + f"; options {payload['options']}.",
        "",
        "| benchmark | method | metric | crosstask (mean ± std) | seeds | published | source | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        arrow = "↑" if r["higher_is_better"] else "↓"
        lines.append(
            f"| {r['benchmark']} | {r['method']} | {r['metric']} {arrow} | {_number(r['value'], r['std'])} | "
            f"{len(r['seeds'])} | {_number(r['published'])} | {r['published_source'] or '-'} | {r.get('notes') or ''} |"
        )
    return "\n".join(lines) + "\n"
