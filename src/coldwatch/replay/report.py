"""The evidence report of a validation replay: HTML for people, JSON, JUnit XML and CSV for tools.

``write_report`` writes four files into one directory:

- ``report.html``: one self-contained page (inline CSS and SVG, nothing fetched) to read or
  print: the overall verdict, the provenance, the traceability matrix and, per scenario,
  its expectations, run errors, alarms and a plot of every signal against its limits;
- ``report.json``: the same facts, schema ``coldwatch.replay.report/1``;
- ``junit.xml``: a test case per expectation; an expectation that was not run, and every
  run error, is a failure or an error, never a pass or a skip;
- ``traceability.csv``: requirement -> scenario -> expectation -> result.

Scenario text is user input: the page is rendered with autoescaping, and text that XML
cannot hold is replaced before it reaches the JUnit file.
"""

from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from coldwatch import __version__
from coldwatch.replay.report_plot import scenario_plots
from coldwatch.replay.runner import AlarmRecord, ExpectationResult, ScenarioResult, format_offset

__all__ = [
    "SCHEMA",
    "STATUS_TEXT",
    "TRACE_COLUMNS",
    "Provenance",
    "ReportFiles",
    "junit_tree",
    "render_html",
    "report_data",
    "trace_rows",
    "write_report",
]

SCHEMA = "coldwatch.replay.report/1"
STATUS_TEXT = {"pass": "PASS", "fail": "FAIL", "not_run": "NOT RUN"}
TRACE_COLUMNS = (
    "requirement_id",
    "requirement",
    "scenario",
    "scenario_path",
    "expectation",
    "label",
    "result",
    "detail",
)
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Provenance:
    """What ran, when and how: the same on every host (no host, user or environment)."""

    executed_at: datetime  # timezone-aware; kept in UTC
    command: str
    coldwatch_version: str

    def __post_init__(self) -> None:
        if self.executed_at.utcoffset() is None:
            raise ValueError("executed_at must be timezone-aware")
        object.__setattr__(self, "executed_at", self.executed_at.astimezone(UTC))

    @classmethod
    def create(cls, *, executed_at: datetime, command: str) -> Provenance:
        """Provenance of this installation of coldwatch."""
        return cls(executed_at=executed_at, command=command, coldwatch_version=__version__)

    def as_dict(self) -> dict[str, str]:
        """The JSON form: the execution time in ISO 8601 UTC (``Z``)."""
        return {
            "coldwatch_version": self.coldwatch_version,
            "executed_at": self.executed_at.isoformat().replace("+00:00", "Z"),
            "command": self.command,
        }


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """The files of one report."""

    html: Path
    json: Path
    junit: Path
    traceability: Path

    def __str__(self) -> str:
        return ", ".join(str(p) for p in (self.html, self.json, self.junit, self.traceability))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _expectation(result: ScenarioResult, judged: ExpectationResult) -> dict[str, Any]:
    exp = judged.expectation
    return {
        "id": exp.id,
        "requirement": result.loaded.scenario.requirements.get(exp.id),
        "title": exp.title,
        "label": exp.label,
        "status": judged.status,
        "detail": judged.detail,
        "alarm_ids": list(judged.alarm_ids),
    }


def _alarm(alarm: AlarmRecord) -> dict[str, Any]:
    return {**asdict(alarm), "value": _finite(alarm.value), "limit": _finite(alarm.limit)}


def _scenario(result: ScenarioResult) -> dict[str, Any]:
    loaded, scenario = result.loaded, result.loaded.scenario
    return {
        "name": loaded.name,
        "title": scenario.title,
        "description": scenario.description,
        "path": loaded.path,
        "scenario_sha256": loaded.scenario_sha256,
        "config_sha256": loaded.config_sha256,
        "mode": result.mode,
        "start": scenario.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "duration_s": scenario.duration,
        "readings": result.readings,
        "elapsed_s": _finite(result.elapsed_s),
        "passed": result.passed,
        "errors": list(result.errors),
        "expectations": [_expectation(result, r) for r in result.results],
        "alarms": [_alarm(a) for a in result.alarms],
    }


def report_data(results: list[ScenarioResult], provenance: Provenance) -> dict[str, Any]:
    """The whole report as JSON-ready data; the HTML page shows exactly this."""
    statuses = [r.status for result in results for r in result.results]
    return {
        "schema": SCHEMA,
        "provenance": provenance.as_dict(),
        "summary": {
            # No scenario at all proves nothing: that is no pass.
            "passed": bool(results) and all(r.passed for r in results),
            "scenarios": len(results),
            "scenarios_passed": sum(r.passed for r in results),
            "expectations": len(statuses),
            "expectations_passed": statuses.count("pass"),
            "expectations_failed": statuses.count("fail"),
            "expectations_not_run": statuses.count("not_run"),
            "run_errors": sum(len(r.errors) for r in results),
        },
        "scenarios": [_scenario(r) for r in results],
    }


def _natural(text: str) -> tuple[int | str, ...]:
    """Sort key that puts URS-2 before URS-10."""
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(re.split(r"(\d+)", text)))


def trace_rows(results: list[ScenarioResult]) -> list[dict[str, str]]:
    """The traceability matrix: a row per expectation, by requirement ID, then scenario order."""
    rows: list[tuple[tuple[int | str, ...], int, int, dict[str, str]]] = []
    for n, result in enumerate(results):
        for k, judged in enumerate(result.results):
            exp = judged.expectation
            row = {
                "requirement_id": exp.id,
                "requirement": result.loaded.scenario.requirements.get(exp.id, ""),
                "scenario": result.loaded.name,
                "scenario_path": result.loaded.path,
                "expectation": exp.title or exp.label,
                "label": exp.label,
                "result": STATUS_TEXT[judged.status],
                "status": judged.status,
                "detail": judged.detail,
            }
            rows.append((_natural(exp.id), n, k, row))
    return [row for *_, row in sorted(rows, key=lambda item: item[:3])]


def _xml(text: object) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def _node(parent: ET.Element, tag: str, text: str | None = None, **attrs: object) -> ET.Element:
    node = ET.SubElement(parent, tag, {k: _xml(v) for k, v in attrs.items()})
    if text is not None:
        node.text = _xml(text)
    return node


def junit_tree(results: list[ScenarioResult], provenance: Provenance) -> ET.Element:
    """JUnit XML: a suite per scenario, a case per expectation and per run error."""
    root = ET.Element("testsuites", {"name": "coldwatch replay"})
    stamp = provenance.executed_at.strftime("%Y-%m-%dT%H:%M:%S")
    for result in results:
        name = result.loaded.name
        failures = sum(not r.passed for r in result.results)
        suite = _node(
            root,
            "testsuite",
            name=name,
            tests=len(result.results) + len(result.errors),
            failures=failures,
            errors=len(result.errors),
            skipped=0,
            time=f"{result.elapsed_s:.3f}",
            timestamp=stamp,
        )
        properties = _node(suite, "properties")
        for key, value in (
            *provenance.as_dict().items(),
            ("scenario_path", result.loaded.path),
            ("scenario_sha256", result.loaded.scenario_sha256),
            ("config_sha256", result.loaded.config_sha256),
            ("mode", result.mode),
            ("readings", result.readings),
        ):
            _node(properties, "property", name=key, value=value)
        for judged in result.results:
            exp = judged.expectation
            title = f"{exp.id}: {exp.title or exp.label}"
            case = _node(suite, "testcase", classname=name, name=title, time="0")
            if not judged.passed:
                requirement = result.loaded.scenario.requirements.get(exp.id)
                text = judged.detail + (f"\nrequirement {exp.id}: {requirement}" if requirement else "")
                _node(
                    case,
                    "failure",
                    text,
                    message=f"{STATUS_TEXT[judged.status]}: {judged.detail}",
                    type=judged.status,
                )
        for n, error in enumerate(result.errors, 1):
            case = _node(suite, "testcase", classname=name, name=f"run error {n}", time="0")
            _node(case, "error", error, message=error, type="run_error")
    for total in ("tests", "failures", "errors"):
        root.set(total, str(sum(int(s.get(total, "0")) for s in root)))
    root.set("time", f"{sum(r.elapsed_s for r in results):.3f}")
    return root


def _write_junit(root: ET.Element, path: Path) -> None:
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def _write_trace(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=TRACE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coldwatch validation replay: {{ verdict }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#111;
 max-width:76em;margin:1.5em auto;padding:0 1em}
h1{font-size:1.6em;margin:0 0 .4em}
h2{font-size:1.3em;margin:1.8em 0 .5em;border-bottom:2px solid #333}
h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;width:100%;margin:.4em 0 1em;font-size:.9em}
th,td{border:1px solid #aaa;padding:.25em .45em;text-align:left;vertical-align:top}
thead th,tbody th{background:#eee}
code,.hash{font-family:ui-monospace,Consolas,"Liberation Mono",monospace;font-size:.85em;word-break:break-all}
.badge{display:inline-block;min-width:4.2em;text-align:center;padding:.05em .4em;border-radius:3px;
 font-weight:bold;color:#fff}
.pass{background:#1a7f37}.fail{background:#c62828}.not_run{background:#8a4b00}
.banner{font-size:1.5em;padding:.3em .7em;margin:.3em 0}
.errors{border:3px solid #c62828;background:#fdecea;padding:.3em 1em;margin:.6em 0}
.errors h3{color:#c62828;margin-top:.4em}
.desc{white-space:pre-wrap}
figure{margin:.6em 0 1.4em;break-inside:avoid}
figure svg{width:100%;height:auto}
figcaption{font-size:.85em;color:#333}
@media print{
 body{max-width:none;margin:0;font-size:9.5pt}
 *{print-color-adjust:exact;-webkit-print-color-adjust:exact}
 .scenario{break-before:page}
 thead{display:table-header-group}
 tr,figure,.errors{break-inside:avoid}
 a{color:inherit;text-decoration:none}
}
</style>
</head>
<body>
{% macro badge(status) %}<span class="badge {{ status }}">{{ words[status] }}</span>{% endmacro %}
{% set s = data.summary %}
<h1>coldwatch validation replay: evidence report</h1>
<p class="banner badge {{ 'pass' if s.passed else 'fail' }}">Overall verdict: {{ verdict }}</p>
<p>{{ s.scenarios_passed }} of {{ s.scenarios }} scenario(s) passed.
Expectations: {{ s.expectations }} ({{ s.expectations_passed }} passed, {{ s.expectations_failed }} failed,
{{ s.expectations_not_run }} not run). Run errors: {{ s.run_errors }}.
{% if not s.scenarios %}No scenario was run: nothing is demonstrated.{% endif %}</p>
<h2>Provenance</h2>
<table><tbody>
<tr><th>coldwatch version</th><td>{{ data.provenance.coldwatch_version }}</td></tr>
<tr><th>Executed (UTC)</th><td>{{ executed }}</td></tr>
<tr><th>Command</th><td><code>{{ data.provenance.command }}</code></td></tr>
<tr><th>Report schema</th><td><code>{{ data.schema }}</code></td></tr>
</tbody></table>
<table>
<thead><tr><th>Scenario</th><th>File</th><th>Scenario SHA-256</th><th>Configuration SHA-256</th>
<th>Engine mode</th><th>Readings</th><th>Elapsed</th><th>Result</th></tr></thead>
<tbody>
{% for sc in data.scenarios %}
<tr><td><a href="#scenario-{{ loop.index }}">{{ sc.name }}</a></td><td><code>{{ sc.path }}</code></td>
<td class="hash">{{ sc.scenario_sha256 }}</td><td class="hash">{{ sc.config_sha256 }}</td>
<td>{{ sc.mode }}</td>
<td>{{ "{:,}".format(sc.readings) }}</td><td>{{ "%.2f"|format(sc.elapsed_s or 0) }} s</td>
<td>{{ badge('pass' if sc.passed else 'fail') }}</td></tr>
{% endfor %}
</tbody></table>
<h2>Traceability</h2>
<table>
<thead><tr><th>Requirement ID</th><th>Requirement</th><th>Scenario</th><th>Expectation</th>
<th>Result</th></tr></thead>
<tbody>
{% for row in trace %}
<tr><td>{{ row.requirement_id }}</td><td>{{ row.requirement }}</td><td>{{ row.scenario }}</td>
<td>{{ row.expectation }}</td><td>{{ badge(row.status) }}</td></tr>
{% endfor %}
</tbody></table>
{% for sc in data.scenarios %}
<section class="scenario" id="scenario-{{ loop.index }}">
<h2>{{ loop.index }}. {{ sc.title or sc.name }} {{ badge('pass' if sc.passed else 'fail') }}</h2>
<p>Scenario <code>{{ sc.name }}</code>, file <code>{{ sc.path }}</code>; starts {{ sc.start }}, lasts
{{ sc.duration_s|offset }}; {{ "{:,}".format(sc.readings) }} readings, {{ sc.mode }}.</p>
{% if sc.description %}<p class="desc">{{ sc.description }}</p>{% endif %}
{% if sc.errors %}
<div class="errors"><h3>Run errors: the scenario FAILS</h3><ul>
{% for error in sc.errors %}<li>{{ error }}</li>{% endfor %}
</ul></div>
{% endif %}
<h3>Expectations</h3>
<table>
<thead><tr><th>Requirement ID</th><th>Requirement</th><th>Expectation</th><th>Result</th><th>Detail</th>
<th>Alarms</th></tr></thead>
<tbody>
{% for e in sc.expectations %}
<tr><td>{{ e.id }}</td><td>{{ e.requirement or "" }}</td>
<td>{% if e.title %}{{ e.title }}<br>{% endif %}<code>{{ e.label }}</code></td><td>{{ badge(e.status) }}</td>
<td>{{ e.detail }}</td><td>{% for i in e.alarm_ids %}#{{ i }} {% endfor %}</td></tr>
{% endfor %}
</tbody></table>
<h3>Alarms</h3>
{% if sc.alarms %}
<table>
<thead><tr><th>#</th><th>Device</th><th>Metric/rule</th><th>Severity reached</th><th>Raised</th>
<th>Cleared</th><th>State</th><th>Acknowledged by</th><th>Late</th><th>Revoked</th><th>Detail</th>
</tr></thead>
<tbody>
{% for a in sc.alarms %}
<tr><td>{{ a.id }}</td><td>{{ a.device }}</td><td>{{ a.metric }}/{{ a.rule }}</td><td>{{ a.severity }}
{%- for sev, at in a.reached_s.items() %}<br><small>{{ sev }} at {{ at|offset }}</small>{% endfor %}</td>
<td>{{ a.raised_s|offset }}</td>
<td>{{ a.cleared_s|offset if a.cleared_s is not none else "not cleared" }}</td>
<td>{{ a.state }}</td><td>{{ a.acknowledged_by or "-" }}</td><td>{{ "yes" if a.late else "no" }}</td>
<td>{{ "yes" if a.revoked else "no" }}</td>
<td>{{ ([a.detail] + (["value %g"|format(a.value)] if a.value is not none else [])
 + (["limit %g"|format(a.limit)] if a.limit is not none else []))|select|join("; ") }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p>No alarm was raised.</p>{% endif %}
<h3>Signals</h3>
<p>Each signal against its limits (alert dashed amber, action solid red). Alarms are shaded from when
they reached each severity until cleared or the scenario end (alert amber, action red, revoked
hatched grey); alarms of the device itself, such as communication loss, are shaded on each of its
plots. Backfilled (buffered) readings are drawn in pink; a break in the line is missing readings.</p>
{% for plot in plots[loop.index0] %}
<figure>{{ plot.svg }}<figcaption>{{ plot.caption }}</figcaption></figure>
{% else %}<p>No readings to plot.</p>{% endfor %}
</section>
{% endfor %}
<p><small>coldwatch {{ data.provenance.coldwatch_version }}, report schema {{ data.schema }};
times in scenarios are offsets from each scenario's start.</small></p>
</body>
</html>
"""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["offset"] = format_offset
    return env


def render_html(
    results: list[ScenarioResult], data: dict[str, Any], trace: list[dict[str, str]], executed_at: datetime
) -> str:
    """The self-contained HTML page of the report."""
    plots = [
        # The SVG is matplotlib's own output, whose text it escapes; nothing else is marked safe.
        [{"svg": Markup(p.svg), "caption": p.caption} for p in scenario_plots(result, n)]  # noqa: S704
        for n, result in enumerate(results, 1)
    ]
    return (
        _environment()
        .from_string(_TEMPLATE)
        .render(
            data=data,
            trace=trace,
            plots=plots,
            words=STATUS_TEXT,
            verdict="PASS" if data["summary"]["passed"] else "FAIL",
            executed=executed_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    )


def write_report(results: list[ScenarioResult], out_dir: Path, *, provenance: Provenance) -> ReportFiles:
    """Write report.html, report.json, junit.xml and traceability.csv into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        html=out_dir / "report.html",
        json=out_dir / "report.json",
        junit=out_dir / "junit.xml",
        traceability=out_dir / "traceability.csv",
    )
    data = report_data(results, provenance)
    trace = trace_rows(results)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    files.json.write_text(text + "\n", encoding="utf-8")
    _write_junit(junit_tree(results, provenance), files.junit)
    _write_trace(trace, files.traceability)
    files.html.write_text(render_html(results, data, trace, provenance.executed_at), encoding="utf-8")
    return files
