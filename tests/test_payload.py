"""Payload decoding: topic and bytes in, a Telemetry, a Status or a Rejection with a Reason out."""

from __future__ import annotations

from typing import NamedTuple

import orjson
import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.payload import Reason, Rejection, Status, Telemetry, decode

US = 1_000_000
NOW_US = 1_714_564_800 * US  # 2024-05-01T12:00:00Z
TS = "2024-05-01T12:00:00Z"

INCUBATOR = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-1", area="culture-lab")
COUNTER = DeviceConfig(
    id="pc-fill-a1", kind=Kind.PARTICLE_COUNTER, site="plant-1", area="fill-suite", grade="A"
)
DEVICES = {d.id: d for d in (INCUBATOR, COUNTER)}

INC_TELEMETRY = "coldwatch/plant-1/culture-lab/incubator/inc-01/telemetry"
INC_STATUS = "coldwatch/plant-1/culture-lab/incubator/inc-01/status"
PC_TELEMETRY = "coldwatch/plant-1/fill-suite/particle_counter/pc-fill-a1/telemetry"


def body(**fields: object) -> bytes:
    """A valid incubator telemetry payload with ``fields`` replaced (None removes a field)."""
    doc: dict[str, object] = {"ts": TS, "seq": 7, "values": {"temp_c": 37.1}}
    doc.update(fields)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def test_valid_telemetry_is_decoded() -> None:
    """A valid message yields a Telemetry with every value as a float, in payload order."""
    payload = body(values={"temp_c": 37.1, "co2_pct": 5, "rh_pct": 94.5, "door_open": False})

    decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES)

    assert decoded == Telemetry(
        device_id="inc-01",
        seq=7,
        ts_us=NOW_US,
        buffered=False,
        values=(("temp_c", 37.1), ("co2_pct", 5.0), ("rh_pct", 94.5), ("door_open", 0.0)),
    )
    assert isinstance(decoded, Telemetry)
    assert all(type(v) is float for _, v in decoded.values)


def test_buffered_flag_is_kept() -> None:
    """A backfilled reading keeps its buffered flag."""
    decoded = decode(PC_TELEMETRY, body(buffered=True, values={"flow_lpm": 28.3}), NOW_US, DEVICES)

    assert isinstance(decoded, Telemetry)
    assert decoded.buffered is True
    assert decoded.device_id == "pc-fill-a1"


@pytest.mark.parametrize(
    ("ts", "ts_us"),
    [
        pytest.param("2024-05-01T12:00:00Z", NOW_US, id="rfc3339-Z"),
        pytest.param("2024-05-01T14:00:00+02:00", NOW_US, id="rfc3339-plus-02"),
        pytest.param("2024-05-01T07:00:00-05:00", NOW_US, id="rfc3339-minus-05"),
        pytest.param("2024-05-01T12:00:00.123456Z", NOW_US + 123_456, id="fraction-6-digits"),
        pytest.param("2024-05-01T12:00:00.25Z", NOW_US + 250_000, id="fraction-2-digits"),
        pytest.param("2024-05-01T13:30:00.000001+01:30", NOW_US + 1, id="fraction-offset-half-hour"),
        pytest.param("2024-05-01 12:00:00Z", NOW_US, id="rfc3339-space-separator"),
        pytest.param(1_714_564_800, NOW_US, id="epoch-int"),
        pytest.param(1_714_564_799.5, NOW_US - 500_000, id="epoch-float"),
    ],
)
def test_timestamp_forms(ts: object, ts_us: int) -> None:
    """RFC 3339 with Z or a numeric offset and any fraction, and epoch seconds, give the same instant."""
    decoded = decode(INC_TELEMETRY, body(ts=ts), NOW_US, DEVICES)

    assert isinstance(decoded, Telemetry)
    assert decoded.ts_us == ts_us


@pytest.mark.parametrize(("value", "number"), [(True, 1.0), (False, 0.0)])
def test_boolean_metric_becomes_one_or_zero(value: bool, number: float) -> None:
    """A boolean metric (door_open) is stored as 1.0 or 0.0."""
    decoded = decode(INC_TELEMETRY, body(values={"door_open": value}), NOW_US, DEVICES)

    assert isinstance(decoded, Telemetry)
    assert decoded.values == (("door_open", number),)


# --- every reason ----------------------------------------------------------------------


class Case(NamedTuple):
    """A message and the reason it must be rejected for."""

    name: str
    topic: str
    payload: bytes
    reason: Reason


CASES = [
    Case("too-large", INC_TELEMETRY, b" " * (64 * 1024 + 1), Reason.TOO_LARGE),
    Case("too-large-status", INC_STATUS, b"online" + b" " * (64 * 1024), Reason.TOO_LARGE),
    Case("invalid-utf8-in-string", INC_TELEMETRY, b'{"ts": "2024-05-01T12:00:00\xffZ"}', Reason.INVALID_UTF8),
    Case("invalid-utf8-bare", INC_TELEMETRY, b"\xff\xfe", Reason.INVALID_UTF8),
    Case("invalid-utf8-status", INC_STATUS, b"onl\xffine", Reason.INVALID_UTF8),
    Case("invalid-json", INC_TELEMETRY, b'{"ts": ', Reason.INVALID_JSON),
    Case("invalid-json-trailing-comma", INC_TELEMETRY, b'{"seq": 1,}', Reason.INVALID_JSON),
    Case(
        "nan-literal",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": NaN}}',
        Reason.NON_FINITE,
    ),
    Case(
        "infinity-literal",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": -Infinity}}',
        Reason.NON_FINITE,
    ),
    Case(
        "overflowing-number",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": 1e999}}',
        Reason.NON_FINITE,
    ),
    Case("not-an-object-list", INC_TELEMETRY, b"[1, 2]", Reason.NOT_AN_OBJECT),
    Case("not-an-object-string", INC_TELEMETRY, b'"online"', Reason.NOT_AN_OBJECT),
    Case("bad-topic-leaf", "coldwatch/plant-1/culture-lab/incubator/inc-01/config", body(), Reason.BAD_TOPIC),
    Case(
        "bad-topic-prefix", "other/plant-1/culture-lab/incubator/inc-01/telemetry", body(), Reason.BAD_TOPIC
    ),
    Case("bad-topic-short", "coldwatch/plant-1/inc-01/telemetry", body(), Reason.BAD_TOPIC),
    Case(
        "unknown-device",
        "coldwatch/plant-1/culture-lab/incubator/inc-99/telemetry",
        body(),
        Reason.UNKNOWN_DEVICE,
    ),
    Case(
        "kind-mismatch",
        "coldwatch/plant-1/culture-lab/cryoshipper/inc-01/telemetry",
        body(),
        Reason.KIND_MISMATCH,
    ),
    Case(
        "site-mismatch",
        "coldwatch/plant-2/culture-lab/incubator/inc-01/telemetry",
        body(),
        Reason.TOPIC_MISMATCH,
    ),
    Case(
        "area-mismatch",
        "coldwatch/plant-1/fill-suite/incubator/inc-01/telemetry",
        body(),
        Reason.TOPIC_MISMATCH,
    ),
    Case("unknown-field", INC_TELEMETRY, body(unit="C"), Reason.UNKNOWN_FIELD),
    Case("missing-ts", INC_TELEMETRY, body(ts=None), Reason.MISSING_TS),
    Case("invalid-ts-text", INC_TELEMETRY, body(ts="yesterday"), Reason.INVALID_TS),
    Case("invalid-ts-no-offset", INC_TELEMETRY, body(ts="2024-05-01T12:00:00"), Reason.INVALID_TS),
    Case("invalid-ts-date-only", INC_TELEMETRY, body(ts="2024-05-01"), Reason.INVALID_TS),
    Case("invalid-ts-clock-not-set", INC_TELEMETRY, body(ts=60), Reason.INVALID_TS),
    Case("future-ts", INC_TELEMETRY, body(ts="2024-05-01T13:00:00Z"), Reason.FUTURE_TS),
    Case("missing-seq", INC_TELEMETRY, body(seq=None), Reason.MISSING_FIELD),
    Case("missing-values", INC_TELEMETRY, body(values=None), Reason.MISSING_FIELD),
    Case("seq-string", INC_TELEMETRY, body(seq="7"), Reason.WRONG_TYPE),
    Case("seq-negative", INC_TELEMETRY, body(seq=-1), Reason.WRONG_TYPE),
    Case("seq-float", INC_TELEMETRY, body(seq=7.0), Reason.WRONG_TYPE),
    Case("seq-bool", INC_TELEMETRY, body(seq=True), Reason.WRONG_TYPE),
    Case("buffered-string", INC_TELEMETRY, body(buffered="yes"), Reason.WRONG_TYPE),
    Case("values-list", INC_TELEMETRY, body(values=[37.1]), Reason.WRONG_TYPE),
    Case("values-empty", INC_TELEMETRY, body(values={}), Reason.WRONG_TYPE),
    Case("value-string", INC_TELEMETRY, body(values={"temp_c": "37.1"}), Reason.WRONG_TYPE),
    Case("value-bool-for-number", INC_TELEMETRY, body(values={"temp_c": True}), Reason.WRONG_TYPE),
    Case("value-number-for-bool", INC_TELEMETRY, body(values={"door_open": 1}), Reason.WRONG_TYPE),
    Case("ts-list", INC_TELEMETRY, body(ts=[2024]), Reason.WRONG_TYPE),
    Case("unknown-metric", INC_TELEMETRY, body(values={"flow_lpm": 28.3}), Reason.UNKNOWN_METRIC),
    Case("bad-status", INC_STATUS, b"maybe", Reason.BAD_STATUS),
    Case("bad-status-json-object", INC_STATUS, b'{"online": true}', Reason.BAD_STATUS),
]


def test_reason_table_covers_every_reason() -> None:
    """The table below produces every Reason, so a new Reason cannot go untested."""
    assert {case.reason for case in CASES} == set(Reason)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rejection_reason(case: Case) -> None:
    """Each malformed message is rejected with its specific reason and a non-empty detail."""
    decoded = decode(case.topic, case.payload, NOW_US, DEVICES)

    assert isinstance(decoded, Rejection)
    assert decoded.reason is case.reason, decoded.detail
    assert decoded.detail


def test_seq_beyond_sqlite_integer_range_is_rejected() -> None:
    """A seq that does not fit a signed 64-bit integer is rejected, since no backend can store it."""
    decoded = decode(INC_TELEMETRY, body(seq=2**63), NOW_US, DEVICES)

    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.WRONG_TYPE


def test_largest_storable_seq_is_accepted() -> None:
    """The largest signed 64-bit seq is still a valid reading."""
    decoded = decode(INC_TELEMETRY, body(seq=2**63 - 1), NOW_US, DEVICES)

    assert isinstance(decoded, Telemetry)
    assert decoded.seq == 2**63 - 1


# --- limits ----------------------------------------------------------------------------


def test_future_ts_exactly_at_the_skew_limit_is_accepted() -> None:
    """A timestamp exactly max_future_skew_s ahead of now is accepted."""
    decoded = decode(INC_TELEMETRY, body(ts="2024-05-01T12:05:00Z"), NOW_US, DEVICES, max_future_skew_s=300.0)

    assert isinstance(decoded, Telemetry)
    assert decoded.ts_us == NOW_US + 300 * US


def test_future_ts_one_microsecond_beyond_the_skew_limit_is_rejected() -> None:
    """A timestamp one microsecond beyond max_future_skew_s is rejected as future_ts."""
    payload = body(ts="2024-05-01T12:05:00.000001Z")

    decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES, max_future_skew_s=300.0)

    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.FUTURE_TS
    assert decoded.device_id == "inc-01"


def test_zero_skew_accepts_now_and_rejects_the_next_microsecond() -> None:
    """With no allowed skew, a reading stamped now passes and one stamped 1 us later does not."""
    at_now = decode(INC_TELEMETRY, body(ts=TS), NOW_US, DEVICES, max_future_skew_s=0)
    later = decode(
        INC_TELEMETRY, body(ts="2024-05-01T12:00:00.000001Z"), NOW_US, DEVICES, max_future_skew_s=0
    )

    assert isinstance(at_now, Telemetry)
    assert isinstance(later, Rejection)
    assert later.reason is Reason.FUTURE_TS


def test_past_timestamps_are_accepted() -> None:
    """An old (backfilled) timestamp is not limited by the future-skew rule."""
    decoded = decode(INC_TELEMETRY, body(ts="2024-04-01T00:00:00Z", buffered=True), NOW_US, DEVICES)

    assert isinstance(decoded, Telemetry)


def _padded(size: int) -> bytes:
    """A valid telemetry payload padded with JSON whitespace to exactly ``size`` bytes."""
    payload = body()
    assert len(payload) <= size
    return payload[:-1] + b" " * (size - len(payload)) + payload[-1:]


def test_payload_exactly_at_max_size_is_accepted() -> None:
    """A payload of exactly max_payload_bytes is decoded."""
    payload = _padded(256)
    assert len(payload) == 256

    decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES, max_payload_bytes=256)

    assert isinstance(decoded, Telemetry)


def test_payload_one_byte_over_max_size_is_rejected() -> None:
    """A payload one byte over max_payload_bytes is rejected as too_large."""
    payload = _padded(257)
    assert len(payload) == 257

    decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES, max_payload_bytes=256)

    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.TOO_LARGE
    assert decoded.device_id == "inc-01"


# --- status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b'"online"', True),
        (b"OFFLINE\n", False),
    ],
)
def test_status_online_offline(payload: bytes, online: bool) -> None:
    """A status message (plain or JSON string, any case) gives the device's online state."""
    assert decode(INC_STATUS, payload, NOW_US, DEVICES) == Status("inc-01", online=online)


# --- rejections name the device when known ---------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (INC_TELEMETRY, b"not json"),
        (INC_TELEMETRY, body(seq="x")),
        (INC_TELEMETRY, b"\xff"),
        (INC_STATUS, b"maybe"),
        ("coldwatch/plant-1/culture-lab/cryoshipper/inc-01/telemetry", body()),
        ("coldwatch/plant-9/culture-lab/incubator/inc-01/telemetry", body()),
    ],
)
def test_rejection_names_a_known_device(topic: str, payload: bytes) -> None:
    """A rejection of a message from a registered device carries that device's id."""
    decoded = decode(topic, payload, NOW_US, DEVICES)

    assert isinstance(decoded, Rejection)
    assert decoded.device_id == "inc-01"


@pytest.mark.parametrize(
    "topic",
    [
        "coldwatch/plant-1/culture-lab/incubator/inc-99/telemetry",
        "coldwatch/plant-1/culture-lab/incubator/inc-01",
    ],
)
def test_rejection_of_unknown_or_unroutable_device_has_no_device_id(topic: str) -> None:
    """A message whose device is unregistered or whose topic cannot be routed has no device id."""
    decoded = decode(topic, body(), NOW_US, DEVICES)

    assert isinstance(decoded, Rejection)
    assert decoded.device_id is None


def test_custom_topic_prefix() -> None:
    """The configured topic prefix replaces `coldwatch` as the first topic level."""
    topic = "plant/plant-1/culture-lab/incubator/inc-01/telemetry"

    accepted = decode(topic, body(), NOW_US, DEVICES, prefix="plant")
    refused = decode(INC_TELEMETRY, body(), NOW_US, DEVICES, prefix="plant")

    assert isinstance(accepted, Telemetry)
    assert isinstance(refused, Rejection)
    assert refused.reason is Reason.BAD_TOPIC
