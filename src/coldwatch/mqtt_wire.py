"""MQTT framing and PUBLISH decoding over a receive buffer. Pure: no I/O, no state.

paho reads one packet with three or more ``recv`` calls and builds a properties object,
a message object and a topic match for every PUBLISH; with thousands of messages a
second that was over half of the collector's Python time (benchmarks/ingest.py). The
collector reads the socket in large chunks instead and splits them here: a PUBLISH of
QoS 0 or 1 is decoded directly, any other packet is handed whole to paho.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from coldwatch.errors import ColdwatchError

__all__ = [
    "PUBACK",
    "PUBLISH",
    "MalformedPacketError",
    "Publish",
    "decode_publish",
    "is_fast_publish",
    "next_packet",
    "pubacks",
]

PUBLISH: Final = 0x30
PUBACK: Final = 0x40
_QOS_2: Final = 0x04  # QoS bits of a PUBLISH's first byte for QoS 2


class MalformedPacketError(ColdwatchError):
    """The broker sent bytes that are not a valid MQTT packet: the connection must go."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"malformed MQTT packet at byte {offset}: {reason}")


class Publish(NamedTuple):
    """One PUBLISH as received."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool


def _varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """A variable byte integer at ``pos`` and the position after it; None if cut off by ``end``."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacketError(pos, "variable byte integer longer than four bytes")


def next_packet(buf: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """The packet starting at ``pos``: (first byte, start of its body, end), or None while incomplete."""
    size = len(buf)
    if size - pos < 2:
        return None
    found = _varint(buf, pos + 1, size)
    if found is None:
        return None
    length, start = found
    end = start + length
    return None if end > size else (buf[pos], start, end)


def decode_publish(first: int, buf: bytes | bytearray, start: int, end: int, *, v5: bool) -> Publish:
    """Decode the PUBLISH whose first byte is ``first`` and whose body is ``buf[start:end]``.

    A topic that is not valid UTF-8 (a broker should refuse it) is decoded with
    replacement characters, so the collector quarantines it instead of looping on it.
    """
    if end - start < 2:
        raise MalformedPacketError(start, "PUBLISH without a topic")
    at = start + 2 + (buf[start] << 8 | buf[start + 1])
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacketError(start, "PUBLISH with QoS 3")
    if at > end:
        raise MalformedPacketError(start, "PUBLISH topic longer than the packet")
    topic = buf[start + 2 : at].decode("utf-8", "replace")
    mid = 0
    if qos:
        if at + 2 > end:
            raise MalformedPacketError(at, "PUBLISH without a packet identifier")
        mid = buf[at] << 8 | buf[at + 1]
        at += 2
    if v5:
        found = _varint(buf, at, end)
        if found is None:
            raise MalformedPacketError(at, "PUBLISH properties cut off")
        length, at = found
        at += length
        if at > end:
            raise MalformedPacketError(at, "PUBLISH properties longer than the packet")
    return Publish(topic, bytes(buf[at:end]), qos, mid, bool(first & 1))


def is_fast_publish(first: int) -> bool:
    """Whether the packet is a PUBLISH this module decodes (QoS 0 or 1; QoS 2 needs paho's handshake)."""
    return first & 0xF0 == PUBLISH and first & 0x06 != _QOS_2


def pubacks(mids: list[int]) -> bytes:
    """The PUBACK packets (MQTT 3.1.1 and 5: success, no properties) of ``mids``, back to back."""
    out = bytearray(4 * len(mids))
    for index, mid in enumerate(mids):
        at = 4 * index
        out[at] = PUBACK
        out[at + 1] = 2
        out[at + 2] = mid >> 8
        out[at + 3] = mid & 0xFF
    return bytes(out)
