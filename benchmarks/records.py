"""Benchmark records, published numbers, and the JSON + Markdown result files.

Every measured number is one record::

    {"benchmark", "method", "metric", "value", "std", "seeds", "higher_is_better", "published",
     "published_source", "notes", "protocol", "revisions", "config_hashes"}

``published`` comes from ``benchmarks/published.yaml`` (null where nothing was published).

``protocol`` is null when the number was measured as the published one was (or there is none to compare
with), and otherwise says how it differs: "3000 of 50000 steps", "CDAN+E; TLlib's number is plain CDAN".
Such a record keeps the published number beside it only as the published protocol's number: its
``published_source`` says so, and the Markdown table marks it "(other protocol)". The rule is here, for
every suite: a suite passes ``protocol`` (and, when its metric is named differently from the published one,
``published_metric``) and nothing else.

``revisions`` (distinct ``{"commit", "dirty"}``) and ``config_hashes`` (one per run) say what code and which
configs the number came from: for suites that train through crosstask, those of the runs
(:mod:`benchmarks.runs`, as the runs' summaries record them; null where unknown); for the others, the code
revision at the start of the suite.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from crosstask.provenance import code_revision

if TYPE_CHECKING:
    from benchmarks.runs import RunProvenance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OTHER_PROTOCOL = "published protocol's number, not this record's"
SAME_FOR_EVERY_SEED = (
    "the same value for every seed: deterministic, or the runs share an origin (check their code revisions and "
    "config hashes)"
)


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
    protocol: str | None = None
    revisions: list[dict[str, Any] | None] = field(default_factory=list)
    config_hashes: list[str | None] = field(default_factory=list)

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
        *,
        protocol: str | None = None,
        published_metric: str | None = None,
        runs: Iterable[RunProvenance] | None = None,
    ) -> Record:
        """A record of ``values`` (one per seed): mean, std, the published number and the provenance.

        ``protocol``: how this measurement differs from the published protocol (None: it does not).
        ``published_metric``: the metric name under which the published number is listed, when it differs
        from ``metric``. ``runs``: the runs the values came from (default: the code revision of this suite).
        """
        value = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
        if len(values) > 1 and len(set(values)) == 1 and value == value:
            # three CDAN seeds once ended at exactly the same accuracy (results/cdan_note.md): say so
            same = SAME_FOR_EVERY_SEED
            notes = f"{notes}; {same}" if notes else same
        published, source = published_number(benchmark, method, published_metric or metric, protocol)
        revisions, hashes = provenance_of(runs)
        return cls(
            benchmark,
            method,
            metric,
            round(value, 4),
            None if std is None else round(std, 4),
            list(seeds),
            higher_is_better,
            published,
            source,
            notes,
            protocol,
            revisions,
            hashes,
        )


def published_number(
    benchmark: str, method: str, metric: str, protocol: str | None = None
) -> tuple[float | None, str | None]:
    """The published value and its source; under another ``protocol`` the source says it is the published
    protocol's number and what differs."""
    entry = lookup_published(benchmark, method, metric)
    value, source = entry.get("value"), entry.get("source")
    if value is not None and protocol:
        source = f"{OTHER_PROTOCOL} (this record: {protocol}); {source}"
    return value, source


@functools.lru_cache(maxsize=1)
def suite_revision() -> dict[str, Any]:
    """The code revision, taken once per process (``benchmarks.run`` takes it when the suite starts)."""
    return code_revision()


def provenance_of(
    runs: Iterable[RunProvenance] | None,
) -> tuple[list[dict[str, Any] | None], list[str | None]]:
    """Distinct revisions (in order of first use) and one config hash per run; without runs, this suite's
    revision and no hashes."""
    if runs is None:
        return [dict(suite_revision())], []
    revisions: list[dict[str, Any] | None] = []
    hashes: list[str | None] = []
    for run in runs:
        revision = dict(run.revision) if run.revision is not None else None
        if revision not in revisions:
            revisions.append(revision)
        hashes.append(run.config_hash)
    return revisions, hashes


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
        "revision": suite_revision(),
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


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def revision_label(revision: dict[str, Any] | None) -> str:
    """``e5e8a4e``, ``e5e8a4e+dirty`` (``+dirty?`` when unknown), or ``unknown``."""
    if not revision or not revision.get("commit"):
        return "unknown"
    dirty = revision.get("dirty")
    return str(revision["commit"])[:7] + ("" if dirty is False else "+dirty" if dirty else "+dirty?")


def code_cell(record: dict[str, Any]) -> str:
    """The record's code revisions; a record from before records carried them says so."""
    if "revisions" not in record:
        return "not recorded"
    revisions = record["revisions"] or [None]
    return ", ".join(revision_label(r) for r in revisions)


def config_cell(record: dict[str, Any]) -> str:
    hashes = record.get("config_hashes")
    if hashes is None:
        return "not recorded"
    return ", ".join((h or "unknown")[:8] for h in hashes) or "-"


def published_cell(record: dict[str, Any]) -> str:
    text = _number(record.get("published"))
    if record.get("published") is not None and record.get("protocol"):
        text += " (other protocol)"
    return text


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    revision = payload.get("revision")
    lines = [
        f"# Benchmark suite `{payload['suite']}`",
        "",
        f"Measured {payload['date']} on {m['cpus']} CPU(s) ({m['processor']}), torch {m['torch']}"
        + (f", {m['cuda']}" if m.get("cuda") else ", no GPU")
        + f"; options {payload['options']}"
        + (f"; code {revision_label(revision)}" if revision is not None else "")
        + ".",
        "",
        "`protocol`: how a record's measurement differs from the published protocol (empty: it does not); a "
        'published number beside such a record is the published protocol\'s, marked "(other protocol)". '
        "`code`: the commit(s) of the runs behind a record (`+dirty`: with uncommitted changes); `configs`: "
        "their config hashes (crosstask.provenance.config_hash).",
        "",
        "| benchmark | method | metric | crosstask (mean ± std) | seeds | published | source | protocol | "
        "notes | code | configs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        arrow = "↑" if r["higher_is_better"] else "↓"
        cells = [
            r["benchmark"],
            r["method"],
            f"{r['metric']} {arrow}",
            _number(r["value"], r["std"]),
            len(r["seeds"]),
            published_cell(r),
            r.get("published_source") or "-",
            r.get("protocol") or "",
            r.get("notes") or "",
            code_cell(r),
            config_cell(r),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
