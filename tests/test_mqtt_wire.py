"""MQTT framing and PUBLISH decoding over a receive buffer (pure, checked against paho's decoder)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from coldwatch.mqtt_wire import (
    MalformedPacketError,
    Publish,
    decode_publish,
    is_fast_publish,
    next_packet,
    pubacks,
)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish_packet(
    topic: bytes, payload: bytes, *, qos: int, mid: int, retain: bool, v5: bool, properties: bytes = b""
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += varint(len(properties)) + properties
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


def split_all(buffer: bytes, *, v5: bool) -> tuple[list[Publish | tuple[int, bytes]], int]:
    """Every complete packet in ``buffer`` and where the first incomplete one starts."""
    out: list[Publish | tuple[int, bytes]] = []
    pos = 0
    while (found := next_packet(buffer, pos)) is not None:
        first, start, end = found
        if is_fast_publish(first):
            out.append(decode_publish(first, buffer, start, end, v5=v5))
        else:
            out.append((first, buffer[start:end]))
        pos = end
    return out, pos


TOPICS = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"), min_size=1, max_size=80
)


@given(
    messages=st.lists(
        st.tuples(
            TOPICS,
            st.binary(max_size=300),
            st.sampled_from([0, 1]),
            st.integers(1, 65535),
            st.booleans(),
            st.binary(max_size=20),
        ),
        min_size=1,
        max_size=20,
    ),
    v5=st.booleans(),
    cut=st.integers(0, 50),
)
def test_decodes_as_paho_does_and_waits_for_a_cut_packet(
    messages: list[tuple[str, bytes, int, int, bool, bytes]], v5: bool, cut: int
) -> None:
    """Back-to-back PUBLISH packets decode to what paho decodes; a packet cut short is left whole."""
    wire = [
        publish_packet(
            t.encode(), p, qos=q, mid=m, retain=r, v5=v5, properties=(b"\x01\x01" if v5 and props else b"")
        )
        for t, p, q, m, r, props in messages
    ]
    stream = b"".join(wire)
    cut = min(cut, len(wire[-1]) - 1)
    taken, pos = split_all(stream[: len(stream) - cut], v5=v5)
    complete = len(wire) if cut == 0 else len(wire) - 1
    assert len(taken) == complete
    assert pos == sum(len(w) for w in wire[:complete])
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    for packet, got in zip(wire, taken, strict=False):
        assert isinstance(got, Publish)
        first, start, end = next_packet(packet, 0) or (0, 0, 0)
        theirs = paho_packet.decode_publish(first, packet[start:end], protocol)
        assert got == Publish(
            theirs.topic.decode(), bytes(theirs.payload), theirs.qos, theirs.mid, theirs.retain
        )


def test_other_packets_are_handed_on_whole() -> None:
    """CONNACK, SUBACK, PINGRESP and a QoS 2 PUBLISH are not decoded here but returned as they came."""
    connack = b"\x20\x03\x00\x00\x00"
    suback = b"\x90\x04\x00\x01\x00\x01"
    pingresp = b"\xd0\x00"
    qos2 = publish_packet(b"a/b", b"x", qos=2, mid=7, retain=False, v5=False)
    taken, pos = split_all(connack + suback + pingresp + qos2, v5=False)
    assert taken == [(0x20, b"\x00\x00\x00"), (0x90, b"\x00\x01\x00\x01"), (0xD0, b""), (qos2[0], qos2[2:])]
    assert pos == len(connack + suback + pingresp + qos2)


def test_a_remaining_length_split_across_reads_waits() -> None:
    """A packet whose length bytes are not all received yet is not taken."""
    packet = publish_packet(b"t", b"p" * 200, qos=1, mid=1, retain=False, v5=True)
    assert packet[1] & 0x80  # a two-byte remaining length
    assert next_packet(packet[:2], 0) is None
    assert next_packet(packet, 0) is not None


def test_invalid_topic_bytes_are_replaced_not_fatal() -> None:
    """A topic that is not UTF-8 decodes with replacement characters (it is then quarantined)."""
    packet = publish_packet(b"bad/\xff/topic", b"{}", qos=1, mid=3, retain=False, v5=False)
    first, start, end = next_packet(packet, 0) or (0, 0, 0)
    assert decode_publish(first, packet, start, end, v5=False).topic == "bad/\ufffd/topic"


def decode_first(packet: bytes) -> Publish:
    found = next_packet(packet, 0)
    assert found is not None, "incomplete"
    return decode_publish(found[0], packet, found[1], found[2], v5=False)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "longer than four bytes"),
        (b"\x32\x01\x00", "without a topic"),
        (b"\x32\x04\x00\x09ab", "topic longer than the packet"),
        (b"\x32\x04\x00\x02ab", "without a packet identifier"),
        (b"\x36\x06\x00\x02ab\x00\x01", "QoS 3"),
    ],
)
def test_malformed_packets_are_refused_with_the_reason(packet: bytes, reason: str) -> None:
    """Bytes that cannot be a PUBLISH raise an error naming what is wrong."""
    with pytest.raises(MalformedPacketError, match=reason):
        decode_first(packet)


def test_v5_properties_longer_than_the_packet_are_refused() -> None:
    """A v5 property length reaching past the packet's end is malformed."""
    packet = b"\x32\x06\x00\x01a\x00\x01\x09"
    found = next_packet(packet, 0)
    assert found is not None
    with pytest.raises(MalformedPacketError, match="properties"):
        decode_publish(found[0], packet, found[1], found[2], v5=True)


def test_pubacks_are_back_to_back_packets() -> None:
    """The PUBACKs of several message ids are four bytes each, in order."""
    assert pubacks([1, 258, 65535]) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    assert pubacks([]) == b""
