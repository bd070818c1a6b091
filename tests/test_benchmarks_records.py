"""benchmarks.records: protocol, published numbers under another protocol, provenance, JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import records
from benchmarks.records import OTHER_PROTOCOL, Record, markdown, write_results
from benchmarks.runs import RunProvenance

PUBLISHED_METRIC = "usps_test accuracy % (best of 20 epoch evaluations)"


@pytest.fixture(autouse=True)
def fixed_revision(monkeypatch: pytest.MonkeyPatch) -> dict:
    revision = {"commit": "c" * 40, "dirty": False}
    monkeypatch.setattr(records, "suite_revision", lambda: dict(revision))
    return revision


def test_same_protocol_keeps_the_published_number_as_it_is() -> None:
    record = Record.measured("mnist_usps", "dann", PUBLISHED_METRIC, [91.0, 92.0], [0, 1], True)
    assert record.published == 91.7 and record.protocol is None
    assert not record.published_source.startswith(OTHER_PROTOCOL)


def test_another_protocol_keeps_the_number_only_as_the_published_protocols() -> None:
    record = Record.measured(
        "mnist_usps",
        "cdan",
        "usps_test accuracy % (best of 10 evaluations, 3000 steps)",
        [93.0],
        [0],
        True,
        protocol="3000 of 50000 steps; CDAN+E; TLlib's number is plain CDAN",
        published_metric=PUBLISHED_METRIC,
    )
    assert record.published == 96.0
    assert record.published_source.startswith(OTHER_PROTOCOL)
    assert (
        "3000 of 50000 steps" in record.published_source
        and "Transfer-Learning-Library" in record.published_source
    )
    table = markdown(payload([record]))
    assert "96.00 (other protocol)" in table and "CDAN+E" in table


def test_no_published_number() -> None:
    record = Record.measured("mnist_usps", "coral", PUBLISHED_METRIC, [78.0], [0], True, protocol="x")
    assert record.published is None and record.published_source is None
    assert "| - |" in markdown(payload([record]))


def test_provenance_without_runs_is_the_suites_revision(fixed_revision: dict) -> None:
    record = Record.measured("overhead", "crosstask", "ms per step", [1.0], [0], False)
    assert record.revisions == [fixed_revision] and record.config_hashes == []
    assert "cccccc" in markdown(payload([record]))


def test_provenance_of_runs() -> None:
    runs = [
        RunProvenance("r/a", {"commit": "a" * 40, "dirty": False}, "1" * 16, True),
        RunProvenance("r/b", {"commit": "a" * 40, "dirty": False}, "2" * 16, False),
        RunProvenance("r/c", {"commit": "b" * 40, "dirty": True}, "3" * 16, False),
        RunProvenance("r/d", None, None, True),
    ]
    record = Record.measured("b", "m", "metric", [1.0, 2.0, 3.0, 4.0], [0, 1, 2, 3], True, runs=runs)
    assert record.revisions == [runs[0].revision, runs[2].revision, None]
    assert record.config_hashes == ["1" * 16, "2" * 16, "3" * 16, None]
    row = markdown(payload([record])).splitlines()[-1]
    assert "aaaaaaa, bbbbbbb+dirty, unknown" in row
    assert "11111111, 22222222, 33333333, unknown" in row


def test_rows_from_before_provenance_say_so() -> None:
    old = {
        "benchmark": "b",
        "method": "m",
        "metric": "x",
        "value": 1.0,
        "std": None,
        "seeds": [0],
        "higher_is_better": True,
        "published": None,
        "published_source": None,
        "notes": None,
    }
    data = payload([])
    data["records"] = [old]
    assert markdown(data).splitlines()[-1].endswith("| not recorded | not recorded |")


def test_write_results_json_and_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "RESULTS", tmp_path)
    first = Record.measured("b", "kept", "x", [1.0], [0], True)
    write_results("suite", [first], {"seeds": [0]})
    second = Record.measured("b", "new", "x", [2.0], [0], True, protocol="shorter")
    json_path, md_path = write_results("suite", [second], {"seeds": [0]}, keep_other_methods=True)
    data = json.loads(json_path.read_text())
    assert data["revision"] == {"commit": "c" * 40, "dirty": False}
    assert [r["method"] for r in data["records"]] == ["new", "kept"]
    assert data["records"][0]["protocol"] == "shorter" and "revisions" in data["records"][0]
    assert data["options"]["kept"] == ["kept"]
    assert "| shorter |" in md_path.read_text()


def test_pipes_in_cells_do_not_break_the_table() -> None:
    record = Record.measured("b", "m", "x", [1.0], [0], True, "a | b", protocol="c | d")
    row = markdown(payload([record])).splitlines()[-1]
    assert row.count("|") == 12


def payload(rows: list[Record]) -> dict:
    from dataclasses import asdict

    return {
        "suite": "s",
        "date": "today",
        "machine": {"cpus": 1, "processor": "x", "torch": "2", "cuda": None},
        "options": {},
        "revision": {"commit": "c" * 40, "dirty": False},
        "records": [asdict(r) for r in rows],
    }


def test_the_same_value_for_every_seed_is_pointed_out() -> None:
    record = Record.measured("b", "m", "x", [93.0742] * 3, [0, 1, 2], True, "per seed ...")
    assert record.std == 0.0 and records.SAME_FOR_EVERY_SEED in record.notes
    assert record.notes.startswith("per seed ...")
    assert Record.measured("b", "m", "x", [93.0742], [0], True).notes is None
    assert Record.measured("b", "m", "x", [1.0, 2.0], [0, 1], True).notes is None
