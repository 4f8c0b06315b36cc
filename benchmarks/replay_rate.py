"""Benchmark: replay rate of 30 days of 1 Hz readings for one device, batched vs reading by reading.

Prints readings per second for each device kind; the reading-by-reading engine (the
daemon's own path) is measured on the first day of the same data, as the baseline of
this run, and its alarms are compared with the batched ones on that day.

    python benchmarks/replay_rate.py [--days 30] [--baseline-days 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from coldwatch.replay.runner import alarm_records, engine_events, run_scenario
from coldwatch.replay.scenario import LoadedScenario, Scenario, _resolve
from coldwatch.replay.timeline import build_streams

TARGET_PER_S = 250_000

SIGNALS: dict[str, dict[str, Any]] = {
    "cryoshipper": {
        "metrics": {
            "temp_c": [
                {"noise": {"mean": -185.0, "sd": 0.3, "seed": 1, "for": "10d"}},
                {"ramp": {"to": -140.0, "over": "2h"}},
                {"hold": {"for": "1h"}},
                {"ramp": {"to": -185.0, "over": "1h"}},
                {"noise": {"mean": -185.0, "sd": 0.3, "seed": 2, "for": "30d"}},
            ],
            "temp_b_c": [{"noise": {"mean": -186.0, "sd": 0.3, "seed": 3, "for": "30d"}}],
            "ln2_level_pct": [{"ramp": {"from": 95.0, "to": 40.0, "over": "30d"}}],
            "tilt_deg": [{"noise": {"mean": 3.0, "sd": 0.5, "seed": 4, "for": "30d"}}],
            "battery_pct": [{"ramp": {"from": 100.0, "to": 60.0, "over": "30d"}}],
        },
        "lid": [{"at": "20d", "for": "8m"}],
    },
    "incubator": {
        "metrics": {
            "temp_c": [
                {"noise": {"mean": 37.0, "sd": 0.05, "seed": 1, "for": "12d"}},
                {"ramp": {"to": 38.6, "over": "20m"}},
                {"hold": {"for": "30m"}},
                {"step": {"to": 37.0, "for": "1h"}},
                {"noise": {"mean": 37.0, "sd": 0.05, "seed": 2, "for": "30d"}},
            ],
            "co2_pct": [{"noise": {"mean": 5.0, "sd": 0.05, "seed": 3, "for": "30d"}}],
            "rh_pct": [{"noise": {"mean": 94.0, "sd": 0.5, "seed": 4, "for": "30d"}}],
        },
        "door": [{"at": "5d", "for": "2m"}, {"at": "20d", "for": "12m"}],
    },
    "particle_counter": {
        "metrics": {
            "particles_0_5um_m3": [
                {"noise": {"mean": 1200.0, "sd": 300.0, "seed": 1, "for": "30d"}},
            ],
            "particles_5_0um_m3": [{"noise": {"mean": 4.0, "sd": 5.0, "seed": 2, "for": "30d"}}],
        },
    },
}


def scenario(kind: str, days: float) -> LoadedScenario:
    """A ``days``-long 1 Hz scenario of one device of ``kind``."""
    device: dict[str, Any] = {"id": f"{kind}-1", "kind": kind, "site": "s1", "area": "a1"}
    if kind == "particle_counter":
        device["grade"] = "B"
    spec = Scenario.model_validate(
        {
            "name": f"bench-{kind}",
            "duration": days * 86400,
            "devices": [device],
            "timeline": {device["id"]: {"interval": 1, **SIGNALS[kind]}},
            "expect": [{"id": "BENCH", "device": device["id"], "rule": "device/comm_loss", "never": True}],
        }
    )
    return _resolve(Path(f"{kind}.yaml"), spec, json.dumps(SIGNALS[kind]))


def main() -> int:
    """Run the benchmark; exit 1 when the batched path disagrees with the reading-by-reading one."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--baseline-days", type=float, default=1.0)
    parser.add_argument("--kinds", nargs="+", default=list(SIGNALS))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = []
    agree = True
    for kind in args.kinds:
        full = scenario(kind, args.days)
        streams = build_streams(full.scenario)
        began = time.perf_counter()
        result = run_scenario(full, mode="batched", streams=streams)
        batched_s = time.perf_counter() - began
        n = result.readings
        small = scenario(kind, args.baseline_days)
        small_streams = build_streams(small.scenario)
        m = sum(len(s) for s in small_streams.values())
        began = time.perf_counter()
        emitted = engine_events(small, small_streams)
        reading_s = time.perf_counter() - began
        check = run_scenario(small, mode="batched", streams=small_streams)
        from coldwatch.replay.runner import _apply  # noqa: PLC0415

        reference = alarm_records(_apply(small, emitted)[0], small.scenario.start_us)
        same = reference == check.alarms
        agree &= same
        rows.append(
            {
                "kind": kind,
                "readings": n,
                "alarms": len(result.alarms),
                "batched_s": round(batched_s, 3),
                "batched_per_s": round(n / batched_s),
                "reading_by_reading_per_s": round(m / reading_s),
                "speed_up": round((n / batched_s) / (m / reading_s), 1),
                "target_per_s": TARGET_PER_S,
                "meets_target": n / batched_s >= TARGET_PER_S,
                "same_alarms_on_baseline_days": same,
            }
        )
    print(
        f"{'device kind':<18}{'readings':>12}{'alarms':>8}{'batched/s':>14}{'reading/s':>12}{'x':>7}  target"
    )
    for r in rows:
        print(
            f"{r['kind']:<18}{r['readings']:>12,}{r['alarms']:>8}{r['batched_per_s']:>14,}"
            f"{r['reading_by_reading_per_s']:>12,}{r['speed_up']:>7}  "
            f"{'met' if r['meets_target'] else 'MISSED'} ({TARGET_PER_S:,}/s); "
            f"same alarms: {r['same_alarms_on_baseline_days']}"
        )
    if args.json:
        with Path(args.json).open("w", encoding="utf-8") as out:
            json.dump({"benchmark": "replay_rate", "days": args.days, "rows": rows}, out, indent=2)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
