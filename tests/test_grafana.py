"""Checks of the Grafana dashboards and provisioning files in grafana/.

The Prometheus dashboards are checked statically; ``panel_expressions()`` is also the list
of PromQL expressions another test runs against a real Prometheus scraping a demo-like
daemon. The SQL of the PostgreSQL dashboard (history) runs here, against a private
PostgreSQL server holding the storage schema and a few rows.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from coldwatch.pgserver import running_postgres

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES_YAML = GRAFANA / "provisioning" / "datasources" / "coldwatch.yaml"
POSTGRES_DATASOURCE_YAML = GRAFANA / "provisioning" / "datasources" / "coldwatch-postgres.yaml"
DASHBOARDS_YAML = GRAFANA / "provisioning" / "dashboards" / "coldwatch.yaml"
DEMO_CONFIG = ROOT / "config" / "demo.yaml"

PROMETHEUS = "prometheus"
# The PostgreSQL plugin's id from Grafana 10.2.3 on ("postgres" before, kept as an alias).
POSTGRES = "grafana-postgresql-datasource"
DATASOURCE_REF = {"type": PROMETHEUS, "uid": "${datasource}"}
# The history dashboard's data source variable has its own name: the dashboards' links pass
# their variables on (includeVars), and a Prometheus uid must not land in it, nor the other way.
POSTGRES_REF = {"type": POSTGRES, "uid": "${postgres}"}
HISTORY = DASHBOARDS / "coldwatch-history.json"
FILTER_VARIABLES = ("site", "area", "device")
# Metrics that carry the device labels: every selector of them must filter by the variables.
DEVICE_LABELLED = (
    "coldwatch_readings_total",
    "coldwatch_last_value",
    "coldwatch_device_last_reading_age_seconds",
    "coldwatch_device_last_reading_timestamp_seconds",
    "coldwatch_device_online",
    "coldwatch_seq_missing_readings_total",
    "coldwatch_seq_restarts_total",
    "coldwatch_buffered_readings_total",
    "coldwatch_alarms_open",
    "coldwatch_alarms_shelved",
    "coldwatch_rule_limit",
    "coldwatch_hold_time_forecast_hours",
)
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$site": ".*",
    "$area": ".*",
    "$device": ".*",
}


def dashboard_files() -> list[Path]:
    """All dashboard JSON files (Prometheus and PostgreSQL), sorted by name."""
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    """One dashboard as parsed JSON."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def datasource_kind(dashboard: dict[str, Any]) -> str:
    """The plugin type of the dashboard's (single) data source variable."""
    (variable,) = (v for v in dashboard.get("templating", {}).get("list", []) if v["type"] == "datasource")
    kind = variable["query"]
    assert isinstance(kind, str)
    return kind


def prometheus_dashboard_files() -> list[Path]:
    """The dashboards over the Prometheus metrics, sorted by name."""
    return [path for path in dashboard_files() if datasource_kind(load_dashboard(path)) == PROMETHEUS]


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that query data (rows excluded)."""
    return [p for p in iter_panels(dashboard.get("panels", [])) if p.get("type") != "row"]


def substitute(expr: str) -> str:
    """``expr`` with the dashboard variables replaced as a test against Prometheus needs them."""
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def panel_expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr with $site/$area/$device -> .* and $__rate_interval -> 1m)."""
    out: list[tuple[str, str, str]] = []
    for path in prometheus_dashboard_files():
        dashboard = load_dashboard(path)
        for panel in data_panels(dashboard):
            out += [
                (dashboard["uid"], panel["title"], substitute(target["expr"]))
                for target in panel.get("targets", [])
            ]
    return out


def demo_device_ids() -> list[str]:
    """The device ids of the demo configuration."""
    config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    return [str(device["id"]) for device in config["devices"]]


def variables_of(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def test_there_are_seven_dashboards_that_parse() -> None:
    """Six Prometheus dashboards and the PostgreSQL one parse as JSON objects with title and schemaVersion."""
    paths = dashboard_files()
    assert len(paths) == 7, paths
    assert len(prometheus_dashboard_files()) == 6
    assert [p for p in paths if datasource_kind(load_dashboard(p)) == POSTGRES] == [HISTORY]
    for path in paths:
        dashboard = load_dashboard(path)
        assert dashboard.get("title"), path
        assert dashboard.get("uid"), path
        assert isinstance(dashboard.get("schemaVersion"), int), path
        assert dashboard["schemaVersion"] >= 36, path


def test_uids_are_unique() -> None:
    """No two dashboards share a uid."""
    uids = [load_dashboard(path)["uid"] for path in dashboard_files()]
    assert len(uids) == len(set(uids)), uids


def test_dashboards_have_the_datasource_and_filter_variables() -> None:
    """Each Prometheus dashboard has the datasource variable and chained multi-value site, area, device."""
    for path in prometheus_dashboard_files():
        variables = variables_of(load_dashboard(path))
        datasource = variables.get("datasource")
        assert datasource is not None, path
        assert datasource["type"] == "datasource", path
        assert datasource["query"] == "prometheus", path
        for name in FILTER_VARIABLES:
            variable = variables.get(name)
            assert variable is not None, (path, name)
            assert variable["type"] == "query", (path, name)
            assert variable["includeAll"] is True, (path, name)
            assert variable["multi"] is True, (path, name)
            assert variable["datasource"] == DATASOURCE_REF, (path, name)
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            assert query.startswith("label_values(coldwatch_readings_total"), (path, name)
            assert query.endswith(f", {name})"), (path, name)
        area_query = variables["area"]["query"]["query"]
        device_query = variables["device"]["query"]["query"]
        assert '$site"' in area_query, path
        assert '$site"' in device_query, path
        assert '$area"' in device_query, path


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    """Every panel, target and annotation query references the data source through the variable.

    ${datasource} in the Prometheus dashboards, ${postgres} in the PostgreSQL one.
    """
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        ref = DATASOURCE_REF if datasource_kind(dashboard) == PROMETHEUS else POSTGRES_REF
        for panel in iter_panels(dashboard.get("panels", [])):
            assert panel.get("datasource") == ref, (path, panel.get("title"))
            for target in panel.get("targets", []):
                assert target.get("datasource") == ref, (path, panel.get("title"))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            assert annotation.get("datasource") == ref, (path, annotation.get("name"))
            if "target" in annotation and datasource_kind(dashboard) == POSTGRES:
                assert annotation["target"].get("datasource") == ref, (path, annotation.get("name"))


def test_panels_have_grid_positions_and_targets() -> None:
    """Every data panel has a gridPos, unique id and targets with a refId and a non-empty query.

    The query is ``expr`` (PromQL) in the Prometheus dashboards, ``rawSql`` in the PostgreSQL one.
    """
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        query_key = "expr" if datasource_kind(dashboard) == PROMETHEUS else "rawSql"
        ids = [p["id"] for p in iter_panels(dashboard.get("panels", []))]
        assert len(ids) == len(set(ids)), path
        for panel in iter_panels(dashboard.get("panels", [])):
            grid = panel.get("gridPos")
            assert isinstance(grid, dict), (path, panel.get("title"))
            assert {"h", "w", "x", "y"} <= grid.keys(), (path, panel.get("title"))
            assert grid["x"] + grid["w"] <= 24, (path, panel.get("title"))
        for panel in data_panels(dashboard):
            targets = panel.get("targets", [])
            assert targets, (path, panel["title"])
            ref_ids = [t.get("refId") for t in targets]
            assert all(ref_ids), (path, panel["title"])
            assert len(ref_ids) == len(set(ref_ids)), (path, panel["title"])
            for target in targets:
                assert isinstance(target.get(query_key), str), (path, panel["title"])
                assert target[query_key].strip(), (path, panel["title"])


def test_device_labelled_metrics_are_filtered_by_the_variables() -> None:
    """Every selector of a metric with device labels filters by site, area and device."""
    exprs = [(uid, title, expr) for uid, title, expr in raw_expressions()]
    pattern = re.compile(r"\b(" + "|".join(DEVICE_LABELLED) + r")\b(\{[^}]*\})?")
    for uid, title, expr in exprs:
        for match in pattern.finditer(expr):
            selector = match.group(2) or ""
            for name in FILTER_VARIABLES:
                assert f'{name}=~"${name}"' in selector, (uid, title, expr)


def raw_expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title or annotation name, expr) before substitution, annotations included."""
    out: list[tuple[str, str, str]] = []
    for path in prometheus_dashboard_files():
        dashboard = load_dashboard(path)
        for panel in data_panels(dashboard):
            out += [(dashboard["uid"], panel["title"], t["expr"]) for t in panel.get("targets", [])]
        for annotation in dashboard.get("annotations", {}).get("list", []):
            out.append((dashboard["uid"], annotation["name"], annotation["expr"]))
    return out


def test_only_known_variables_are_used() -> None:
    """Expressions use no variable other than $site, $area, $device and $__rate_interval."""
    for uid, title, expr in raw_expressions():
        leftover = re.findall(r"\$\{?\w+", substitute(expr))
        assert not leftover, (uid, title, leftover)


def test_no_demo_device_id_is_hard_coded() -> None:
    """No device id from config/demo.yaml appears anywhere in the dashboards."""
    ids = demo_device_ids()
    assert ids
    for path in dashboard_files():
        text = path.read_text(encoding="utf-8")
        for device_id in ids:
            assert device_id not in text, (path, device_id)


def test_provisioning_files_parse_and_name_the_datasource_uid() -> None:
    """The provisioning YAML parses and provides the data source uid the dashboards' variable defaults to."""
    datasources = yaml.safe_load(DATASOURCES_YAML.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert "${PROMETHEUS_URL}" in source["url"]
    providers = yaml.safe_load(DASHBOARDS_YAML.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    for path in prometheus_dashboard_files():
        default = variables_of(load_dashboard(path))["datasource"]["current"]["value"]
        assert default == source["uid"], path


def test_panel_expressions_are_substituted() -> None:
    """panel_expressions() covers every target and leaves no $site, $area, $device or $__rate_interval."""
    exprs = panel_expressions()
    assert len(exprs) == sum(
        len(p.get("targets", []))
        for f in prometheus_dashboard_files()
        for p in data_panels(load_dashboard(f))
    )
    assert {uid for uid, _, _ in exprs} == {load_dashboard(f)["uid"] for f in prometheus_dashboard_files()}
    for uid, title, expr in exprs:
        for variable in SUBSTITUTIONS:
            assert variable not in expr, (uid, title)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_is_tagged_and_not_bound_to_an_instance(path: Path) -> None:
    """Each dashboard is tagged coldwatch and carries no instance-specific id."""
    dashboard = load_dashboard(path)
    assert "coldwatch" in dashboard.get("tags", [])
    assert dashboard.get("id") is None


# --- The PostgreSQL data source and the history dashboard ------------------------------------

POSTGRES_UID = "coldwatch-postgres"
HISTORY_VARIABLES = ("postgres", "site", "kind", "device", "metric")
FROM_CONDITION = "r.ts_us >= $__unixEpochFrom()::bigint * 1000000"
TO_CONDITION = "r.ts_us < $__unixEpochTo()::bigint * 1000000"

# The test database: the dashboard's time range is [T0, T0 + 1 h). Offsets below are seconds from T0.
T0 = 1_709_251_200  # 2024-03-01T00:00:00Z
FROM_S, TO_S = T0, T0 + 3600
US = 1_000_000
# Part of the storage schema (the columns the dashboard may use). readings is range-partitioned on
# ts_us like the storage's table, so that EXPLAIN shows whether the panels' queries are pruned.
SCHEMA = f"""
CREATE TABLE devices (
    id BIGINT PRIMARY KEY, device_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, site TEXT NOT NULL,
    area TEXT NOT NULL, grade TEXT, last_seq BIGINT, last_ts_us BIGINT, last_received_us BIGINT,
    online BOOLEAN
);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE readings (
    device BIGINT NOT NULL, metric INTEGER NOT NULL, ts_us BIGINT NOT NULL, seq BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL, received_us BIGINT NOT NULL, buffered BOOLEAN NOT NULL,
    PRIMARY KEY (device, metric, ts_us, seq)
) PARTITION BY RANGE (ts_us);
CREATE TABLE readings_old PARTITION OF readings FOR VALUES FROM (MINVALUE) TO ({(T0 - 1800) * US});
CREATE TABLE readings_now PARTITION OF readings FOR VALUES FROM ({(T0 - 1800) * US}) TO ({(T0 + 5400) * US});
CREATE TABLE readings_new PARTITION OF readings FOR VALUES FROM ({(T0 + 5400) * US}) TO (MAXVALUE);
CREATE TABLE alarms (
    id BIGINT PRIMARY KEY, device_id TEXT NOT NULL, metric TEXT NOT NULL, rule TEXT NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL, raised_ts_us BIGINT NOT NULL, cleared_ts_us BIGINT,
    value DOUBLE PRECISION, limit_value DOUBLE PRECISION, late BOOLEAN NOT NULL, detail TEXT NOT NULL
);
"""
DEVICES = [
    (1, "inc-a", "incubator", "site-a", "culture-lab", None),
    (2, "inc-b", "incubator", "site-a", "culture-lab", None),
    (3, "pc-a", "particle_counter", "site-a", "fill-suite", "A"),
    (4, "ship-a", "cryoshipper", "site-b", "dispatch", None),
]
METRICS = [(1, "temperature_c"), (2, "co2_pct"), (3, "particles_0_5um_per_m3"), (4, "humidity_pct")]
# (device, metric, ts offset, seq, value, received offset, buffered)
READINGS = [
    ("inc-a", "temperature_c", -3600, 1, 36.9, -3599.8, False),  # partition readings_old
    ("inc-a", "temperature_c", -60, 2, 36.8, -59.8, False),  # readings_now, before the range
    ("inc-a", "temperature_c", 0, 3, 37.0, 0.2, False),  # the first instant of the range
    ("inc-a", "co2_pct", 0, 3, 5.0, 0.2, False),
    ("inc-a", "temperature_c", 600, 4, 37.1, 1800, True),  # held by the device, sent 20 min late
    ("inc-a", "co2_pct", 600, 4, 5.1, 1800, True),
    ("inc-a", "temperature_c", 3599.5, 5, 37.2, 3599.7, False),  # the range's last half second
    ("inc-a", "temperature_c", 3600, 6, 37.3, 3600.2, False),  # the range's end: excluded
    ("inc-a", "temperature_c", 7200, 7, 37.4, 7200.2, False),  # partition readings_new
    ("inc-b", "temperature_c", 600, 1, 36.0, 600.2, False),  # another device
    ("pc-a", "particles_0_5um_per_m3", 600, 1, 1200.0, 600.2, False),
]
ACTIVE = "active_unacknowledged"
# (id, device, metric, rule, severity, state, raised offset, cleared offset, value, limit, late, detail)
ALARMS = [
    (1, "inc-a", "temperature_c", "high", "action", "closed", -7200, -3600, 38.5, 38.0, False, "over before"),
    (2, "inc-a", "temperature_c", "high", "alert", "closed", -600, 300, 37.6, 37.5, False, "cleared inside"),
    (3, "inc-a", "temperature_c", "low", "alert", "closed", -100, 0, 36.4, 36.5, False, "cleared at start"),
    (4, "inc-a", "co2_pct", "low", "action", ACTIVE, 1200, None, 4.4, 4.5, True, "open"),
    (5, "inc-a", "temperature_c", "high", "alert", ACTIVE, 3600, None, 38.0, 37.5, False, "raised at end"),
    (6, "inc-b", "temperature_c", "high", "alert", ACTIVE, 600, None, 38.0, 37.5, False, "another device"),
]
# The variables' values the tests choose in the dashboard.
CHOSEN: dict[str, str | list[str]] = {
    "site": ["site-a"],
    "kind": ["incubator"],
    "device": "inc-a",
    "metric": ["co2_pct", "temperature_c"],
}


def us(offset_s: float) -> int:
    """Microseconds since the epoch of T0 + offset_s."""
    return T0 * US + round(offset_s * US)


def at(offset_s: float) -> datetime:
    """T0 + offset_s as the timestamptz PostgreSQL returns."""
    return datetime.fromtimestamp(T0, UTC) + timedelta(microseconds=us(offset_s) - T0 * US)


def postgres_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every SQL query of a dashboard: "variable <name>", "panel <title> <refId>", "annotation <name>"."""
    out: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            out[f"variable {variable['name']}"] = variable["query"]
    for panel in data_panels(dashboard):
        for target in panel.get("targets", []):
            out[f"panel {panel['title']} {target['refId']}"] = target["rawSql"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        out[f"annotation {annotation['name']}"] = annotation["target"]["rawSql"]
    return out


def grafana_sql(
    sql: str, variables: Mapping[str, dict[str, Any]], chosen: Mapping[str, str | list[str]]
) -> str:
    """``sql`` as Grafana sends it for the time range [FROM_S, TO_S) and the ``chosen`` values.

    The macros become epoch seconds. As in Grafana's SQL data sources (interpolateVariable), a
    multi-value or "All" variable becomes a list of quoted literals, a single value is inserted
    with its quotes doubled.
    """
    sql = sql.replace("$__unixEpochFrom()", str(FROM_S)).replace("$__unixEpochTo()", str(TO_S))

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"unknown variable or macro ${name}"
        variable, selected = variables[name], chosen[name]
        if variable["multi"] or variable["includeAll"]:
            items = [selected] if isinstance(selected, str) else selected
            return ",".join("'" + item.replace("'", "''") + "'" for item in items)
        assert isinstance(selected, str), name
        return selected.replace("'", "''")

    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, sql)
    assert "$" not in sql, sql
    return sql


def history_sql(key: str, **chosen: str | list[str]) -> str:
    """The history dashboard's query ``key`` with CHOSEN (updated by ``chosen``) substituted."""
    dashboard = load_dashboard(HISTORY)
    return grafana_sql(postgres_queries(dashboard)[key], variables_of(dashboard), {**CHOSEN, **chosen})


async def _fetch(url: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(sql)
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts."""
    return asyncio.run(_fetch(url, sql))


async def _load(url: str) -> None:
    ids = {device_id: number for number, device_id, *_ in DEVICES}
    metric_ids = {name: number for number, name in METRICS}
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO devices (id, device_id, kind, site, area, grade) VALUES ($1, $2, $3, $4, $5, $6)",
            DEVICES,
        )
        await conn.executemany("INSERT INTO metrics (id, name) VALUES ($1, $2)", METRICS)
        await conn.executemany(
            "INSERT INTO readings VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (ids[device], metric_ids[metric], us(ts), seq, value, us(received), buffered)
                for device, metric, ts, seq, value, received, buffered in READINGS
            ],
        )
        await conn.executemany(
            "INSERT INTO alarms (id, device_id, metric, rule, severity, state, raised_ts_us, cleared_ts_us,"
            " value, limit_value, late, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [(*row[:6], us(row[6]), None if row[7] is None else us(row[7]), *row[8:]) for row in ALARMS],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def history_db() -> Iterator[str]:
    """URL of a private PostgreSQL with SCHEMA and the rows above; fails, never skips, if it won't start."""
    with running_postgres() as server:
        asyncio.run(_load(server.url()))
        yield server.url()


def test_postgres_datasource_is_provisioned_from_the_environment() -> None:
    """The PostgreSQL data source file names the uid the history dashboard defaults to; no secret in it."""
    datasources = yaml.safe_load(POSTGRES_DATASOURCE_YAML.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == POSTGRES
    assert source["uid"] == POSTGRES_UID
    assert source["access"] == "proxy"
    assert source["url"] == "${COLDWATCH_PG_HOST}"
    assert source["user"] == "${COLDWATCH_PG_USER}"
    assert source["jsonData"]["database"] == "${COLDWATCH_PG_DATABASE}"
    assert source["secureJsonData"] == {"password": "${COLDWATCH_PG_PASSWORD}"}
    assert "password" not in source
    assert "database" not in source  # the top-level field is deprecated: jsonData.database
    assert source["jsonData"]["sslmode"] == "disable"
    assert source["jsonData"]["timescaledb"] is False
    (prometheus,) = yaml.safe_load(DATASOURCES_YAML.read_text(encoding="utf-8"))["datasources"]
    assert source["uid"] != prometheus["uid"]
    assert source["name"] != prometheus["name"]
    assert variables_of(load_dashboard(HISTORY))["postgres"]["current"]["value"] == POSTGRES_UID


def test_history_dashboard_variables() -> None:
    """Data source; site and kind (multi, All); one device among them; metrics (multi, All) of that device."""
    dashboard = load_dashboard(HISTORY)
    assert dashboard["uid"] == "coldwatch-history"
    assert dashboard["title"] == "coldwatch / History"
    variables = variables_of(dashboard)
    assert tuple(variables) == HISTORY_VARIABLES
    source = variables["postgres"]
    assert source["type"] == "datasource"
    assert source["query"] == POSTGRES
    for name in HISTORY_VARIABLES[1:]:
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == POSTGRES_REF, name
        assert isinstance(variable["query"], str), name
        assert variable["definition"] == variable["query"], name
        # No custom "All" value: Grafana then sends every option, quoted, for IN (...).
        assert not variable.get("allValue"), name
        many = name != "device"
        assert variable["multi"] is many, name
        assert variable["includeAll"] is many, name
    assert "IN ($site)" in variables["kind"]["query"]
    assert "IN ($site)" in variables["device"]["query"]
    assert "IN ($kind)" in variables["device"]["query"]
    assert "'$device'" in variables["metric"]["query"]


def test_history_sql_keeps_ts_us_bare_in_where() -> None:
    """Panels over readings filter on the bare ts_us range (pruning); no WHERE wraps *ts_us in a function."""
    queries = postgres_queries(load_dashboard(HISTORY))
    readings = [key for key in queries if key.startswith("panel") and "FROM readings" in queries[key]]
    assert len(readings) == 3, readings
    for key in readings:
        sql = queries[key]
        assert FROM_CONDITION in sql, key
        assert TO_CONDITION in sql, key
        assert "d.device_id = '$device'" in sql, key
        assert "m.name IN ($metric)" in sql, key
    for key, sql in queries.items():
        for where in re.findall(r"\bWHERE\b(.*?)(?=\bORDER BY\b|\bLIMIT\b|$)", sql, flags=re.DOTALL):
            for call in re.finditer(r"(\w+)\s*\(\s*[\w.]*ts_us\b", where):
                assert call.group(1).upper() in {"AND", "OR", "NOT"}, (key, call.group(0))
            assert not re.search(r"[\w.]*ts_us\s*(::|[-+*/])", where), key


def test_history_panels() -> None:
    """Raw values as time series, raw rows (limited, buffered marked) and alarms as tables."""
    dashboard = load_dashboard(HISTORY)
    panels = {panel["id"]: panel for panel in data_panels(dashboard)}
    for panel in panels.values():
        expected_format = "time_series" if panel["type"] == "timeseries" else "table"
        for target in panel["targets"]:
            assert target["rawQuery"] is True, panel["title"]
            assert target["editorMode"] == "code", panel["title"]
            assert target["format"] == expected_format, panel["title"]
    (series,) = [p for p in panels.values() if p["type"] == "timeseries"]
    assert series["targets"][0]["rawSql"].startswith(
        "SELECT to_timestamp(r.ts_us / 1e6) AS time, m.name AS metric, r.value\n"
    )
    raw = next(p for p in panels.values() if p["title"].startswith("Raw readings"))
    assert raw["targets"][0]["rawSql"].endswith("\nLIMIT 10000")
    (buffered,) = [o for o in raw["fieldConfig"]["overrides"] if o["matcher"]["options"] == "buffered"]
    properties = {p["id"]: p["value"] for p in buffered["properties"]}
    (mapping,) = properties["mappings"]
    assert set(mapping["options"]) == {"true", "false"}
    assert mapping["options"]["true"]["text"] != mapping["options"]["false"]["text"]
    assert mapping["options"]["true"]["color"] != mapping["options"]["false"]["color"]
    assert properties["custom.cellOptions"]["type"] == "color-background"
    (annotation,) = dashboard["annotations"]["list"]
    assert annotation["target"]["format"] == "table"


HISTORY_QUERIES = {
    "variable site",
    "variable kind",
    "variable device",
    "variable metric",
    "panel Readings in range — $device A",
    "panel Raw values — $device A",
    "panel Raw readings — $device A",
    "panel Alarms — $device A",
    "annotation Alarms",
}


def test_every_history_query_is_run_below() -> None:
    """The tests below run every SQL query of the history dashboard (a new one needs a test)."""
    assert set(postgres_queries(load_dashboard(HISTORY))) == HISTORY_QUERIES


def test_history_variable_queries(history_db: str) -> None:
    """Sites; kinds at the chosen sites; devices of those kinds there; metrics with readings of the device."""
    assert fetch(history_db, history_sql("variable site")) == [{"site": "site-a"}, {"site": "site-b"}]
    kinds = fetch(history_db, history_sql("variable kind"))
    assert kinds == [{"kind": "incubator"}, {"kind": "particle_counter"}]
    assert fetch(history_db, history_sql("variable device")) == [
        {"__value": "inc-a", "__text": "inc-a (culture-lab)"},
        {"__value": "inc-b", "__text": "inc-b (culture-lab)"},
    ]
    every_kind = fetch(history_db, history_sql("variable device", kind=["incubator", "particle_counter"]))
    assert [row["__text"] for row in every_kind] == [
        "inc-a (culture-lab)",
        "inc-b (culture-lab)",
        "pc-a (fill-suite, grade A)",
    ]
    assert fetch(history_db, history_sql("variable device", site=["site-b"])) == []
    metrics = fetch(history_db, history_sql("variable metric"))
    assert metrics == [{"name": "co2_pct"}, {"name": "temperature_c"}]
    particles = fetch(history_db, history_sql("variable metric", device="pc-a"))
    assert particles == [{"name": "particles_0_5um_per_m3"}]


def test_history_raw_values_are_the_readings_in_range(history_db: str) -> None:
    """The time series has exactly the device's readings with from <= ts < to, oldest first."""
    rows = fetch(history_db, history_sql("panel Raw values — $device A"))
    assert [(row["time"], row["metric"], row["value"]) for row in rows] == [
        (at(0), "co2_pct", 5.0),
        (at(0), "temperature_c", 37.0),
        (at(600), "co2_pct", 5.1),
        (at(600), "temperature_c", 37.1),
        (at(3599.5), "temperature_c", 37.2),
    ]
    one_metric = fetch(history_db, history_sql("panel Raw values — $device A", metric=["co2_pct"]))
    assert [(row["time"], row["value"]) for row in one_metric] == [(at(0), 5.0), (at(600), 5.1)]
    other = fetch(history_db, history_sql("panel Raw values — $device A", device="inc-b"))
    assert [(row["time"], row["metric"], row["value"]) for row in other] == [(at(600), "temperature_c", 36.0)]


def test_history_table_has_the_raw_rows_with_buffered_marked(history_db: str) -> None:
    """Newest first, with seq, the reception time, its delay and the buffered flag."""
    rows = fetch(history_db, history_sql("panel Raw readings — $device A"))
    assert [{**row, "delay_s": float(row["delay_s"])} for row in rows] == [
        {
            "time": at(3599.5),
            "metric": "temperature_c",
            "value": 37.2,
            "seq": 5,
            "received": at(3599.7),
            "delay_s": pytest.approx(0.2),
            "buffered": False,
        },
        {
            "time": at(600),
            "metric": "co2_pct",
            "value": 5.1,
            "seq": 4,
            "received": at(1800),
            "delay_s": 1200.0,
            "buffered": True,
        },
        {
            "time": at(600),
            "metric": "temperature_c",
            "value": 37.1,
            "seq": 4,
            "received": at(1800),
            "delay_s": 1200.0,
            "buffered": True,
        },
        {
            "time": at(0),
            "metric": "co2_pct",
            "value": 5.0,
            "seq": 3,
            "received": at(0.2),
            "delay_s": pytest.approx(0.2),
            "buffered": False,
        },
        {
            "time": at(0),
            "metric": "temperature_c",
            "value": 37.0,
            "seq": 3,
            "received": at(0.2),
            "delay_s": pytest.approx(0.2),
            "buffered": False,
        },
    ]
    assert all(isinstance(row["delay_s"], Decimal | float) for row in rows)


def test_history_count_of_readings_and_buffered(history_db: str) -> None:
    """The stat counts the rows the table would show without its limit, and the buffered ones."""
    counts = fetch(history_db, history_sql("panel Readings in range — $device A"))
    assert counts == [{"readings": 5, "buffered": 2}]
    only_co2 = history_sql("panel Readings in range — $device A", metric=["co2_pct"])
    assert fetch(history_db, only_co2) == [{"readings": 2, "buffered": 1}]


def test_history_alarms_are_those_active_in_the_range(history_db: str) -> None:
    """The device's alarms raised before the range's end, not cleared before its start; annotations too."""
    rows = fetch(history_db, history_sql("panel Alarms — $device A"))
    assert [row["detail"] for row in rows] == ["cleared inside", "cleared at start", "open"]
    assert rows[2] == {
        "raised": at(1200),
        "cleared": None,
        "state": "active_unacknowledged",
        "severity": "action",
        "metric": "co2_pct",
        "rule": "low",
        "value": 4.4,
        "limit_value": 4.5,
        "late": True,
        "detail": "open",
    }
    assert (rows[0]["raised"], rows[0]["cleared"]) == (at(-600), at(300))
    annotations = fetch(history_db, history_sql("annotation Alarms"))
    assert [(row["time"], row["timeend"], row["text"], row["tags"]) for row in annotations] == [
        (at(-600), at(300), "alert high on temperature_c (closed)", "alert"),
        (at(-100), at(0), "alert low on temperature_c (closed)", "alert"),
        (
            at(1200),
            at(3600),
            f"action low on co2_pct ({ACTIVE})",
            "action",
        ),  # still active: to the range's end
    ]


def test_history_reading_queries_are_pruned_to_the_range_partitions(history_db: str) -> None:
    """The planner keeps only the partition holding the range for every panel over readings."""
    queries = postgres_queries(load_dashboard(HISTORY))
    keys = [key for key in queries if key.startswith("panel") and "FROM readings" in queries[key]]
    assert len(keys) == 3, keys
    for key in keys:
        plan = "\n".join(row["QUERY PLAN"] for row in fetch(history_db, "EXPLAIN " + history_sql(key)))
        assert "readings_now" in plan, (key, plan)
        assert "readings_old" not in plan, (key, plan)
        assert "readings_new" not in plan, (key, plan)
