"""``coldwatch replay``: the scenario library passes, a wrong expectation fails, broker and engine agree."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from coldwatch.broker import RunningBroker
from coldwatch.replay.scenario import load_scenario
from coldwatch.rules.profiles import rules_for

from .conftest import running_daemon, write_config

ROOT = Path(__file__).parent.parent
LIBRARY = sorted((ROOT / "simulators" / "scenarios").glob("*.yaml"))


def replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real command line."""
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", "replay", "--no-progress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_library_passes_and_writes_every_report(tmp_path: Path) -> None:
    """All library scenarios pass; HTML, JSON, JUnit XML and the trace matrix are written and agree."""
    assert len(LIBRARY) >= 20
    done = replay(*LIBRARY, "--report", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("report.html", "report.json", "junit.xml", "traceability.csv"):
        assert (tmp_path / name).stat().st_size > 0
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("failures") == "0"
    assert suites.get("errors") == "0"
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["scenarios"]) == len(LIBRARY)
    assert all(s["passed"] for s in report["scenarios"])
    rows = (tmp_path / "traceability.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(len(s["expectations"]) for s in report["scenarios"])


def test_library_covers_every_rule_kind_and_device_kind() -> None:
    """Expectations of the library name a rule of every kind, on every device kind."""
    kinds: set[str] = set()
    device_kinds: set[str] = set()
    for path in LIBRARY:
        loaded = load_scenario(path)
        devices = {d.id: d for d in loaded.devices}
        for exp in loaded.scenario.expect:
            device = devices[exp.device]
            device_kinds.add(device.kind.value)
            for spec in rules_for(device, loaded.rules):
                if spec.rule_id() == exp.rule and (exp.metric in {None, spec.metric or "device"}):
                    kinds.add(spec.type)
    assert device_kinds == {"incubator", "cryoshipper", "particle_counter"}
    assert kinds == {
        "threshold",
        "rate",
        "comm_loss",
        "consecutive",
        "events_in_window",
        "time_out_of_range",
        "mkt",
        "held",
        "probe_disagreement",
        "forecast",
    }


def _edited(src: Path, dst: Path, edit: Any) -> Path:
    data = yaml.safe_load(src.read_text())
    edit(data)
    dst.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


@pytest.mark.parametrize("engine", ["reading", "batched"])
def test_a_wrong_expectation_fails_naming_it(tmp_path: Path, engine: str) -> None:
    """Moving one expectation's raise window off by a minute makes the replay fail and name it."""
    src = ROOT / "simulators" / "scenarios" / "incubator-temp-high-alert-then-action.yaml"

    def shift(data: dict[str, Any]) -> None:
        exp = next(e for e in data["expect"] if e.get("raised_within"))
        exp["id"] = "URS-WRONG-001"
        exp["raised_within"] = ["1m", "2m"]

    wrong = _edited(src, tmp_path / "wrong.yaml", shift)
    done = replay(wrong, "--engine", engine, "--report", tmp_path / "out")
    assert done.returncode == 1
    assert "FAIL URS-WRONG-001" in done.stdout
    failures = [
        f for f in ET.parse(tmp_path / "out" / "junit.xml").iter("testcase") if f.find("failure") is not None
    ]
    assert [f.get("name", "").split(":")[0] for f in failures] == ["URS-WRONG-001"]


def test_an_invalid_scenario_is_refused_with_its_line(tmp_path: Path) -> None:
    """A typo in a scenario is exit status 2 with the file and line; nothing runs."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "duration: 1h\ndevices:\n  - {id: inc-1, kind: incubator, site: s, area: a}\n"
        "timeline:\n  inc-1:\n    metrics:\n      temp_c:\n        - hold: {value: 37, four: 1h}\n"
        "expect:\n  - {id: R1, device: inc-1, rule: temp_c/hihg, never: true}\n"
    )
    done = replay(bad)
    assert done.returncode == 2
    assert "bad.yaml, line 8" in done.stderr
    bad.write_text(bad.read_text().replace("four", "for"))
    done = replay(bad)
    assert done.returncode == 2
    assert "temp_c/hihg" in done.stderr
    assert "temp_c/high" in done.stderr  # the rules it does have are listed


def _alarms(report: Path, *, without: set[str]) -> list[tuple[Any, ...]]:
    data = json.loads(report.read_text())
    return sorted(
        (
            a["device"],
            a["metric"],
            a["rule"],
            a["severity"],
            a["raised_s"],
            a["cleared_s"],
            a["late"],
            a["revoked"],
        )
        for s in data["scenarios"]
        for a in s["alarms"]
        if a["rule"] not in without
    )


async def test_via_broker_gives_the_same_alarms(tmp_path: Path, broker: RunningBroker, prefix: str) -> None:
    """Scenarios published through a real broker into a running daemon store the engine replay's alarms."""
    names = ["incubator-temp-high-alert-then-action", "particle-counter-comm-loss-and-backfilled-excursion"]
    paths = [ROOT / "simulators" / "scenarios" / f"{name}.yaml" for name in names]
    loaded = [load_scenario(p) for p in paths]
    devices = [d.model_dump(mode="json", exclude_defaults=True) for s in loaded for d in s.devices]
    rules: dict[str, Any] = {"devices": {}}
    for s in loaded:
        rules["devices"].update(s.rules.model_dump(mode="json", exclude_defaults=True).get("devices", {}))
    config = write_config(
        tmp_path / "coldwatch.yaml", broker=broker, prefix=prefix, devices=devices, rules=rules
    )
    in_process = replay(*paths, "--report", tmp_path / "engine")
    assert in_process.returncode == 0, in_process.stdout + in_process.stderr
    async with running_daemon(config):
        # In a worker thread: the daemon runs in this event loop.
        done = await asyncio.to_thread(
            replay, *paths, "--via-broker", "--config", tmp_path / "coldwatch.yaml", "--speed", "0",
            "--report", tmp_path / "broker",
        )  # fmt: skip
    # Communication loss is timed by arrival: at full speed it cannot be checked, and says so.
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "broker" / "report.json").read_text())
    statuses = {
        (e["id"], e["status"], "comm_loss" in e["label"])
        for s in report["scenarios"]
        for e in s["expectations"]
    }
    assert {status for _, status, comm in statuses if comm} == {"not_run"}
    assert {status for _, status, comm in statuses if not comm} == {"pass"}
    via_broker = _alarms(tmp_path / "broker" / "report.json", without={"comm_loss"})
    engine = _alarms(tmp_path / "engine" / "report.json", without={"comm_loss"})
    assert via_broker == engine
    assert any(a[6] for a in engine), "the backfilled excursion is raised late on both paths"
