"""Benchmark: readings per second through ``Engine.ingest``, in process (the daemon's hot path).

Builds the engine for 1,000 devices of a kind with its default profile and feeds it
200,000 readings in arrival order: mostly in band, with occasional excursions (and, for
incubators, door openings) so that alarms are raised and cleared, and a few readings
that arrive late (behind newer ones of their device) so that rewinds happen too. The
readings are built before the clock starts. The events are summarised by a digest, so
two runs (before and after a change to the engine) can be checked to judge alike.

    python benchmarks/engine_rate.py [--kind incubator|cryoshipper|particle_counter|mixed|all]
                                     [--devices 1000] [--readings 200000] [--repeat 3]

Rates are of CPU time (``time.process_time``: on a machine shared with other work the
clock also counts the time other processes ran; the clock's figure is printed beside it).
Each run also times a hand-written baseline on the same feed (each value against a fixed
band, a flag per device and metric: what a user would write without delays, windows or
late data) and prints the engine's rate as a fraction of the baseline's, a figure less
at the mercy of the machine than either rate.

``mixed`` is a site of the three kinds (a third each); ``all`` runs each kind and the
mixed site in turn and prints a table. A cryoshipper's 24-hour windows are warmed first
(``--warm-h``, default 24 h of readings every 10 s per device, judged before the clock
starts), so its checkpoints carry full windows as they do in a running collector.

``--late-history database`` runs the engine as the collector does by default: it holds
only the readings not yet committed, told of commits every 2,000 readings (a batch, one
behind the judging), and a late reading's rewind is given its device's committed readings
from a store. Here the store is a sorted list per device in this process, not a database,
and its own time (keeping the rows, finding a device's) is taken out of the figures:
the engine's side of a commit and of a rewind is timed, the database is not (``benchmarks/memory.py``
times it on SQLite). The events must be those of the in-memory history, digest for digest.

With ``--memory`` it measures instead (tracemalloc) the bytes the engine holds per
reading retained for rewinding, after more than a reorder horizon of readings:

    python benchmarks/engine_rate.py --memory --devices 200 --readings 200000
"""

from __future__ import annotations

import argparse
import bisect
import gc
import hashlib
import random
import sys
import time
import tracemalloc

from coldwatch.config import DeviceConfig
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.engine import Engine
from coldwatch.rules.model import US, AlarmEvent, EngineReading

T0_US = 1_800_000_000 * US
INTERVAL_US = 10 * US
LATE_EVERY = 500  # about one reading in this many arrives late
LATE_BY = (2, 30)  # ... behind this many newer readings of its device (rounds)
EXCURSION_EVERY = 2_000  # about one reading in this many starts an excursion of its device
EXCURSION_ROUNDS = (6, 40)  # lasting this many readings (the on-delay is 120 s: 12 readings)
RAMP_ROUNDS = 15  # an excursion reaches its full size over this many readings
DOOR_EVERY = 20_000  # about one reading in this many opens the door
DOOR_ROUNDS = (2, 25)


KINDS = ("incubator", "cryoshipper", "particle_counter")
PREFIX = {"incubator": "inc", "cryoshipper": "cryo", "particle_counter": "pc"}


def devices(count: int, kind: str = "incubator") -> list[DeviceConfig]:
    """``count`` devices of ``kind`` (``mixed``: the three kinds in turn)."""
    out = []
    for i in range(count):
        k = KINDS[i % 3] if kind == "mixed" else kind
        extra = {"grade": "B"} if k == "particle_counter" else {}
        out.append(
            DeviceConfig.model_validate(
                {
                    "id": f"{PREFIX[k]}-{i:05d}",
                    "kind": k,
                    "site": "s1",
                    "area": "a1",
                    "interval_s": 10,
                    **extra,
                }
            )
        )
    return out


def kind_values(kind: str, rng: random.Random, shift: float, is_open: bool) -> dict[str, float]:
    """One reading of ``kind``; ``shift`` in [-1.3, 1.3] moves it towards (or past) its limits."""
    if kind == "cryoshipper":
        return {
            "temp_c": round(-190.0 + abs(shift) * 35.0 + rng.gauss(0.0, 0.3), 2),
            "temp_b_c": round(-190.0 + rng.gauss(0.0, 0.3), 2),
            "ln2_level_pct": round(80.0 + rng.gauss(0.0, 0.2), 2),
            "tilt_deg": 2.0,
            "lid_open": 1.0 if is_open else 0.0,
            "battery_pct": 90.0,
        }
    if kind == "particle_counter":
        return {
            "particles_0_5um_m3": round(max(0.0, 1_000.0 + abs(shift) * 3_000.0 + rng.gauss(0.0, 100.0))),
            "particles_5_0um_m3": round(max(0.0, abs(shift) * 20.0 + rng.gauss(0.0, 1.0))),
        }
    return {
        "temp_c": round(37.0 + shift + rng.gauss(0.0, 0.08), 2),
        "co2_pct": round(5.0 + rng.gauss(0.0, 0.08), 2),
        "rh_pct": round(94.0 + rng.gauss(0.0, 0.5), 1),
        "door_open": 1.0 if is_open else 0.0,
    }


def readings(
    count: int, device_ids: list[str], seed: int = 1, kinds: dict[str, str] | None = None
) -> list[EngineReading]:
    """``count`` readings of ``device_ids``, round by round, in arrival order (incubators by default)."""
    rng = random.Random(seed)
    rounds = -(-count // len(device_ids))
    # device: (first round, last round, temp shift, co2 shift)
    excursion: dict[str, tuple[int, int, float, float]] = {}
    door: dict[str, int] = {}  # device: until round
    held: list[tuple[int, EngineReading]] = []  # (round it arrives in, reading held back)
    out: list[EngineReading] = []
    for r in range(rounds):
        for index, device_id in enumerate(device_ids):
            ts_us = T0_US + r * INTERVAL_US + index * 7_000  # devices a little apart
            if device_id not in excursion and rng.randrange(EXCURSION_EVERY) == 0:
                shift = rng.choice([0.7, 1.3, -0.7, -1.3])
                on_co2 = rng.random() < 0.3
                excursion[device_id] = (
                    r,
                    r + rng.randint(*EXCURSION_ROUNDS),
                    0.0 if on_co2 else shift,
                    shift if on_co2 else 0.0,
                )
            if device_id not in door and rng.randrange(DOOR_EVERY) == 0:
                door[device_id] = r + rng.randint(*DOOR_ROUNDS)
            began, until, temp_shift, co2_shift = excursion.get(device_id, (r, r, 0.0, 0.0))
            if until <= r:
                excursion.pop(device_id, None)
                temp_shift = co2_shift = 0.0
            ramp = min(1.0, (r - began + 1) / RAMP_ROUNDS)  # through alert to action: severity changes
            temp_shift, co2_shift = temp_shift * ramp, co2_shift * ramp
            is_open = door.get(device_id, r) > r
            if not is_open:
                door.pop(device_id, None)
            kind = "incubator" if kinds is None else kinds[device_id]
            if kind == "incubator":  # as it always was: digests compare across versions
                values = {
                    "temp_c": round(37.0 + temp_shift + rng.gauss(0.0, 0.08), 2),
                    "co2_pct": round(5.0 + co2_shift + rng.gauss(0.0, 0.08), 2),
                    "rh_pct": round(94.0 + rng.gauss(0.0, 0.5), 1),
                    "door_open": 1.0 if is_open else 0.0,
                }
            else:
                values = kind_values(kind, rng, temp_shift or co2_shift, is_open)
            received_us = ts_us + 20_000
            if rng.randrange(LATE_EVERY) == 0:
                arrives = r + rng.randint(*LATE_BY)
                late = EngineReading(device_id, ts_us, values, r, buffered=True, received_us=received_us)
                held.append((arrives, late))
                continue
            out.append(EngineReading(device_id, ts_us, values, r, received_us=received_us))
        due = [reading for arrives, reading in held if arrives <= r]
        held = [(arrives, reading) for arrives, reading in held if arrives > r]
        out += due
    out += [reading for _, reading in held]
    return out[:count]


def digest(events: list[AlarmEvent]) -> str:
    """A short fingerprint of the events (kind, key, time, severity, value, limit, late)."""
    h = hashlib.sha256()
    for e in events:
        h.update(repr((e.identity(), e.value, e.limit, e.late, e.detail)).encode())
        if e.revokes is not None:
            h.update(repr(e.revokes.identity()).encode())
    return h.hexdigest()[:16]


def warm_feed(fleet: list[DeviceConfig], hours: float) -> list[EngineReading]:
    """``hours`` of quiet readings every 10 s of each cryoshipper, ending where the feed starts."""
    rng = random.Random(0)
    rounds = round(hours * 360)
    out = []
    for r in range(-rounds, 0):
        for index, device in enumerate(fleet):
            if device.kind == "cryoshipper":
                ts_us = T0_US + r * INTERVAL_US + index * 7_000
                out.append(EngineReading(device.id, ts_us, kind_values("cryoshipper", rng, 0.0, False), r))
    return out


BATCH = 2_000  # readings a commit (the collector's storage.batch_max)


class Committed:
    """The readings committed, per device in (ts, seq) order: a stand-in for the database."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, int, EngineReading]]] = {}
        # CPU and clock seconds spent here, in what stands in for the database (not timed).
        self.spent_cpu = self.spent_wall = 0.0

    def commit(self, engine: Engine, readings: list[EngineReading]) -> None:
        began, began_cpu = time.perf_counter(), time.process_time()
        for r in readings:
            rows = self.rows.setdefault(r.device_id, [])
            row = (r.ts_us, r.seq, r)
            if not rows or rows[-1][:2] < row[:2]:
                rows.append(row)
            else:
                index = bisect.bisect_left(rows, row[:2])
                if index == len(rows) or rows[index][:2] != row[:2]:  # a copy is stored once
                    rows.insert(index, row)
        self.spent_wall += time.perf_counter() - began
        self.spent_cpu += time.process_time() - began_cpu
        engine.committed((r.device_id, r.ts_us, r.seq) for r in readings)  # the engine's part: timed

    def since(self, device_id: str, since_us: int) -> list[EngineReading]:
        began, began_cpu = time.perf_counter(), time.process_time()
        rows = self.rows.get(device_id, [])
        out = [r for _, _, r in rows[bisect.bisect_left(rows, (since_us,)) :]]
        self.spent_wall += time.perf_counter() - began
        self.spent_cpu += time.process_time() - began_cpu
        return out


def ingest_stored(engine: Engine, feed: list[EngineReading], store: Committed) -> list[AlarmEvent]:
    """Judge ``feed`` as the collector does with its history in the database."""
    ingest, wanted_for, give = engine.ingest, engine.stored_wanted, engine.give_stored
    events: list[AlarmEvent] = []
    judged: list[EngineReading] = []
    for start in range(0, len(feed), BATCH):
        batch = feed[start : start + BATCH]
        for reading in batch:
            wanted = wanted_for(reading.device_id, reading.ts_us, reading.seq)
            if wanted is not None:
                give(wanted, store.since(wanted.device_id, wanted.since_us))
            events += ingest(reading)
        store.commit(engine, judged)
        judged = batch
    store.commit(engine, judged)
    return events


def run_once(
    fleet: list[DeviceConfig],
    feed: list[EngineReading],
    warm: list[EngineReading] | None = None,
    *,
    stored: bool = False,
) -> tuple[float, float, list[AlarmEvent], int]:
    """Seconds (wall, CPU) to ingest ``feed`` into a fresh engine (warmed first); the events; readings too late."""
    engine = Engine(fleet, RulesConfig(), started_us=T0_US, stored_history=stored)
    store = Committed()
    if warm:
        engine.ingest_many(warm)
        if stored:
            store.commit(engine, warm)
    store.spent_cpu = store.spent_wall = 0.0
    # The feed (hundreds of thousands of readings built beforehand) is the benchmark's, not
    # the collector's: kept out of the garbage collector's sight, as a collector never holds
    # it, so that its collections are not timed walking it.
    gc.collect()
    gc.freeze()
    ingest = engine.ingest
    events: list[AlarmEvent] = []
    began, began_cpu = time.perf_counter(), time.process_time()
    if stored:
        events = ingest_stored(engine, feed, store)
    else:
        for reading in feed:
            events += ingest(reading)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    elapsed, cpu = (
        elapsed - store.spent_wall,
        cpu - store.spent_cpu,
    )  # the stand-in store's time is not the engine's
    gc.unfreeze()
    return elapsed, cpu, events, engine.too_late()


def hand_written_limits(fleet: list[DeviceConfig]) -> dict[str, tuple[float, float]]:
    """Per metric, the band between the device profiles' tightest low and high value limits."""
    bands: dict[str, tuple[float, float]] = {}
    engine = Engine(fleet, RulesConfig(), started_us=T0_US)
    for _, metric, _, _, direction, value in engine.limits():
        low, high = bands.get(metric, (-float("inf"), float("inf")))
        bands[metric] = (max(low, value), high) if direction == "low" else (low, min(high, value))
    return bands


def hand_written(feed: list[EngineReading], bands: dict[str, tuple[float, float]]) -> float:
    """CPU seconds of the baseline: what a user would write instead of the engine, on the same feed.

    Each value against a fixed band, an alarm flag per device and metric that flips when
    the value leaves or re-enters its band: no delays, margins, windows, late data or
    checkpoints. Measured in the same run as the engine, so that the ratio between the
    two says more than either figure on a machine shared with other work.
    """
    raised: dict[tuple[str, str], bool] = {}
    flips = 0
    began = time.process_time()
    for reading in feed:
        device_id = reading.device_id
        for metric, value in reading.values.items():
            band = bands.get(metric)
            if band is None:
                continue
            out = value < band[0] or value > band[1]
            key = (device_id, metric)
            if out != raised.get(key, False):
                raised[key] = out
                flips += 1
    return time.process_time() - began


def measure_memory(fleet: list[DeviceConfig], feed: list[EngineReading]) -> None:
    """Print the bytes the engine's state grew by per reading it retains for rewinding."""
    tracemalloc.start()
    engine = Engine(fleet, RulesConfig(), started_us=T0_US)
    empty = tracemalloc.get_traced_memory()[0]
    for reading in feed:
        engine.ingest(reading)
    held = tracemalloc.get_traced_memory()[0] - empty
    tracemalloc.stop()
    retained = sum(len(device.history) for device in engine.devices.values())
    span_s = (max(r.ts_us for r in feed) - min(r.ts_us for r in feed)) / US
    print(
        f"{len(fleet)} devices, {len(feed):,} readings over {span_s / 3600:.2f} h: "
        f"{retained:,} retained for rewinding, engine state grew {held / 1e6:.1f} MB, "
        f"{held / retained:.1f} bytes per retained reading"
    )


def measure_kind(args: argparse.Namespace, kind: str) -> tuple[float, float, bool]:
    """Print the runs of one kind; (best readings per second, the baseline's, whether the runs agreed)."""
    fleet = devices(args.devices, kind)
    kinds: dict[str, str] = {d.id: d.kind for d in fleet}
    feed = readings(args.readings, [d.id for d in fleet], args.seed, None if kind == "incubator" else kinds)
    warm = warm_feed(fleet, args.warm_h) if args.warm_h > 0 else []
    late = sum(r.buffered for r in feed)
    bands = hand_written_limits(fleet)
    best = best_wall = best_baseline = float("inf")
    fingerprints = set()
    for attempt in range(args.repeat):
        elapsed, cpu, events, too_late = run_once(fleet, feed, warm, stored=args.late_history == "database")
        baseline = hand_written(feed, bands)
        best, best_wall, best_baseline = min(best, cpu), min(best_wall, elapsed), min(best_baseline, baseline)
        fingerprints.add(digest(events))
        counts: dict[str, int] = {}
        for e in events:
            counts[e.kind.value] = counts.get(e.kind.value, 0) + 1
        print(
            f"{kind} run {attempt + 1}: {len(feed) / cpu:>10,.0f} readings/s of CPU time "
            f"({len(feed) / elapsed:,.0f} by the clock; {cpu / len(feed) * 1e6:.2f} us/reading; "
            f"{len(events)} events {counts}; {late} late, {too_late} too late; digest {digest(events)}); "
            f"hand-written baseline {len(feed) / baseline:,.0f} readings/s, "
            f"engine/baseline {baseline / cpu:.3f}"
        )
    print(
        f"{kind} best of {args.repeat}: {len(feed) / best:,.0f} readings/s of CPU time "
        f"({best / len(feed) * 1e6:.2f} us/reading; best by the clock {len(feed) / best_wall:,.0f}); "
        f"hand-written baseline {len(feed) / best_baseline:,.0f} readings/s, "
        f"engine/baseline {best_baseline / best:.3f}"
    )
    return len(feed) / best, len(feed) / best_baseline, len(fingerprints) == 1


def main() -> int:
    """Run the benchmark and print readings per second (the best of ``--repeat`` runs)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=[*KINDS, "mixed", "all"], default="incubator")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warm-h", type=float, default=2.0, help="hours of cryoshipper history judged first")
    parser.add_argument("--memory", action="store_true", help="measure bytes per retained reading")
    parser.add_argument(
        "--late-history",
        choices=["memory", "database"],
        default="memory",
        help="where the horizon's readings are (database: the collector's default, served from a list here)",
    )
    args = parser.parse_args()
    if args.memory:
        kind = "incubator" if args.kind == "all" else args.kind
        fleet = devices(args.devices, kind)
        of_device: dict[str, str] = {d.id: d.kind for d in fleet}
        feed = readings(
            args.readings, [d.id for d in fleet], args.seed, None if kind == "incubator" else of_device
        )
        measure_memory(fleet, feed)
        return 0
    kinds = [*KINDS, "mixed"] if args.kind == "all" else [args.kind]
    rates: dict[str, tuple[float, float]] = {}
    agreed = True
    for kind in kinds:
        rate, baseline, same = measure_kind(args, kind)
        rates[kind] = (rate, baseline)
        agreed = agreed and same
    if len(kinds) > 1:
        print(f"{'kind':<18}{'readings/s (CPU)':>18}{'baseline':>14}{'ratio':>8}")
        for kind, (rate, baseline) in rates.items():
            print(f"{kind:<18}{rate:>18,.0f}{baseline:>14,.0f}{rate / baseline:>8.3f}")
    if not agreed:
        print("runs disagree on the events", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
