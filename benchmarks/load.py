"""Load generator for the ingest benchmark: several processes publishing QoS 1 telemetry.

Each process owns a slice of the devices and publishes with paho's own network loop
(many messages in flight), as fast as the broker takes them or at a fixed rate. Every
message carries four values and the time it was published as its device timestamp.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["LoadSpec", "device_ids", "publish_load", "topic"]

SITE, AREA, KIND = "bench", "floor1", "incubator"


def device_ids(count: int) -> list[str]:
    """The benchmark's device ids."""
    return [f"inc-{i:05d}" for i in range(count)]


def topic(prefix: str, device_id: str) -> str:
    """The telemetry topic of a benchmark device."""
    return f"{prefix}/{SITE}/{AREA}/{KIND}/{device_id}/telemetry"


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


def _payload(seq: int, excursion: bool) -> bytes:
    temp = 45.0 if excursion else 37.0 + (seq % 7) * 0.01
    body = {
        "ts": time.time(),
        "seq": seq,
        "values": {"temp_c": temp, "co2_pct": 5.0, "rh_pct": 94.5, "door_open": False},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _publisher(spec: LoadSpec, part: int, ready: mp.synchronize.Barrier) -> None:
    ids = device_ids(spec.devices)[part :: spec.processes]
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
            info = client.publish(topic(spec.prefix, device), _payload(seq, excursion), qos=1)
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
