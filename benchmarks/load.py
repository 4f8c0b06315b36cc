"""Load generator for the ingest benchmark: several processes publishing QoS 1 telemetry.

Each process owns a slice of the devices and publishes with paho's own network loop
(many messages in flight), as fast as the broker takes them or at a fixed rate. Every
message carries the values of its device's kind (an incubator four, a cryoshipper six,
a particle counter two; a ``mixed`` site has the three kinds in turn) and the time it was
published as its device timestamp.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "KINDS",
    "LIMITS",
    "LoadSpec",
    "device_ids",
    "device_kind",
    "kind_of",
    "publish_load",
    "topic",
    "values_per_message",
]

SITE, AREA, KIND = "bench", "floor1", "incubator"
KINDS = ("incubator", "cryoshipper", "particle_counter")
_ID_PREFIX = {"incubator": "inc", "cryoshipper": "cryo", "particle_counter": "pc"}
VALUES_PER_MESSAGE = {"incubator": 4, "cryoshipper": 6, "particle_counter": 2}


def kind_of(kind: str, index: int) -> str:
    """The kind of device ``index`` of a load of ``kind`` (``mixed``: the three in turn)."""
    return KINDS[index % 3] if kind == "mixed" else kind


def device_ids(count: int, kind: str = KIND) -> list[str]:
    """The benchmark's device ids (the kind is in the id's prefix)."""
    return [f"{_ID_PREFIX[kind_of(kind, i)]}-{i:05d}" for i in range(count)]


def device_kind(device_id: str) -> str:
    """The kind of a benchmark device, from its id."""
    prefix = device_id.split("-", 1)[0]
    return next(k for k, p in _ID_PREFIX.items() if p == prefix)


def topic(prefix: str, device_id: str) -> str:
    """The telemetry topic of a benchmark device."""
    return f"{prefix}/{SITE}/{AREA}/{device_kind(device_id)}/{device_id}/telemetry"


def values_per_message(kind: str, devices: int, messages: int | None = None, processes: int = 4) -> float:
    """Values a message carries on average in a load of ``kind`` (of ``messages``, as published)."""
    ids = device_ids(devices, kind)
    if messages is None:
        return sum(VALUES_PER_MESSAGE[device_kind(d)] for d in ids) / len(ids)
    total = 0
    for part in range(processes):  # as the publishers share the devices and messages out
        mine = ids[part::processes]
        count = messages // processes + (1 if part < messages % processes else 0)
        total += sum(VALUES_PER_MESSAGE[device_kind(mine[n % len(mine)])] for n in range(count))
    return total / messages


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to publish: ``messages`` over ``devices``, from ``processes`` publishers."""

    host: str
    port: int
    prefix: str
    devices: int
    messages: int
    processes: int = 4
    rate_per_s: float = 0.0  # 0: as fast as possible
    excursion_every: int = 0  # every N-th message of a device reads 45 C (raises an alarm)
    first_seq: int = 0
    kind: str = KIND  # a device kind, or "mixed"


def _values(kind: str, seq: int, excursion: bool) -> dict[str, float | bool]:
    """One message's values; an excursion crosses the kind's benchmark limit (see ``LIMITS``)."""
    wobble = (seq % 7) * 0.01
    if kind == "cryoshipper":
        return {
            "temp_c": -120.0 if excursion else -190.0 + wobble,
            "temp_b_c": -190.0 + wobble,
            "ln2_level_pct": 80.0 - wobble,
            "tilt_deg": 2.0,
            "lid_open": False,
            "battery_pct": 90.0,
        }
    if kind == "particle_counter":
        return {
            "particles_0_5um_m3": 9_000_000.0 if excursion else 1_000.0 + seq % 7,
            "particles_5_0um_m3": 0.0,
        }
    return {
        "temp_c": 45.0 if excursion else 37.0 + wobble,
        "co2_pct": 5.0,
        "rh_pct": 94.5,
        "door_open": False,
    }


# Per kind: a metric and a limit an excursion crosses (the latency run's immediate rule).
LIMITS = {
    "incubator": ("temp_c", 40.0),
    "cryoshipper": ("temp_c", -130.0),
    "particle_counter": ("particles_0_5um_m3", 5_000_000.0),
}


def _payload(device_id: str, seq: int, excursion: bool) -> bytes:
    body = {"ts": time.time(), "seq": seq, "values": _values(device_kind(device_id), seq, excursion)}
    return json.dumps(body, separators=(",", ":")).encode()


def _publisher(spec: LoadSpec, part: int, ready: mp.synchronize.Barrier) -> None:
    ids = device_ids(spec.devices, spec.kind)[part :: spec.processes]
    count = spec.messages // spec.processes + (1 if part < spec.messages % spec.processes else 0)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{spec.prefix}-load-{part}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    done = threading.Event()
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client.on_publish = on_publish
    client.connect(spec.host, spec.port)
    client.loop_start()
    ready.wait()
    began = time.monotonic()
    interval = spec.processes / spec.rate_per_s if spec.rate_per_s else 0.0
    for n in range(count):
        device = ids[n % len(ids)]
        seq = spec.first_seq + n // len(ids)
        excursion = bool(spec.excursion_every) and seq % spec.excursion_every == spec.excursion_every - 1
        if interval:
            wait = began + n * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while True:
            info = client.publish(topic(spec.prefix, device), _payload(device, seq, excursion), qos=1)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                break
            time.sleep(0.001)
    if count:
        done.wait(600)
    client.loop_stop()
    client.disconnect()


def publish_load(spec: LoadSpec) -> float:
    """Publish the load; return the seconds it took (every PUBACK received)."""
    ready = mp.Barrier(spec.processes + 1)
    workers = [mp.Process(target=_publisher, args=(spec, part, ready)) for part in range(spec.processes)]
    for worker in workers:
        worker.start()
    ready.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            msg = f"a load publisher failed (exit {worker.exitcode})"
            raise RuntimeError(msg)
    return time.perf_counter() - began
