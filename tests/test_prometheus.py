"""The Prometheus side of monitoring coldwatch, against a real Prometheus and promtool.

prometheus/ holds an example scrape configuration, alert rules on the alarm path itself
and their promtool unit tests. Here they are checked by promtool, every Grafana panel
expression is run against a real Prometheus scraping a daemon fed by the simulators
("a panel that shows nothing is a bug"), and the collector-down alert is shown firing
when the daemon stops. Prometheus and promtool come from the Debian package
``prometheus``; the tests fail (never skip) when they are missing. Each test starts its
own Prometheus on a free port, never a system one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coldwatch.broker import RunningBroker, free_port
from simulators import run_simulation
from tests.conftest import (
    DaemonProcess,
    device_entries,
    eventually,
    http_get,
    running_daemon,
    write_config,
)
from tests.test_grafana import panel_expressions

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
RULES = PROMETHEUS_DIR / "coldwatch-rules.yml"
RULES_TESTS = PROMETHEUS_DIR / "coldwatch-rules.test.yml"
ALERTS = (
    "ColdwatchCollectorDown",
    "ColdwatchNoReadings",
    "ColdwatchBrokerDisconnected",
    "ColdwatchHighRejectionRate",
    "ColdwatchDatabaseWritesFailing",
    "ColdwatchNotificationsFailing",
    "ColdwatchNotificationDeadLettered",
)
KINDS = ("particle_counter", "incubator", "cryoshipper")
# Long enough for every 1m window in the dashboards to hold several 1 s scrapes.
FEED_S = 70.0


def binary(name: str) -> str:
    """The path of a Prometheus binary; fails the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus")
    return path


def promtool(*args: str, cwd: Path) -> str:
    """Run promtool, assert it exits 0 and return what it printed."""
    done = subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def load_rules() -> list[dict[str, Any]]:
    """The alerting rules of prometheus/coldwatch-rules.yml."""
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def test_example_configuration_is_valid(tmp_path: Path) -> None:
    """promtool accepts the example prometheus.yml together with the rule file it names."""
    shutil.copy(PROMETHEUS_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / RULES.name)
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in output
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "coldwatch"]
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"][0]["targets"] == ["localhost:9464"]
    assert config["rule_files"] == [RULES.name]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["localhost:9093"]


def test_alert_rules_are_valid_and_documented() -> None:
    """promtool accepts the rules; each alert has a severity, a summary, a description and a runbook."""
    output = promtool("check", "rules", RULES.name, cwd=PROMETHEUS_DIR)
    assert f"SUCCESS: {len(ALERTS)} rules found" in output
    rules = load_rules()
    assert [rule["alert"] for rule in rules] == list(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower()), rule["alert"]


def test_alert_rule_unit_tests_pass() -> None:
    """The promtool unit tests pass and show every alert both firing and not firing."""
    output = promtool("test", "rules", RULES_TESTS.name, cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in output
    assert "FAILED" not in output
    cases = [
        case
        for test in yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{alert} is never shown not firing"


@contextlib.asynccontextmanager
async def running_prometheus(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[str]:
    """Run our own Prometheus with ``config`` on a free port; yield its base URL."""
    prometheus = binary("prometheus")
    home = tmp_path / "prometheus"
    home.mkdir()
    config_path = home / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={home / 'data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    try:

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited {process.returncode}:\n{log_path.read_text()}")
            status, _ = await http_get(f"{url}/-/ready")
            return status == 200

        await eventually(ready, timeout_s=30, interval_s=0.2, what="prometheus ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def api(base_url: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path and return its ``data`` (asserts success)."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    status, body = await http_get(f"{base_url}{path}{query}")
    assert status == 200, f"{path} {params}: HTTP {status} {body.decode(errors='replace')}"
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


async def instant_query(base_url: str, expr: str) -> tuple[str, list[Any]]:
    """Run an instant query: (error, result); error is empty when the query succeeded."""
    query = urllib.parse.urlencode({"query": expr})
    status, body = await http_get(f"{base_url}/api/v1/query?{query}")
    try:
        answer = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:200]!r}", []
    if status != 200 or answer.get("status") != "success":
        return f"HTTP {status}: {answer.get('errorType')}: {answer.get('error')}", []
    data = answer["data"]
    if data["resultType"] in {"scalar", "string"}:
        return "", [data["result"]]
    return "", list(data["result"])


def scrape_config(target: str) -> dict[str, Any]:
    """A 1 s scrape of one coldwatch daemon as job "coldwatch"."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "coldwatch", "static_configs": [{"targets": [target]}]}],
    }


async def target_up(base_url: str) -> bool:
    """True once Prometheus has scraped the coldwatch job successfully."""
    error, result = await instant_query(base_url, 'up{job="coldwatch"} == 1')
    return not error and bool(result)


@pytest.mark.slow
async def test_every_dashboard_panel_shows_data(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """Every Grafana panel expression returns data from Prometheus scraping a daemon fed by the simulators."""
    expressions = panel_expressions()
    assert expressions, "no panel expressions found in grafana/dashboards"
    devices = [entry for kind in KINDS for entry in device_entries(kind, 2)]
    for entry in devices:
        entry["interval_s"] = 2
    # The hold-time forecast waits for an hour of data by default; the panel needs one in seconds.
    forecast = {
        "type": "forecast",
        "min_span_s": 10,
        "levels": {"alert": {"hours": 48}, "action": {"hours": 24}},
    }
    config = write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=devices,
        rules={"profiles": {"cryoshipper": [forecast]}},
    )
    stop_simulation = asyncio.Event()
    async with running_daemon(config) as running:
        target = f"127.0.0.1:{running.daemon.http_port}"
        simulation = asyncio.create_task(run_simulation(config, seed=11, speed=1.0, stop=stop_simulation))
        try:
            async with running_prometheus(tmp_path, scrape_config(target)) as prometheus:
                await eventually(
                    lambda: target_up(prometheus), timeout_s=30, interval_s=0.5, what="coldwatch scraped"
                )
                await asyncio.sleep(FEED_S)
                assert not simulation.done(), "the simulation stopped early"
                empty: list[str] = []
                for uid, title, expr in expressions:
                    error, result = await instant_query(prometheus, expr)
                    if error or not result:
                        empty.append(f"{uid} / {title!r}: {error or 'no data'}: {expr}")
                # A fallback such as `or vector(0)` keeps a count panel at 0 when nothing is
                # wrong; it must not hide a metric name the collector does not export.
                _, exposition = await http_get(f"{running.base_url}/metrics")
                exported = exposition.decode()
                empty.extend(
                    f"{uid} / {title!r}: metric {name} is not exported: {expr}"
                    for uid, title, expr in expressions
                    for name in sorted(set(re.findall(r"\bcoldwatch_[a-z0-9_]+", expr)))
                    if name not in exported
                )
        finally:
            stop_simulation.set()
            await asyncio.wait_for(simulation, 30)
    assert not empty, f"{len(empty)} of {len(expressions)} panels show nothing:\n" + "\n".join(empty)


async def test_collector_down_alert_fires_when_the_daemon_stops(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """ColdwatchCollectorDown fires in a real Prometheus once the scraped daemon process stops."""
    port = free_port()
    write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=device_entries("incubator", 1),
        http_listen=f"127.0.0.1:{port}",
    )
    # A test copy of the rules: ColdwatchCollectorDown's "for: 1m" is shortened to 2s so
    # that the test takes seconds; the expression and everything else are unchanged.
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    (down,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ColdwatchCollectorDown"]
    assert down["for"] == "1m"
    down["for"] = "2s"
    rules_path = tmp_path / "coldwatch-rules.yml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    config = {**scrape_config(f"127.0.0.1:{port}"), "rule_files": [str(rules_path)]}

    async def collector_down(prometheus: str) -> list[dict[str, Any]]:
        data = await api(prometheus, "/api/v1/alerts")
        return [
            alert
            for alert in data["alerts"]
            if alert["labels"].get("alertname") == "ColdwatchCollectorDown"
            and alert["labels"].get("instance") == f"127.0.0.1:{port}"
        ]

    async def daemon_ready() -> bool:
        status, _ = await http_get(f"http://127.0.0.1:{port}/readyz")
        return status == 200

    with DaemonProcess(tmp_path / "c.yaml", tmp_path / "daemon.log") as daemon:
        daemon.start()
        await eventually(daemon_ready, what="daemon ready")
        async with running_prometheus(tmp_path, config) as prometheus:
            await eventually(
                lambda: target_up(prometheus), timeout_s=30, interval_s=0.5, what="daemon scraped"
            )
            rule_groups = await api(prometheus, "/api/v1/rules")
            loaded = {rule["name"] for group in rule_groups["groups"] for rule in group["rules"]}
            assert loaded == set(ALERTS)
            # Several evaluations while the daemon is up: nothing about it, not even pending.
            await asyncio.sleep(3)
            assert await collector_down(prometheus) == []
            assert daemon.terminate() == 0, daemon.log()[-3000:]
            stopped = time.monotonic()

            async def firing() -> bool:
                return any(alert["state"] == "firing" for alert in await collector_down(prometheus))

            await eventually(firing, timeout_s=30, interval_s=0.5, what="ColdwatchCollectorDown firing")
            (alert,) = await collector_down(prometheus)
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "coldwatch"
    assert alert["annotations"]["summary"] == f"coldwatch collector 127.0.0.1:{port} is down"
    assert time.monotonic() - stopped < 30
