"""Benchmark: readings per second through ``Engine.ingest``, in process (the daemon's hot path).

Builds the engine for 1,000 incubators with the default incubator profile and feeds it
200,000 readings (four values each) in arrival order: mostly in band, with occasional
excursions and door openings so that alarms are raised and cleared, and a few readings
that arrive late (behind newer ones of their device) so that rewinds happen too. The
readings are built before the clock starts. The events are summarised by a digest, so
two runs (before and after a change to the engine) can be checked to judge alike.

    python benchmarks/engine_rate.py [--devices 1000] [--readings 200000] [--repeat 3]

With ``--memory`` it measures instead (tracemalloc) the bytes the engine holds per
reading retained for rewinding, after more than a reorder horizon of readings:

    python benchmarks/engine_rate.py --memory --devices 200 --readings 200000
"""

from __future__ import annotations

import argparse
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


def devices(count: int) -> list[DeviceConfig]:
    """``count`` incubators."""
    return [
        DeviceConfig(id=f"inc-{i:05d}", kind="incubator", site="s1", area="a1", interval_s=10)
        for i in range(count)
    ]


def readings(count: int, device_ids: list[str], seed: int = 1) -> list[EngineReading]:
    """``count`` readings of ``device_ids``, round by round, in arrival order."""
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
            values = {
                "temp_c": round(37.0 + temp_shift + rng.gauss(0.0, 0.08), 2),
                "co2_pct": round(5.0 + co2_shift + rng.gauss(0.0, 0.08), 2),
                "rh_pct": round(94.0 + rng.gauss(0.0, 0.5), 1),
                "door_open": 1.0 if is_open else 0.0,
            }
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


def run_once(fleet: list[DeviceConfig], feed: list[EngineReading]) -> tuple[float, list[AlarmEvent], int]:
    """Seconds to ingest ``feed`` into a fresh engine; the events; readings too late to judge."""
    engine = Engine(fleet, RulesConfig(), started_us=T0_US)
    ingest = engine.ingest
    events: list[AlarmEvent] = []
    began = time.perf_counter()
    for reading in feed:
        events += ingest(reading)
    elapsed = time.perf_counter() - began
    return elapsed, events, engine.too_late()


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


def main() -> int:
    """Run the benchmark and print readings per second (the best of ``--repeat`` runs)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="measure bytes per retained reading")
    args = parser.parse_args()
    fleet = devices(args.devices)
    feed = readings(args.readings, [d.id for d in fleet], args.seed)
    if args.memory:
        measure_memory(fleet, feed)
        return 0
    late = sum(r.buffered for r in feed)
    best = float("inf")
    fingerprints = set()
    for attempt in range(args.repeat):
        elapsed, events, too_late = run_once(fleet, feed)
        best = min(best, elapsed)
        fingerprints.add(digest(events))
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e.kind.value] = kinds.get(e.kind.value, 0) + 1
        print(
            f"run {attempt + 1}: {len(feed) / elapsed:>10,.0f} readings/s  ({elapsed:.3f} s, "
            f"{elapsed / len(feed) * 1e6:.2f} us/reading; {len(events)} events {kinds}; "
            f"{late} late, {too_late} too late; digest {digest(events)})"
        )
    print(
        f"best of {args.repeat}: {len(feed) / best:,.0f} readings/s ({best / len(feed) * 1e6:.2f} us/reading)"
    )
    if len(fingerprints) != 1:
        print("runs disagree on the events", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
