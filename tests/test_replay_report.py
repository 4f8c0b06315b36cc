"""The evidence report of a validation replay, written from real runs of real scenario files."""

from __future__ import annotations

import csv
import json
import re
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import coldwatch
from coldwatch.replay.report import SCHEMA, Provenance, ReportFiles, write_report
from coldwatch.replay.report_plot import BUCKETS, decimate
from coldwatch.replay.runner import ScenarioResult, run_scenario
from coldwatch.replay.scenario import load_scenario

EXECUTED_AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TEMP_TEXT = "A temperature above the alert limit raises an alert alarm."

PASSING = f"""
name: incubator-excursion
title: Incubator temperature excursion is alarmed
description: |
  Reviewer note: <script>alert("x")</script> & more.
requirements:
  URS-TEMP-01: {TEMP_TEXT}
  URS-CO2-02: CO2 within its band raises no alarm.
duration: 3h
devices:
  - {{id: inc-1, kind: incubator, site: s1, area: a1}}
timeline:
  inc-1:
    interval: 10s
    metrics:
      temp_c:
        - hold: {{value: 37.0, for: 1h}}
        - ramp: {{to: 38.5, over: 10m}}
        - hold: {{for: 20m}}
        - step: {{to: 37.0, for: 1h30m}}
      co2_pct:
        - noise: {{mean: 5.0, sd: 0.05, seed: 3, for: 3h}}
    outages:
      - {{at: 2h, for: 10m}}
actions:
  - at: 1h40m
    acknowledge: {{device: inc-1, rule: temp_c/high, user: alice, reason: checked the incubator}}
expect:
  - id: URS-TEMP-01
    title: Alert raised on the excursion
    device: inc-1
    rule: temp_c/high
    severity: alert
    raised_within: [1h, 1h10m]
  - id: URS-CO2-02
    device: inc-1
    rule: co2_pct/low
    never: true
"""

# URS-TEMP-04 is deliberately wrong: a ramp to 38 C does cross the 37.5 C alert limit.
# The acknowledgement at 10 min finds no open alarm: a run error.
FAILING = f"""
name: incubator-ramp-wrong
title: A deliberately wrong expectation
requirements:
  URS-TEMP-01: {TEMP_TEXT}
  URS-TEMP-04: A ramp to 38.0 C never raises the high temperature alarm.
duration: 2h
devices:
  - {{id: inc-2, kind: incubator, site: s1, area: a1}}
timeline:
  inc-2:
    interval: 10s
    metrics:
      temp_c:
        - hold: {{value: 37.0, for: 30m}}
        - ramp: {{to: 38.0, over: 20m}}
        - hold: {{for: 1h10m}}
actions:
  - at: 10m
    acknowledge: {{device: inc-2, rule: temp_c/low, user: bob, reason: nothing to see}}
expect:
  - id: URS-TEMP-01
    device: inc-2
    rule: temp_c/high
    severity: alert
    raised_within: [30m, 1h]
  - id: URS-TEMP-04
    title: No alarm on a slow ramp
    device: inc-2
    rule: temp_c/high
    never: true
"""

LONG = """
name: thirty-days
duration: 30d
devices:
  - {id: inc-3, kind: incubator, site: s1, area: a1}
timeline:
  inc-3:
    interval: 1s
    metrics:
      temp_c:
        - noise: {mean: 37.0, sd: 0.05, seed: 1, for: 30d}
    outages:
      - {at: 15d, for: 3h}
    points:
      - {at: 10d, values: {temp_c: 39.9}}
      - {at: 20d, values: {temp_c: 34.1}}
expect:
  - id: URS-LONG-01
    device: inc-3
    rule: temp_c/high
    count: 0
"""


@dataclass(frozen=True)
class Written:
    """Scenario results and the report written from them."""

    results: list[ScenarioResult]
    files: ReportFiles


def _run(directory: Path, name: str, text: str) -> ScenarioResult:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return run_scenario(load_scenario(path))


def _provenance() -> Provenance:
    return Provenance.create(
        executed_at=EXECUTED_AT, command="coldwatch replay pass.yaml fail.yaml --report out"
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A passing and a failing scenario, replayed and reported once for the module."""
    directory = tmp_path_factory.mktemp("scenarios")
    results = [_run(directory, "pass", PASSING), _run(directory, "fail", FAILING)]
    return Written(results, write_report(results, directory / "report", provenance=_provenance()))


def test_runs_behave_as_the_scenarios_intend(written: Written) -> None:
    """The passing scenario passes; the failing one fails one expectation and has a run error."""
    passing, failing = written.results
    assert passing.passed
    assert [r.status for r in failing.results] == ["pass", "fail"]
    assert len(failing.errors) == 1


def test_junit_counts_failures_and_errors(written: Written) -> None:
    """JUnit XML parses, counts the failed expectation and the run error, and names the requirement."""
    root = ET.parse(written.files.junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "1", "1")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"incubator-excursion", "incubator-ramp-wrong"}
    assert suites["incubator-excursion"].findall("testcase/failure") == []
    failing = suites["incubator-ramp-wrong"]
    assert (failing.get("tests"), failing.get("failures"), failing.get("errors")) == ("3", "1", "1")
    failed = [c for c in failing.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["URS-TEMP-04: No alarm on a slow ramp"]
    assert failed[0].get("classname") == "incubator-ramp-wrong"
    failure = failed[0].find("failure")
    assert failure is not None
    assert "must never be raised" in (failure.get("message") or "")
    errors = failing.findall("testcase/error")
    assert len(errors) == 1
    assert "no open alarm" in (errors[0].get("message") or "")
    props = {p.get("name"): p.get("value") for p in failing.iter("property")}
    assert props["scenario_sha256"] == written.results[1].loaded.scenario_sha256


def test_not_run_expectation_is_a_failure(written: Written, tmp_path: Path) -> None:
    """An expectation that was not run is a JUnit failure and a NOT RUN in every file, never a pass."""
    passing = written.results[0]
    not_run = replace(
        passing, results=[replace(r, status="not_run", detail="not judged") for r in passing.results]
    )
    files = write_report([not_run], tmp_path, provenance=_provenance())
    root = ET.parse(files.junit).getroot()
    assert root.get("failures") == str(len(passing.results))
    assert all(c.find("failure") is not None for c in root.iter("testcase"))
    assert root.find("testsuite/testcase/skipped") is None
    data = json.loads(files.json.read_text(encoding="utf-8"))
    assert data["summary"]["passed"] is False
    assert data["scenarios"][0]["passed"] is False
    with files.traceability.open(encoding="utf-8", newline="") as f:
        assert {row["result"] for row in csv.DictReader(f)} == {"NOT RUN"}
    assert "NOT RUN" in files.html.read_text(encoding="utf-8")


def test_json_matches_the_results(written: Written) -> None:
    """report.json carries the schema, the provenance and each scenario's verdicts, hashes and alarms."""
    data = json.loads(written.files.json.read_text(encoding="utf-8"))
    assert data["schema"] == SCHEMA
    assert data["provenance"] == {
        "coldwatch_version": coldwatch.__version__,
        "executed_at": "2026-03-02T09:30:00Z",
        "command": "coldwatch replay pass.yaml fail.yaml --report out",
    }
    assert data["summary"]["passed"] is False
    assert data["summary"]["expectations_failed"] == 1
    assert data["summary"]["run_errors"] == 1
    for scenario, result in zip(data["scenarios"], written.results, strict=True):
        assert scenario["name"] == result.loaded.name
        assert scenario["passed"] is result.passed
        assert scenario["scenario_sha256"] == result.loaded.scenario_sha256
        assert scenario["config_sha256"] == result.loaded.config_sha256
        assert scenario["mode"] == result.mode
        assert scenario["readings"] == result.readings
        assert scenario["errors"] == result.errors
        assert [(e["id"], e["status"], e["alarm_ids"]) for e in scenario["expectations"]] == [
            (r.expectation.id, r.status, r.alarm_ids) for r in result.results
        ]
        assert [a["id"] for a in scenario["alarms"]] == [a.id for a in result.alarms]
    acked = data["scenarios"][0]["alarms"][0]
    assert (acked["rule"], acked["acknowledged_by"]) == ("high", "alice")


def test_traceability_has_a_row_per_expectation(written: Written) -> None:
    """traceability.csv lists every expectation by requirement ID, a shared requirement once per scenario."""
    with written.files.traceability.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["requirement_id"], r["scenario"], r["result"]) for r in rows] == [
        ("URS-CO2-02", "incubator-excursion", "PASS"),
        ("URS-TEMP-01", "incubator-excursion", "PASS"),
        ("URS-TEMP-01", "incubator-ramp-wrong", "PASS"),
        ("URS-TEMP-04", "incubator-ramp-wrong", "FAIL"),
    ]
    assert rows[1]["requirement"] == TEMP_TEXT
    assert rows[1]["expectation"] == "Alert raised on the excursion"
    assert rows[0]["expectation"] == "inc-1 co2_pct/low"


def test_html_is_self_contained_and_escaped(written: Written) -> None:
    """report.html names every requirement, embeds SVG plots, loads nothing and escapes scenario text."""
    html = written.files.html.read_text(encoding="utf-8")
    for requirement in ("URS-TEMP-01", "URS-CO2-02", "URS-TEMP-04"):
        assert requirement in html
    assert TEMP_TEXT in html
    assert html.count("<svg") >= 3  # temp_c and co2_pct of inc-1, temp_c of inc-2
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert not re.search(r"<(script|link|img|iframe)\b|@import|\ssrc=", html, re.IGNORECASE)
    assert "&lt;script&gt;alert(" in html
    assert "Overall verdict: FAIL" in html
    assert "@media print" in html
    assert "no open alarm" in html


def test_long_series_is_decimated_keeping_extremes(tmp_path: Path) -> None:
    """A 30-day 1 Hz series is drawn from two points per bucket, extremes kept, in a small page."""
    result = _run(tmp_path, "long", LONG)
    values = result.streams["inc-3"].values["temp_c"]
    assert len(values) == 30 * 86400
    picks = decimate(values)
    assert len(picks) <= 2 * BUCKETS
    assert {39.9, 34.1} <= set(values[picks].tolist())
    files = write_report([result], tmp_path / "report", provenance=_provenance())
    html = files.html.read_text(encoding="utf-8")
    assert files.html.stat().st_size < 2_000_000
    assert "2,592,000 readings (10,800 backfilled)" in html
    assert "backfilled (buffered)" in html


def test_decimation_keeps_short_series_whole() -> None:
    """A series of at most two points per bucket is drawn reading by reading."""
    values = np.linspace(0.0, 1.0, 2 * BUCKETS)
    assert np.array_equal(decimate(values), np.arange(2 * BUCKETS))


def test_provenance_is_kept_in_utc() -> None:
    """Provenance refuses a naive execution time and keeps an aware one in UTC."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Provenance.create(executed_at=datetime(2026, 3, 2, 9, 30), command="x")  # noqa: DTZ001 - on purpose
    local = datetime(2026, 3, 2, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    assert Provenance.create(executed_at=local, command="x").executed_at == EXECUTED_AT
    assert Provenance.create(executed_at=local, command="x").executed_at.utcoffset() == timedelta(0)
