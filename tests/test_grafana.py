"""Static checks of the Grafana dashboards and provisioning files in grafana/.

``panel_expressions()`` is also the list of PromQL expressions another test runs against
a real Prometheus scraping a demo-like daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES_YAML = GRAFANA / "provisioning" / "datasources" / "coldwatch.yaml"
DASHBOARDS_YAML = GRAFANA / "provisioning" / "dashboards" / "coldwatch.yaml"
DEMO_CONFIG = ROOT / "config" / "demo.yaml"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
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
    """The dashboard JSON files, sorted by name."""
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    """One dashboard as parsed JSON."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


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
    for path in dashboard_files():
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


def test_there_are_six_dashboards_that_parse() -> None:
    """The six dashboards exist and each parses as a JSON object with a title and schemaVersion."""
    paths = dashboard_files()
    assert len(paths) == 6, paths
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
    """Each dashboard has the datasource variable and chained multi-value site, area and device variables."""
    for path in dashboard_files():
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
    """Every panel, target and annotation query references the data source as ${datasource}."""
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for panel in iter_panels(dashboard.get("panels", [])):
            assert panel.get("datasource") == DATASOURCE_REF, (path, panel.get("title"))
            for target in panel.get("targets", []):
                assert target.get("datasource") == DATASOURCE_REF, (path, panel.get("title"))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            assert annotation.get("datasource") == DATASOURCE_REF, (path, annotation.get("name"))


def test_panels_have_grid_positions_and_targets() -> None:
    """Every data panel has a gridPos, unique id and targets with a refId and a non-empty expr."""
    for path in dashboard_files():
        dashboard = load_dashboard(path)
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
                assert isinstance(target.get("expr"), str), (path, panel["title"])
                assert target["expr"].strip(), (path, panel["title"])


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
    for path in dashboard_files():
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
    for path in dashboard_files():
        default = variables_of(load_dashboard(path))["datasource"]["current"]["value"]
        assert default == source["uid"], path


def test_panel_expressions_are_substituted() -> None:
    """panel_expressions() covers every target and leaves no $site, $area, $device or $__rate_interval."""
    exprs = panel_expressions()
    assert len(exprs) == sum(
        len(p.get("targets", [])) for f in dashboard_files() for p in data_panels(load_dashboard(f))
    )
    assert {uid for uid, _, _ in exprs} == {load_dashboard(f)["uid"] for f in dashboard_files()}
    for uid, title, expr in exprs:
        for variable in SUBSTITUTIONS:
            assert variable not in expr, (uid, title)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_is_tagged_and_not_bound_to_an_instance(path: Path) -> None:
    """Each dashboard is tagged coldwatch and carries no instance-specific id."""
    dashboard = load_dashboard(path)
    assert "coldwatch" in dashboard.get("tags", [])
    assert dashboard.get("id") is None
