"""The simulator's shell: paces a fleet timeline in wall time and publishes it over MQTT.

Only this module imports aiomqtt. Each device gets its own MQTT connection (v5 unless the
configuration says 3.1.1) with client id ``sim-{device_id}``, because a retained
``online`` status and an ``offline`` last will belong to one connection: a shared client
could not let one device "die" alone. That costs one socket per device, which is fine up
to a few hundred devices.

A device link keeps a bounded backlog. While its connection is down (broker restart,
network), readings wait there, flagged ``buffered``, and are sent on reconnect, as a
logger backfills; when the backlog is full the oldest reading is dropped (a seq gap).

It also keeps the last ``HISTORY_MAX`` readings it sent, as a logger keeps its memory,
and answers re-send requests on its ``resend`` topic (``{"from_seq", "to_seq"}``) from
it: the readings held in that range are published again with ``buffered: true`` and
their original ``ts`` and ``seq``. A reading sent before the history's start is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiomqtt

from coldwatch.config import BrokerAddress, parse_broker_url
from simulators.fleet import (
    encode_reading,
    parse_resend_request,
    resend_topic,
    status_topic,
    telemetry_topic,
    timeline,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from coldwatch.config import Config, DeviceConfig
    from simulators.fleet import OutagePlan, Reading
    from simulators.models import AnyModel

__all__ = ["SimulationStats", "run_simulation"]

log = logging.getLogger(__name__)

BACKLOG_MAX = 100_000
HISTORY_MAX = 100_000  # readings sent that a re-send request can still ask for
# After the timeline ends, links get this long to send their backlog and say offline.
DRAIN_TIMEOUT_S = 10.0
OFFLINE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class SimulationStats:
    """What a simulation run sent, per device id."""

    published: dict[str, int] = field(default_factory=dict)
    """Telemetry messages acknowledged by the broker (QoS 1)."""
    buffered: dict[str, int] = field(default_factory=dict)
    """Of those, readings sent as a backfill (``buffered: true``)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Readings lost because a device's backlog overflowed."""
    connects: dict[str, int] = field(default_factory=dict)
    """Successful connections; more than 1 means the device reconnected."""
    resent: dict[str, int] = field(default_factory=dict)
    """Readings published again on the collector's request (not counted in ``published``)."""

    @property
    def total(self) -> int:
        """Telemetry messages published by all devices together."""
        return sum(self.published.values())


class _DeviceLink:
    """One device's MQTT connection, status, will and backlog."""

    def __init__(
        self,
        device: DeviceConfig,
        *,
        prefix: str,
        broker: BrokerAddress,
        ca_file: Path | None,
        mqtt_v5: bool,
        backoff_s: tuple[float, float],
        stats: SimulationStats,
    ) -> None:
        self.device = device
        self._telemetry_topic = telemetry_topic(device, prefix)
        self._status_topic = status_topic(device, prefix)
        self._resend_topic = resend_topic(device, prefix)
        self._broker = broker
        self._ca_file = ca_file
        self._mqtt_v5 = mqtt_v5
        self._backoff_s = backoff_s
        self._stats = stats
        self._backlog: deque[tuple[Reading, bool]] = deque()  # (reading, sent again on request)
        self._history: dict[int, Reading] = {}  # by seq, oldest first
        # Seqs queued to be sent again: repeated or overlapping requests queue a reading once.
        self._resending: set[int] = set()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._connected = False
        for counter in (stats.published, stats.buffered, stats.dropped, stats.connects, stats.resent):
            counter[device.id] = 0

    def submit(self, reading: Reading) -> None:
        """Queue a reading; while disconnected it becomes a backfill."""
        if not self._connected and not reading.buffered:
            reading = replace(reading, buffered=True)
        if len(self._backlog) >= BACKLOG_MAX:
            dropped, again = self._backlog.popleft()
            if again:
                self._resending.discard(dropped.seq)
            else:
                self._stats.dropped[self.device.id] += 1
        self._backlog.append((reading, False))
        self._wakeup.set()

    def resend(self, first: int, last: int | None) -> int:
        """Queue the readings sent with ``first <= seq <= last`` again; return how many."""
        held = [
            r
            for seq, r in self._history.items()
            if seq >= first and (last is None or seq <= last) and seq not in self._resending
        ]
        self._resending.update(r.seq for r in held)
        self._backlog.extend((replace(r, buffered=True), True) for r in held)
        self._wakeup.set()
        return len(held)

    def close(self) -> None:
        """Ask the link to send what it holds, publish ``offline`` and stop."""
        self._closing = True
        self._wakeup.set()

    def _client(self) -> aiomqtt.Client:
        broker = self._broker
        tls_context = None
        if broker.tls:
            cafile = None if self._ca_file is None else str(self._ca_file)
            tls_context = ssl.create_default_context(cafile=cafile)
        return aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=None if broker.password is None else broker.password.get_secret_value(),
            identifier=f"sim-{self.device.id}",
            # 3.1.1 only for brokers that lack v5 (the demo's embedded amqtt broker).
            protocol=aiomqtt.ProtocolVersion.V5 if self._mqtt_v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._status_topic, b"offline", qos=1, retain=True),
            keepalive=30,
            tls_context=tls_context,
        )

    async def run(self) -> None:
        """Connect, announce ``online``, publish the backlog until closed; reconnect on loss."""
        initial_s, max_s = self._backoff_s
        delay_s = initial_s
        while True:
            connects = self._stats.connects[self.device.id]
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                log.warning("device %s: broker connection lost (%s)", self.device.id, group.exceptions[0])
                if self._stats.connects[self.device.id] > connects:
                    delay_s = initial_s  # it was up: a fresh outage starts the backoff over
            else:
                return
            # Full jitter, so a fleet that lost the broker together does not return together.
            await asyncio.sleep(random.uniform(0.0, delay_s))
            delay_s = min(max_s, delay_s * 2)

    async def _session(self) -> None:
        """One connection: online, the backlog until closed, offline. MqttError when lost."""
        async with self._client() as client:
            self._connected = True
            self._stats.connects[self.device.id] += 1
            try:
                await client.subscribe(self._resend_topic, qos=1)
                await client.publish(self._status_topic, b"online", qos=1, retain=True)
                async with asyncio.TaskGroup() as group:
                    watcher = group.create_task(self._watch(client), name=f"sim-{self.device.id}-watch")
                    await self._drain(client)
                    watcher.cancel()
                await client.publish(self._status_topic, b"offline", qos=1, retain=True)
            except asyncio.CancelledError:
                await self._say_offline(client)
                raise
            finally:
                self._connected = False

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Answer re-send requests; raise MqttError as soon as the connection drops."""
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            request = parse_resend_request(payload)
            if request is None:
                log.warning("device %s: malformed re-send request ignored", self.device.id)
                continue
            self.resend(*request)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wakeup.clear()
            while self._backlog:
                reading, again = self._backlog[0]
                await client.publish(self._telemetry_topic, encode_reading(reading), qos=1)
                # Pop only once acknowledged: a reading lost with the connection is resent.
                self._backlog.popleft()
                if again:
                    self._resending.discard(reading.seq)
                    self._stats.resent[self.device.id] += 1
                    continue
                self._stats.published[self.device.id] += 1
                self._stats.buffered[self.device.id] += int(reading.buffered)
                self._remember(reading)
            if self._closing:
                return
            await self._wakeup.wait()

    def _remember(self, reading: Reading) -> None:
        """Keep a sent reading for re-send requests (the oldest goes when the history is full)."""
        history = self._history
        history[reading.seq] = reading
        if len(history) > HISTORY_MAX:
            del history[next(iter(history))]

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        # A clean disconnect discards the will, so a cancelled device states it itself.
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(OFFLINE_TIMEOUT_S):
                await client.publish(self._status_topic, b"offline", qos=1, retain=True)


async def _stopped(stop: asyncio.Event | None, delay_s: float) -> bool:
    """Wait ``delay_s`` (at least one loop turn); return True as soon as ``stop`` is set."""
    if stop is None or delay_s <= 0:
        await asyncio.sleep(max(0.0, delay_s))
        return stop is not None and stop.is_set()
    try:
        async with asyncio.timeout(delay_s):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def _pace(
    readings: Iterable[Reading],
    links: dict[str, _DeviceLink],
    *,
    speed: float,
    end_s: float | None,
    stop: asyncio.Event | None,
) -> None:
    """Hand each reading to its device when its simulated send time comes round."""
    loop = asyncio.get_running_loop()
    wall_start_s = loop.time()
    for reading in readings:
        if await _stopped(stop, wall_start_s + reading.due_s / speed - loop.time()):
            return
        links[reading.device.id].submit(reading)
    if end_s is not None:
        await _stopped(stop, wall_start_s + end_s / speed - loop.time())


async def run_simulation(
    config: Config,
    *,
    seed: int = 0,
    speed: float = 1.0,
    duration_s: float | None = None,
    outage: OutagePlan | None = None,
    url: str | None = None,
    stop: asyncio.Event | None = None,
    models: Mapping[str, AnyModel] | None = None,
) -> SimulationStats:
    """Simulate ``config.devices`` and publish their readings to the broker.

    ``speed`` is simulated seconds per wall second; ``duration_s`` is in wall seconds
    (None: until ``stop`` is set or the task is cancelled). Faster than real time, the
    simulated timeline is placed in the past so that it ends now: the collector rejects
    timestamps from the future. ``outage`` offsets are in simulated seconds. ``url``
    overrides ``config.mqtt.url``. ``models`` (from :func:`~simulators.fleet.build_models`)
    carry events forced on them beforehand, such as the demo's scripted excursion.
    """
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed!r}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s!r}")
    if speed > 1 and duration_s is None:
        raise ValueError("faster than real time needs duration_s: the timeline must end by now")
    now = datetime.now(UTC)
    end_s = None if duration_s is None else duration_s * speed
    start = now - timedelta(seconds=end_s) if speed > 1 and end_s is not None else now
    broker = parse_broker_url(url) if url is not None else config.mqtt.broker
    stats = SimulationStats()
    links = {
        device.id: _DeviceLink(
            device,
            prefix=config.mqtt.topic_prefix,
            broker=broker,
            ca_file=config.mqtt.ca_file,
            mqtt_v5=config.mqtt.protocol == "5",
            backoff_s=(config.mqtt.reconnect.initial_s, config.mqtt.reconnect.max_s),
            stats=stats,
        )
        for device in config.devices
    }
    readings = timeline(config.devices, start=start, seed=seed, until_s=end_s, outage=outage, models=models)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(link.run(), name=f"sim-{key}") for key, link in links.items()]
        try:
            await _pace(readings, links, speed=speed, end_s=end_s, stop=stop)
        finally:
            for link in links.values():
                link.close()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
            # A device that cannot reach the broker keeps its backlog, like a real logger.
            for task in pending:
                log.warning("%s: broker unreachable at shutdown; giving up", task.get_name())
                task.cancel()
    return stats
