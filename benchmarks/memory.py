"""Benchmark: resident memory of the rules engine in steady state, devices reporting for hours.

Builds the engine for N devices of a kind (10,000 incubators by default) with the default
rules and reorder horizon (1 hour), and feeds every device a reading every 10 s, round
by round, for longer than the horizon; a few readings arrive late (behind newer ones of
their device, within the horizon) so that rewinds happen as in a running collector. It
prints the process's resident memory (``VmRSS``) every 10 minutes of device time, what
the rule history kept for late data holds (readings and bytes of their arrays), and the
resident memory in steady state (after the horizon), which is what must stay within the
200 MB target. The readings are made one round at a time and not kept, so the figure is
the engine's state plus the interpreter and its libraries (measured at the start and
printed as the baseline of the same run).

    python benchmarks/memory.py [--devices 10000] [--kind incubator|cryoshipper|particle_counter|mixed]
                                [--hours 1.5] [--late-every 500]

It measures the engine in process, not the whole collector: the collector adds its MQTT
reader, database writer and metrics (``benchmarks/ingest.py`` measures its peak with
10,000 devices); the engine's state is what grows with time.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_rate import INTERVAL_US, T0_US, devices, kind_values

from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.model import US, EngineReading

LATE_BY_ROUNDS = (2, 30)


def resident_mb() -> float:
    """Resident memory of the running process, MB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def history_held(engine: Engine) -> tuple[int, int]:
    """(readings, bytes) the devices' rule history holds for late data (its arrays' contents)."""
    readings = 0
    size = 0
    for device in engine.devices.values():
        history = device.history
        readings += len(history)
        for column in (history._ts, history._seq, history._values):  # noqa: SLF001 - measuring it
            size += len(column) * column.itemsize
    return readings, size


def main() -> int:
    """Feed the engine and print its resident memory over time."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument(
        "--kind", choices=["incubator", "cryoshipper", "particle_counter", "mixed"], default="incubator"
    )
    parser.add_argument("--hours", type=float, default=1.5, help="device time fed (longer than the horizon)")
    parser.add_argument("--late-every", type=int, default=500, help="about one reading in this many is late")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fleet = devices(args.devices, args.kind)
    gc.collect()
    before = resident_mb()
    rules = RulesConfig()
    engine = Engine(fleet, rules, started_us=T0_US)
    gc.collect()
    built = resident_mb()
    print(
        f"{args.devices:,} {args.kind} devices, a reading every {INTERVAL_US // US} s, reorder horizon "
        f"{rules.reorder_horizon_s:g} s; resident {before:.0f} MB before the engine, {built:.0f} MB with it"
    )
    print(
        f"{'device time':>12}{'resident MB':>13}{'history readings':>18}{'history MB':>12}{'B/reading':>11}"
    )
    rounds = round(args.hours * 3600 * US / INTERVAL_US)
    report_every = round(600 * US / INTERVAL_US)
    held: list[tuple[int, EngineReading]] = []
    late = 0
    steady: list[float] = []
    for r in range(rounds):
        for index, device in enumerate(fleet):
            ts_us = T0_US + r * INTERVAL_US + index * 7_000
            reading = EngineReading(device.id, ts_us, kind_values(device.kind, rng, 0.0, False), r)
            if rng.randrange(args.late_every) == 0:
                held.append((r + rng.randint(*LATE_BY_ROUNDS), reading))
                continue
            engine.ingest(reading)
        due = [reading for at, reading in held if at <= r]
        held = [(at, reading) for at, reading in held if at > r]
        for reading in due:
            engine.ingest(reading)
        late += len(due)
        if (r + 1) % report_every == 0 or r + 1 == rounds:
            gc.collect()
            rss = resident_mb()
            readings, size = history_held(engine)
            hours = (r + 1) * INTERVAL_US / US / 3600
            if hours > rules.reorder_horizon_s / 3600:
                steady.append(rss)
            print(
                f"{hours:>11.2f}h{rss:>13.0f}{readings:>18,}{size / 1e6:>12.1f}{size / max(readings, 1):>11.1f}"
            )
    print(f"late readings fed: {late:,}, too late to be judged again: {engine.too_late():,}")
    if steady:
        print(
            f"steady state (after the horizon): {max(steady):.0f} MB resident at most "
            f"({max(steady) - before:.0f} MB over the {before:.0f} MB of the interpreter and its libraries); "
            f"target at most 200 MB: {'met' if max(steady) <= 200 else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
