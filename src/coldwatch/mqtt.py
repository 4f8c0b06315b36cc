"""The MQTT side of the collector. The only module of the daemon that imports aiomqtt.

Delivery guarantee: QoS 1 with a fixed client id and a persistent session, and every
message acknowledged only after it is committed to storage. aiomqtt 2.x acknowledges a
message as soon as it is queued (aiomqtt issue #345), so the underlying paho client is
switched to manual acknowledgement before connecting, and :meth:`MqttSource.ack` sends
the PUBACK once the writer has committed. A message received but not committed when the
process dies is redelivered by the broker on the next connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from coldwatch.config import MqttConfig

__all__ = ["Delivery", "MqttSource", "backoff_delays"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as received, with what is needed to acknowledge it later."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    connection: int  # which connection delivered it: a mid is only valid on that one
    received_us: int


# Packets read per readiness callback: enough to amortise an event-loop turn, few enough
# that timers and the writer run in between.
READ_BURST = 256


def _read_many(client: paho.Client, room: Callable[[], bool], pause: Callable[[], None]) -> None:
    """Make paho read every packet already received per call, not one per event-loop turn.

    aiomqtt calls ``loop_read()`` when the socket is readable; paho then reads one packet
    (its burst counts only QoS 2 traffic), so every QoS 1 message cost a whole event-loop
    turn with an epoll call. Reading on until the socket would block (or ``READ_BURST``
    packets) cut that overhead (benchmarks/ingest.py). Uses paho's own packet reader.
    """
    read_packet = client._packet_read  # noqa: SLF001
    handle = client._loop_rc_handle  # noqa: SLF001

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:  # noqa: ARG001 - paho's signature
        for _ in range(READ_BURST):
            if client._sock is None:  # noqa: SLF001
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if not room():
                pause()  # back-pressure: unread data stays in the socket, then in the broker
                break
            rc = read_packet()
            if rc > 0:
                return handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client.loop_read = loop_read  # type: ignore[method-assign]


async def _always_room() -> None:
    """The consumer always has room (no back-pressure)."""


def backoff_delays(initial_s: float, max_s: float, rng: random.Random) -> Callable[[], float]:
    """Full-jitter exponential backoff: each call returns the next delay."""
    ceiling = initial_s

    def next_delay() -> float:
        nonlocal ceiling
        delay = rng.uniform(initial_s / 2, ceiling)
        ceiling = min(max_s, ceiling * 2)
        return delay

    return next_delay


class MqttSource:
    """Connects, subscribes and hands each message to a consumer; reconnects forever."""

    def __init__(
        self,
        config: MqttConfig,
        topics: Sequence[str],
        *,
        on_connection_change: Callable[[bool], None] = lambda _: None,
        room: Callable[[], bool] = lambda: True,
        wait_room: Callable[[], Awaitable[None]] | None = None,
        on_pause: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._topics = list(topics)
        self._on_connection_change = on_connection_change
        self._client: aiomqtt.Client | None = None
        self._connection = 0
        self._activity = asyncio.Event()
        self.connected = asyncio.Event()
        self._room = room
        self._wait_room = wait_room or _always_room
        self._paused = False
        self._resuming: set[asyncio.Task[None]] = set()
        self._on_pause = on_pause

    def _make_client(self, offer: Callable[[Delivery], None], connection: int) -> aiomqtt.Client:
        cfg = self._config
        broker = cfg.broker
        v5 = cfg.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.session_expiry_s
            properties.ReceiveMaximum = cfg.receive_maximum
        tls_context = None
        if broker.tls:
            tls_context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=cfg.client_id,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A persistent session: the broker keeps our subscription and every QoS 1
            # message we have not acknowledged while we are away.
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            clean_session=None if v5 else False,
            properties=properties,
            keepalive=cfg.keepalive_s,
            max_inflight_messages=cfg.receive_maximum,
            tls_context=tls_context,
            timeout=10,
        )
        # Must be set before CONNECT: the broker resends pending messages right after it.
        client._client.manual_ack_set(True)  # noqa: SLF001 - see module docstring
        _read_many(client._client, self._room, functools.partial(self._pause, client))  # noqa: SLF001
        # Messages go straight from paho's callback to the consumer: aiomqtt's iterator costs
        # a task and an asyncio.wait per message (benchmarks/ingest.py). Installed before
        # CONNECT, as the broker resends a persistent session's messages right after it.
        activity = self._activity

        def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
            activity.set()
            try:
                deliver(message)
            except Exception:  # never out of paho's read loop: the rest of its burst would be lost
                # Unacknowledged, the message is redelivered on the next connection.
                log.exception("could not take message %d on %s", message.mid, message.topic)

        def deliver(message: paho.MQTTMessage) -> None:
            offer(
                Delivery(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    qos=message.qos,
                    mid=message.mid,
                    retain=message.retain,
                    connection=connection,
                    received_us=time.time_ns() // 1000,
                )
            )

        client._client.on_message = on_message  # noqa: SLF001
        if not log.isEnabledFor(logging.DEBUG):
            # paho logs every packet it reads; a lost connection still surfaces as MqttError.
            client._client.disable_logger()  # noqa: SLF001 - a measured hot spot (benchmarks/ingest.py)
        return client

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a committed message, if the connection that delivered it still stands."""
        client = self._client
        if delivery.qos == 0 or client is None or delivery.connection != self._connection:
            # A newer connection reuses message ids; the broker will resend this one and
            # storage will recognise it as a duplicate.
            return
        client._client.ack(delivery.mid, delivery.qos)  # noqa: SLF001 - see module docstring

    async def wait_quiet(self, idle_s: float = 0.2, timeout_s: float = 5.0) -> bool:
        """Wait until no message has arrived for ``idle_s`` (at most ``timeout_s``).

        Used at shutdown, after the last acknowledgement: once we stop acknowledging, the
        broker stops sending when its in-flight window is full. Closing the socket while
        its receive buffer still holds data makes the kernel reset the connection, which
        can discard acknowledgements not yet on the wire.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._activity.clear()
                    try:
                        async with asyncio.timeout(idle_s):
                            await self._activity.wait()
                    except TimeoutError:
                        return True
        except TimeoutError:
            return False

    def _pause(self, client: aiomqtt.Client) -> None:
        """Stop reading the socket until the consumer has room again (TCP back-pressure).

        The broker honours the Receive Maximum only loosely (Mosquitto 2.0 sends far more
        once acknowledgements flow; MQTT 3.1.1 has no such limit), so the collector stops
        reading instead: what it has not read waits in the socket buffers and at the broker.
        """
        sock = client._client._sock  # noqa: SLF001
        if self._paused or sock is None:
            return
        fd = sock.fileno()
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        self._paused = True
        self._on_pause()

        def read() -> None:  # what aiomqtt's reader does
            try:
                client._client.loop_read()  # noqa: SLF001
            except Exception as exc:
                if not client._disconnected.done():  # noqa: SLF001
                    client._disconnected.set_exception(exc)  # noqa: SLF001

        async def resume() -> None:
            await self._wait_room()
            self._paused = False
            current = client._client._sock  # noqa: SLF001
            if current is not None and current.fileno() == fd:
                loop.add_reader(fd, read)
                read()  # data may be waiting already

        task = loop.create_task(resume())
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def run(self, offer: Callable[[Delivery], None]) -> None:
        """Hand every message to ``offer`` (which must not block) until cancelled; reconnect with backoff.

        ``offer`` runs in the event loop's thread, once per message, in arrival order.
        """
        next_delay = backoff_delays(
            self._config.reconnect.initial_s, self._config.reconnect.max_s, random.Random()
        )
        broker = self._config.broker
        while True:
            self._connection += 1
            client = self._make_client(offer, self._connection)
            # Before CONNECT: a resent message may be taken, committed and acknowledged
            # before the connection's context is entered.
            self._client = client
            announced = False
            try:
                async with client:
                    self._on_connection_change(True)
                    announced = True
                    log.info("connected to %s:%d as %s", broker.host, broker.port, self._config.client_id)
                    next_delay = backoff_delays(
                        self._config.reconnect.initial_s, self._config.reconnect.max_s, random.Random()
                    )
                    granted = await client.subscribe([(topic, 1) for topic in self._topics])
                    _check_granted(self._topics, granted)
                    # Ready once subscribed: a new session receives nothing published before.
                    self.connected.set()
                    async for _ in client.messages:  # none arrive here: this waits for a disconnect
                        pass
            except aiomqtt.MqttError as exc:
                log.warning("broker %s:%d: %s", broker.host, broker.port, exc)
            finally:
                self._client = None
                for task in self._resuming:  # a new connection gets a new socket and reader
                    task.cancel()
                self._paused = False
                self.connected.clear()
                if announced:
                    self._on_connection_change(False)
            delay = next_delay()
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)


def _check_granted(topics: Sequence[str], granted: Sequence[object]) -> None:
    """Raise (and so reconnect later) when the broker refused a subscription: not ready without it."""
    refused = [
        topic
        for topic, code in zip(topics, granted, strict=False)
        if (code.is_failure if isinstance(code, ReasonCode) else int(str(code)) >= 0x80)
    ]
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise aiomqtt.MqttError(f"the broker refused the subscription to {', '.join(refused[:3])}{more}")
