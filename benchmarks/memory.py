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

With ``--late-history database`` (the collector's default) the engine keeps only the
readings not yet committed, as the collector does: every round is written to a real
SQLite database through the collector's storage (one round behind the judging, as the
collector's pipeline commits one batch while the next is judged), and a late reading's
rewind reads its device's readings back from it. The database's connection and page
cache are in the process and counted. ``--late-history memory`` keeps the horizon's
readings in the engine (no database).

    python benchmarks/memory.py [--devices 10000] [--kind incubator|cryoshipper|particle_counter|mixed]
                                [--hours 1.5] [--late-every 500] [--late-history database|memory]

It measures the engine in process (with the storage in database mode), not the whole
collector: the collector adds its MQTT reader, queue and metrics (``benchmarks/ingest.py``
measures its peak with 10,000 devices); the engine's state is what grows with time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_rate import INTERVAL_US, T0_US, devices, kind_values

from coldwatch.config import DeviceConfig
from coldwatch.payload import Telemetry
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.model import US, EngineReading
from coldwatch.storage import Batch, Storage, open_storage

LATE_BY_ROUNDS = (2, 30)


def resident_mb() -> float:
    """Resident memory of the running process, MB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def history_held(engine: Engine) -> tuple[int, int]:
    """(readings, bytes) the devices' rule history holds for late data (its arrays' contents).

    With the history in the database: the readings pending (judged, not yet committed),
    at the size of their arrays in memory mode (they are held as readings, larger).
    """
    readings = 0
    size = 0
    for device in engine.devices.values():
        if device.stored is not None:
            readings += len(device.stored.pending)
            continue
        history = device.history
        readings += len(history)
        for column in (history._ts, history._seq, history._values):  # noqa: SLF001 - measuring it
            size += len(column) * column.itemsize
    return readings, size


class Database:
    """The collector's storage for the engine's readings, committed one round behind the judging."""

    def __init__(self, store: Storage, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self.judged: list[EngineReading] = []  # the round judged, whose commit comes next
        self.read_back = 0
        self.read_s: list[float] = []  # each read back's time
        self.read_rows = 0

    async def judge(self, engine: Engine, readings: list[EngineReading]) -> None:
        """Judge a round (reading back a late reading's history first), then commit the one before."""
        for reading in readings:
            wanted = engine.stored_wanted(reading.device_id, reading.ts_us, reading.seq)
            if wanted is not None:
                started = time.perf_counter()
                rows = [
                    r
                    async for r in self.store.readings_since(
                        wanted.device_id, wanted.since_us, after_seq=wanted.after[1]
                    )
                ]
                self.read_s.append(time.perf_counter() - started)
                self.read_rows += len(rows)
                engine.give_stored(wanted, rows)
                self.read_back += 1
            engine.ingest(reading)
        await self.commit()
        self.judged = readings

    async def commit(self) -> None:
        batch = Batch()
        for r in self.judged:
            batch.readings.append(
                (Telemetry(r.device_id, r.seq, r.ts_us, False, tuple(r.values.items())), r.ts_us)
            )
        if batch.readings:
            await self.store.write_batch(batch)
        self.engine.committed((r.device_id, r.ts_us, r.seq) for r in self.judged)
        self.judged = []


class InMemory:
    """The engine alone: it keeps the horizon's readings itself."""

    read_back = 0

    async def judge(self, engine: Engine, readings: list[EngineReading]) -> None:
        for reading in readings:
            engine.ingest(reading)

    async def commit(self) -> None:
        return None


class Fleet:
    """Readings of every device, a round every 10 s; about one in ``late_every`` held back for a while."""

    def __init__(self, fleet: list[DeviceConfig], rng: random.Random, late_every: int) -> None:
        self.fleet = fleet
        self.rng = rng
        self.late_every = late_every
        self.held: list[tuple[int, EngineReading]] = []
        self.late = 0

    def round(self, r: int) -> list[EngineReading]:
        """Round ``r``'s readings in arrival order: those on time, then those due late."""
        rng = self.rng
        fed: list[EngineReading] = []
        for index, device in enumerate(self.fleet):
            ts_us = T0_US + r * INTERVAL_US + index * 7_000
            reading = EngineReading(device.id, ts_us, kind_values(device.kind, rng, 0.0, False), r)
            if rng.randrange(self.late_every) == 0:
                self.held.append((r + rng.randint(*LATE_BY_ROUNDS), reading))
                continue
            fed.append(reading)
        due = [reading for at, reading in self.held if at <= r]
        self.held = [(at, reading) for at, reading in self.held if at > r]
        self.late += len(due)
        return fed + due


def main() -> int:
    """Feed the engine and print its resident memory over time."""
    return asyncio.run(run())


async def run() -> int:
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
    parser.add_argument(
        "--late-history",
        choices=["database", "memory"],
        default="database",
        help="where the horizon's readings are kept (rules.late_history; database: a real SQLite file)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cw-memory-") as scratch:
        return await feed(args, Path(scratch))


async def feed(args: argparse.Namespace, scratch: Path) -> int:
    """The benchmark itself, its database (if any) in ``scratch``."""
    fleet = devices(args.devices, args.kind)
    store: Storage | None = None
    if args.late_history == "database":
        store = open_storage(scratch / "coldwatch.db")
        await store.open()
        await store.register_devices(fleet)
    gc.collect()
    before = resident_mb()
    rules = RulesConfig(late_history=args.late_history)
    engine = Engine(fleet, rules, started_us=T0_US, stored_history=store is not None)
    judge: Database | InMemory = InMemory() if store is None else Database(store, engine)
    gc.collect()
    built = resident_mb()
    print(
        f"{args.devices:,} {args.kind} devices, a reading every {INTERVAL_US // US} s, reorder horizon "
        f"{rules.reorder_horizon_s:g} s, late history in {args.late_history}"
        f"{' (SQLite, committed a round behind)' if store is not None else ''}; "
        f"resident {before:.0f} MB before the engine, {built:.0f} MB with it"
    )
    held = "pending readings" if store is not None else "history readings"
    print(f"{'device time':>12}{'resident MB':>13}{held:>18}{'history MB':>12}{'B/reading':>11}")
    rounds = round(args.hours * 3600 * US / INTERVAL_US)
    report_every = round(600 * US / INTERVAL_US)
    source = Fleet(fleet, random.Random(args.seed), args.late_every)
    steady: list[float] = []
    for r in range(rounds):
        await judge.judge(engine, source.round(r))
        if (r + 1) % report_every == 0 or r + 1 == rounds:
            gc.collect()
            rss = resident_mb()
            readings, size = history_held(engine)
            hours = (r + 1) * INTERVAL_US / US / 3600
            if hours > rules.reorder_horizon_s / 3600:
                steady.append(rss)
            if store is not None:  # held as readings until committed, not in arrays
                print(f"{hours:>11.2f}h{rss:>13.0f}{readings:>18,}{'-':>12}{'-':>11}")
                continue
            print(
                f"{hours:>11.2f}h{rss:>13.0f}{readings:>18,}{size / 1e6:>12.1f}{size / max(readings, 1):>11.1f}"
            )
    await judge.commit()
    print(f"late readings fed: {source.late:,}, too late to be judged again: {engine.too_late():,}")
    if isinstance(judge, Database) and judge.read_s:
        times = sorted(judge.read_s)
        print(
            f"histories read back from the database for late readings: {judge.read_back:,}, "
            f"{judge.read_rows / judge.read_back:.0f} readings each on average; time a read: median "
            f"{statistics.median(times) * 1e3:.2f} ms, p99 {times[int(len(times) * 0.99)] * 1e3:.2f} ms, "
            f"most {times[-1] * 1e3:.2f} ms"
        )
    if store is not None:
        await store.close()
    if steady:
        print(
            f"steady state (after the horizon): {max(steady):.0f} MB resident at most "
            f"({max(steady) - before:.0f} MB over the {before:.0f} MB of the interpreter and its libraries); "
            f"target at most 200 MB: {'met' if max(steady) <= 200 else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
