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
from typing import TYPE_CHECKING, Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from coldwatch.config import MqttConfig
from coldwatch.mqtt_wire import (
    PUBACK,
    MalformedPacketError,
    Publish,
    decode_publish,
    is_fast_publish,
    next_packet,
    pubacks,
)
from coldwatch.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from paho.mqtt.client import _InPacket  # a TypedDict that exists for type checkers only

__all__ = ["Delivery", "MqttSource", "backoff_delays"]

log = logging.getLogger(__name__)


class Delivery(NamedTuple):
    """One message as received, with what is needed to acknowledge it later."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    connection: int  # which connection delivered it: a mid is only valid on that one
    received_us: int


# Bytes taken from the socket per readiness callback: a few hundred messages, enough to
# amortise an event-loop turn, few enough that timers and the writer run in between.
RECV_BYTES = 64 * 1024
# The pipeline stops reading twice this many messages below its queue's end. Room is
# asked before every message, so this is a margin, not a bound on what one receive holds.
READ_BURST = 256


class _ChunkReader:
    """paho's ``loop_read`` replaced: one large ``recv`` per call, PUBLISH decoded in bulk.

    paho reads every packet with at least three ``recv`` calls and builds a properties
    object, a message object and a topic match for each PUBLISH: over half of the
    collector's Python time (benchmarks/ingest.py). Here the socket is read in chunks,
    split by :mod:`coldwatch.mqtt_wire`, PUBLISH packets of QoS 0 and 1 go straight to
    ``deliver`` and every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, QoS 2
    flows) to paho's own handler, so the protocol state stays paho's.

    ``room`` is asked before each message: without room, ``pause`` is called and what is
    left stays in this buffer, in the socket and at the broker (back-pressure).
    """

    def __init__(
        self,
        client: paho.Client,
        *,
        v5: bool,
        room: Callable[[], bool],
        pause: Callable[[], None],
        deliver: Callable[[Publish, int], None],
    ) -> None:
        self._client = client
        self._v5 = v5
        self._room = room
        self._pause = pause
        self._deliver = deliver
        self._buffer = bytearray()
        self._pos = 0  # start of the first packet not yet taken
        self._held = False  # stopped for want of room; the next call resumes from the buffer

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:  # noqa: ARG002 - paho's signature
        """Take what the socket holds (paho's signature and return codes)."""
        client = self._client
        if client._sock is None:  # noqa: SLF001
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._held = False
        if self._pos < len(self._buffer):
            rc = self._take()
            if rc or self._held:
                return client._loop_rc_handle(rc) if rc else rc  # noqa: SLF001
        try:
            data = client._sock_recv(RECV_BYTES)  # noqa: SLF001 - maps TLS want-read/write for us
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as exc:
            log.warning("receive failed: %s", exc)
            return client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
        if not data:
            return client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
        client._last_bytes_received = time.monotonic()  # noqa: SLF001 - paho's keepalive reads it
        self._buffer += data
        # (A TLS record is at most 16 KiB: one receive takes it whole, so no decrypted bytes
        # are left waiting in the TLS object, where the socket would not signal them.)
        rc = self._take()
        return client._loop_rc_handle(rc) if rc else rc  # noqa: SLF001

    def _take(self) -> MQTTErrorCode:
        """Hand on every complete packet in the buffer while there is room."""
        buffer, pos, room, deliver, v5 = self._buffer, self._pos, self._room, self._deliver, self._v5
        received_us = time.time_ns() // 1000
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while True:
                found = next_packet(buffer, pos)
                if found is None:
                    break
                first, start, end = found
                if is_fast_publish(first):
                    if not room():
                        self._held = True
                        self._pause()
                        break
                    deliver(decode_publish(first, buffer, start, end, v5=v5), received_us)
                    pos = end
                else:
                    pos = end  # taken whatever paho makes of it: a failing packet is never retried
                    rc = self._to_paho(first, buffer[start:end])
                    if rc:
                        break
        except MalformedPacketError as exc:
            log.warning("%s; reconnecting", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            if pos == len(buffer):
                buffer.clear()
                pos = 0
            elif pos > RECV_BYTES:
                del buffer[:pos]
                pos = 0
            self._pos = pos
        return rc

    def _to_paho(self, first: int, body: bytearray) -> MQTTErrorCode:
        """Let paho handle a packet other than a QoS 0/1 PUBLISH, as if it had read it."""
        client = self._client
        client._in_packet = _in_packet(first, body)  # noqa: SLF001
        try:
            return client._packet_handle()  # noqa: SLF001
        except MalformedPacket as exc:
            log.warning("malformed MQTT packet 0x%02x: %s; reconnecting", first, exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        except Exception:  # paho's decoders raise struct.error and others on a short packet
            log.exception("MQTT packet 0x%02x could not be handled; reconnecting", first)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = _in_packet(0, bytearray())  # noqa: SLF001 - nothing half read


def _in_packet(command: int, body: bytearray) -> _InPacket:
    """What paho keeps of the packet it is reading: here ``body``, read whole (none: ``command`` 0)."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": len(body),
        "packet": body,
        "to_process": 0,
        "pos": 0,
    }


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
        on_session_lost: Callable[[], None] = lambda: None,
        expect_session: bool = False,
    ) -> None:
        self._config = config
        # Whether the broker should hold a session of ours: once we had one (this run, or
        # a previous run that stored readings), CONNACK without it means the broker lost it.
        self._expect_session = expect_session
        self._session_present = False
        self._on_session_lost = on_session_lost
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
        # QoS 1 messages of the current connection not yet acknowledged: message id -> when
        # received, oldest first (a dict keeps insertion order). What the broker counts
        # against our Receive Maximum; a message held here for long is stuck.
        self._unacked: dict[int, int] = {}
        self._faults = RateLimitedLog(log)

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
        client._client.on_socket_register_write = _register_write(client)  # noqa: SLF001
        aiomqtt_on_connect = client._client.on_connect  # noqa: SLF001
        assert aiomqtt_on_connect is not None  # set by aiomqtt.Client.__init__

        def on_connect(*args: Any) -> None:  # (client, userdata, flags, reason code, properties)
            self._session_present = bool(args[2].session_present)
            aiomqtt_on_connect(*args)

        client._client.on_connect = on_connect  # noqa: SLF001 - aiomqtt keeps no session flag
        activity = self._activity
        unacked = self._unacked = {}
        faults = self._faults

        def deliver(publish: Publish, received_us: int) -> None:
            activity.set()
            if publish.qos == 1:
                unacked.setdefault(publish.mid, received_us)
            try:
                offer(Delivery(*publish, connection, received_us))
            except Exception:  # never out of the read loop: the rest of the chunk would be lost
                # Unacknowledged, the message is redelivered on the next connection; until
                # then it shows as held (oldest_unacked_us). The consumer rejects what it
                # cannot decode, so this is a fault of the consumer itself.
                faults.exception("offer", "could not take message %d on %s", publish.mid, publish.topic[:200])

        # Installed before CONNECT, as the broker resends a persistent session's messages
        # right after it; messages go straight to the consumer (aiomqtt's iterator costs a
        # task and an asyncio.wait per message).
        reader = _ChunkReader(
            client._client,  # noqa: SLF001
            v5=v5,
            room=self._room,
            pause=functools.partial(self._pause, client),
            deliver=deliver,
        )
        client._client.loop_read = reader.loop_read  # type: ignore[method-assign]  # noqa: SLF001
        if not log.isEnabledFor(logging.DEBUG):
            # paho logs every packet it reads; a lost connection still surfaces as MqttError.
            client._client.disable_logger()  # noqa: SLF001 - a measured hot spot (benchmarks/ingest.py)
        return client

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge committed messages, those whose delivering connection still stands.

        Their PUBACKs go out back to back, as one write: one per message cost a packet
        object, a queue entry and a writer registration each (benchmarks/ingest.py).
        """
        client = self._client
        if client is None:
            return
        current = self._connection
        # A newer connection reuses message ids: the broker will resend those messages and
        # storage will recognise them as duplicates.
        mids = [d.mid for d in deliveries if d.qos == 1 and d.connection == current]
        if mids:
            client._client._packet_queue(PUBACK, pubacks(mids), 0, 0)  # noqa: SLF001 - see module docstring
            unacked = self._unacked
            for mid in mids:
                unacked.pop(mid, None)

    def oldest_unacked_us(self) -> int | None:
        """When the oldest message not yet acknowledged on this connection was received (None: none)."""
        return next(iter(self._unacked.values()), None)

    def unacked(self) -> int:
        """How many messages of this connection are not yet acknowledged."""
        return len(self._unacked)

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1 without waiting (re-send requests); False when not connected now.

        paho numbers outgoing messages on its own; the manual PUBACKs of incoming messages
        use the broker's ids, so the two never mix, and a paused reader still writes.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        info = client._client.publish(topic, payload, qos=1)  # noqa: SLF001 - aiomqtt's publish awaits
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _check_session(self) -> None:
        """Tell when the broker answered without the session it should have kept for us."""
        cfg = self._config
        # (The session is always persistent: clean start off, an expiry above zero.)
        if self._expect_session and not self._session_present:
            log.warning(
                "the broker %s:%d has lost our session: messages it held for us are lost; "
                "asking the devices to re-send",
                cfg.broker.host,
                cfg.broker.port,
            )
            self._on_session_lost()
        self._expect_session = True

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
                    # Before subscribing: nothing of the new session arrives ahead of this news.
                    self._check_session()
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
                # A new connection resends them under new message ids.
                self._unacked = {}
                for task in self._resuming:  # a new connection gets a new socket and reader
                    task.cancel()
                self._paused = False
                self.connected.clear()
                if announced:
                    self._on_connection_change(False)
            delay = next_delay()
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)


def _register_write(client: aiomqtt.Client) -> Callable[[paho.Client, object, object], None]:
    """The write registration of aiomqtt, made safe against a connection lost in the same loop turn.

    An acknowledgement asks for the socket's writability; aiomqtt schedules ``add_writer``
    for the next turn of the loop. If the connection is lost before that turn, the socket
    is closed by then and ``add_writer`` raised from a loop callback: an ERROR traceback
    (Bad file descriptor) at every disconnect. Here a closed or replaced socket is skipped,
    and an error from the selector is one warning line.
    """
    loop = asyncio.get_running_loop()
    inner = client._client  # noqa: SLF001

    def write() -> None:  # what aiomqtt's writer does: a failed write ends the connection
        try:
            inner.loop_write()
        except Exception as exc:
            if not client._disconnected.done():  # noqa: SLF001
                client._disconnected.set_exception(exc)  # noqa: SLF001

    def register(_: paho.Client, __: object, sock: object) -> None:
        def add() -> None:
            current = inner._sock  # noqa: SLF001
            if current is None or current is not sock:  # closed (or replaced) since it was asked
                return
            try:
                loop.add_writer(current.fileno(), write)
            except (OSError, ValueError) as exc:
                log.warning("broker connection closed while sending: %s", exc)

        # paho may call this from the thread that connects: only schedule here.
        loop.call_soon_threadsafe(add)

    return register


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
