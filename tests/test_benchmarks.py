"""The benchmarks run end to end on a small load (their figures are for people, not asserts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.slow
def test_ingest_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    """A small ingest run measures every consumer (SQLite, PostgreSQL), latency, memory, disk; none lost."""
    out = tmp_path / "ingest.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ingest.py"), "--messages", "3000", "--devices", "50",
         "--latency-s", "3", "--rate", "500", "--memory-devices", "300", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["coldwatch"]["messages"] == 3000
    assert result["coldwatch"]["lost"] == 0
    assert result["coldwatch_mqtt_3_1_1"]["lost"] == 0
    assert result["coldwatch_postgresql"]["messages"] == 3000
    assert result["coldwatch_postgresql"]["lost"] == 0
    assert result["coldwatch_postgresql"]["bytes_per_reading"] > 0
    assert "coldwatch on PostgreSQL" in done.stdout
    assert result["baseline_aiomqtt_aiosqlite"]["messages"] == 3000
    for consumer in ("ceiling_mosquitto_sub", "baseline_aiomqtt_aiosqlite", "coldwatch"):
        assert result[consumer]["per_s"] > 0
    assert result["latency"]["alarms_timed"] > 0
    assert result["latency"]["alarm_p99_ms"] is not None
    assert result["memory"]["peak_rss_mb"] > 0
    assert "ratio to baseline" in done.stdout


def test_replay_benchmark_runs_and_paths_agree(tmp_path: Path) -> None:
    """A short replay benchmark prints rates and the batched path agrees with the reading-by-reading one."""
    out = tmp_path / "replay.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "replay_rate.py"), "--days", "0.5", "--baseline-days", "0.1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["kind"] for r in rows} == {"cryoshipper", "incubator", "particle_counter"}
    assert all(r["same_alarms_on_baseline_days"] for r in rows)


def test_engine_benchmark_runs_and_measures_retained_history() -> None:
    """The engine benchmark judges a small feed twice alike and measures bytes per retained reading."""
    rate = subprocess.run(
        [sys.executable, str(BENCHMARKS / "engine_rate.py"), "--devices", "50", "--readings", "5000",
         "--repeat", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert rate.returncode == 0, rate.stdout + rate.stderr
    assert "readings/s" in rate.stdout
    memory = subprocess.run(
        [sys.executable, str(BENCHMARKS / "engine_rate.py"), "--memory", "--devices", "20", "--readings",
         "20000"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert memory.returncode == 0, memory.stdout + memory.stderr
    assert "bytes per retained reading" in memory.stdout


def test_engine_benchmark_judges_alike_with_the_history_in_memory_or_stored() -> None:
    """Every kind's events (late readings included) have one digest, whichever way the history is kept."""
    digests = {}
    for where in ("memory", "database"):
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / "engine_rate.py"), "--kind", "all", "--devices", "40",
             "--readings", "8000", "--repeat", "1", "--warm-h", "0.5", "--late-history", where],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        digests[where] = re.findall(r"(\d+) late, (\d+) too late; digest ([0-9a-f]+)", done.stdout)
    assert len(digests["memory"]) == 4, "a run of each kind and the mixed site"
    assert all(int(late) > 0 for late, _, _ in digests["memory"]), "late readings, so rewinds, in every run"
    assert digests["database"] == digests["memory"]


def test_console_pages_benchmark_runs_on_both_backends(tmp_path: Path) -> None:
    """A small console benchmark times every page's data on SQLite and PostgreSQL, within the point bound."""
    out = tmp_path / "console.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "console_pages.py"), "--devices", "300", "--alarms", "3000",
         "--days", "2.5", "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    for backend in ("sqlite", "postgresql"):
        pages = result[backend]["pages_ms"]
        assert any(page.startswith("overview") for page in pages)
        assert any("first view" in page for page in pages)  # 2.5 days: the minute rollup is used
        assert all(ms > 0 for ms in pages.values())
        assert all(0 < points <= 2000 for points in result[backend]["points"].values())
    assert "within the 200 ms target" in done.stdout or "OVER the 200 ms target" in done.stdout


def test_engine_benchmark_covers_every_kind_and_the_mixed_site() -> None:
    """The engine benchmark judges each device kind and a mixed site, and prints a rate for each."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "engine_rate.py"), "--kind", "all", "--devices", "30", "--readings",
         "3000", "--repeat", "1", "--warm-h", "0.5"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("incubator", "cryoshipper", "particle_counter", "mixed"):
        assert f"{kind} best of 1:" in done.stdout
    assert done.stdout.count("engine/baseline") >= 8  # every run and every best, each kind


@pytest.mark.slow
def test_restart_benchmark_times_a_sigkilled_collector(tmp_path: Path) -> None:
    """A small restart benchmark fills a database, SIGKILLs the collector and times it back to ready."""
    out = tmp_path / "restart.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "restart.py"), "--devices", "20", "--hours", "0.5", "--json",
         str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = json.loads(out.read_text())["runs"]
    assert run["readings"] == 20 * 180
    assert run["ready_after_sigkill_s"] > 0
    assert run["every_device_stored_s"] >= run["ready_after_sigkill_s"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # four kinds, each with its baseline, collector and latency runs
def test_ingest_benchmark_reports_each_kind_against_the_baseline(tmp_path: Path) -> None:
    """With --kind all, the ingest benchmark measures every kind and the mixed site against the baseline."""
    out = tmp_path / "ingest.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ingest.py"), "--kind", "all", "--messages", "1500", "--devices",
         "30", "--latency-s", "2", "--rate", "300", "--memory-devices", "100", "--no-postgres", "--json",
         str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = json.loads(out.read_text())["kinds"]
    assert set(kinds) == {"incubator", "cryoshipper", "particle_counter", "mixed"}
    for row in kinds.values():
        assert row["coldwatch"]["lost"] == 0
        assert row["baseline"]["messages"] == 1500
        assert row["ratio_to_baseline"] > 0
        assert row["latency"]["alarms_timed"] > 0
    assert "slowest kind:" in done.stdout


def test_ingest_benchmark_compares_collector_settings_run_after_run(tmp_path: Path) -> None:
    """--collector-only drains each load with coldwatch alone (here in batches of 7), nothing lost."""
    env = {**os.environ, "COLDWATCH_STORAGE__BATCH_MAX": "7"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ingest.py"), "--kind", "cryoshipper", "--messages", "600",
         "--devices", "20", "--collector-only", "2"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [line.split() for line in done.stdout.splitlines() if line.startswith("cryoshipper")]
    assert len(runs) == 2, done.stdout
    assert all(float(run[1].replace(",", "")) > 0 and run[-1] == "0" for run in runs), done.stdout
    assert "baseline" not in done.stdout


def test_console_http_benchmark_gets_every_page_signed_in_on_both_backends(tmp_path: Path) -> None:
    """A small HTTP console benchmark signs in and GETs every page on SQLite and PostgreSQL, data beside."""
    out = tmp_path / "console_http.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "console_http.py"), "--devices", "300", "--alarms", "3000",
         "--days", "2.5", "--audit", "2000", "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    for backend in ("sqlite", "postgresql"):
        http = result[backend]["http"]
        assert {"sign-in", "users", "audit trail", "alarm detail with chart"} <= set(http)
        assert any(page.startswith("device detail 30 days") for page in http)
        assert all(0 < h["median_ms"] <= h["p95_ms"] for h in http.values())
        assert all(h["first_ms"] > 0 and h["bytes"] > 0 for h in http.values())
        data = result[backend]["data_ms"]
        assert {page for page in data if "whole-trail verification" not in page} <= set(http)
        assert any("whole-trail verification" in page for page in data)
        assert result[backend]["audit_entries"] >= 2000
    assert "200 ms target (median)" in done.stdout
    assert "load average" in done.stdout


def test_periodic_report_benchmark_runs_on_both_backends(tmp_path: Path) -> None:
    """A small periodic report benchmark fills both backends, times the report and its baseline scan."""
    out = tmp_path / "periodic.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "periodic_report.py"), "--devices", "6", "--days", "2",
         "--interval-s", "60", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    per_device = 2 * 86_400 // 60 - 720  # every minute for two days, less a 12-hour silence
    for backend in ("sqlite", "postgresql"):
        run = result[backend]
        assert run["readings"] == 6 * per_device
        assert run["points"] == 6
        assert run["report_s"] > 0
        assert set(run["phases_s"]) == {"figures", "calibration", "charts", "pdf"}
        assert run["ratio_to_baseline"] > 0
    assert "ratio to baseline" in done.stdout


def test_memory_benchmark_prints_the_steady_state_and_judges_late_readings() -> None:
    """A small memory benchmark feeds devices past the horizon and prints their steady resident memory."""
    for where in ("database", "memory"):
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / "memory.py"), "--devices", "20", "--hours", "1.2",
             "--late-every", "50", "--late-history", where],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"late history in {where}" in done.stdout
        assert "steady state (after the horizon):" in done.stdout
        assert "too late to be judged again: 0" in done.stdout
        assert "late readings fed: 0," not in done.stdout
        if where == "database":  # every late reading judged with its history read back
            fed = re.search(r"late readings fed: ([\d,]+),", done.stdout)
            assert fed is not None
            assert f"read back from the database for late readings: {fed[1]}," in done.stdout
