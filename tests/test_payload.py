"""Payload decoding: topic and bytes in, a Telemetry, a Status or a Rejection with a Reason out."""

from __future__ import annotations

import json
from typing import NamedTuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig, IngestConfig
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


DEEP = b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": ' + b"[" * 2000 + b"]" * 2000 + b"}}"


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
    # Poison: each of these once raised out of the decoder instead of being rejected.
    Case("nested-2000-deep", INC_TELEMETRY, DEEP, Reason.INVALID_JSON),
    Case(
        "nested-2000-deep-objects", INC_TELEMETRY, b'{"a":' * 2000 + b"1" + b"}" * 2000, Reason.INVALID_JSON
    ),
    Case(
        "ts-1e308", INC_TELEMETRY, b'{"ts": 1e308, "seq": 1, "values": {"temp_c": 37.0}}', Reason.INVALID_TS
    ),
    Case("ts-minus-1e308", INC_TELEMETRY, body(ts=-1e308), Reason.INVALID_TS),
    Case("ts-after-year-9999", INC_TELEMETRY, body(ts=253_402_300_800), Reason.INVALID_TS),
    Case("ts-before-year-1-utc", INC_TELEMETRY, body(ts="0001-01-01T00:00:00+23:59"), Reason.INVALID_TS),
    # Plausibility.
    Case("rh-1e300", INC_TELEMETRY, body(values={"rh_pct": 1e300}), Reason.OUT_OF_RANGE),
    Case("rh-above-100", INC_TELEMETRY, body(values={"rh_pct": 100.01}), Reason.OUT_OF_RANGE),
    Case("co2-negative", INC_TELEMETRY, body(values={"co2_pct": -0.5}), Reason.OUT_OF_RANGE),
    Case("below-absolute-zero", INC_TELEMETRY, body(values={"temp_c": -273.16}), Reason.OUT_OF_RANGE),
    Case("temp-1e6", INC_TELEMETRY, body(values={"temp_c": 1e6}), Reason.OUT_OF_RANGE),
    Case("negative-count", PC_TELEMETRY, body(values={"particles_0_5um_m3": -1}), Reason.OUT_OF_RANGE),
    Case("negative-flow", PC_TELEMETRY, body(values={"flow_lpm": -28.3}), Reason.OUT_OF_RANGE),
    Case(
        "one-bad-value-rejects-all",
        INC_TELEMETRY,
        body(values={"temp_c": 37.0, "co2_pct": 5.0, "rh_pct": 101.0}),
        Reason.OUT_OF_RANGE,
    ),
    # Duplicate keys: which value the device meant is unknown.
    Case(
        "duplicate-value-key",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": 99, "temp_c": 37}}',
        Reason.DUPLICATE_KEY,
    ),
    Case(
        "duplicate-top-level-key",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "seq": 2, "values": {"temp_c": 37}}',
        Reason.DUPLICATE_KEY,
    ),
    Case(
        "duplicate-key-spaced",
        INC_TELEMETRY,
        b'{"ts" : "' + TS.encode() + b'" , "seq"\n:\t1, "values" :{"temp_c"  : 99, "temp_c"\r\n: 37}}',
        Reason.DUPLICATE_KEY,
    ),
    Case(
        "duplicate-key-escaped",
        INC_TELEMETRY,
        b'{"ts": "' + TS.encode() + b'", "seq": 1, "values": {"temp_c": 99, "\\u0074emp_c": 37}}',
        Reason.DUPLICATE_KEY,
    ),
]

# Produced by the pipeline, not by decode: when decoding or judging a message fails.
NOT_FROM_DECODE = {Reason.INTERNAL_ERROR}


def test_reason_table_covers_every_reason() -> None:
    """The table below produces every Reason decode can give, so a new Reason cannot go untested."""
    assert {case.reason for case in CASES} == set(Reason) - NOT_FROM_DECODE


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


# --- plausibility ----------------------------------------------------------------------

CRYO = DeviceConfig(id="ln2-01", kind=Kind.CRYOSHIPPER, site="plant-1", area="store")
CRYO_TELEMETRY = "coldwatch/plant-1/store/cryoshipper/ln2-01/telemetry"


@pytest.mark.parametrize(
    ("topic", "values"),
    [
        (INC_TELEMETRY, {"rh_pct": 0.0, "co2_pct": 100.0, "temp_c": -273.15}),
        (INC_TELEMETRY, {"rh_pct": 100, "co2_pct": 0, "temp_c": 1000}),
        (CRYO_TELEMETRY, {"tilt_deg": 180.0, "ln2_level_pct": 0.0, "battery_pct": 100.0, "temp_b_c": -196.0}),
        (PC_TELEMETRY, {"particles_0_5um_m3": 0, "particles_5_0um_m3": 29, "flow_lpm": 0.0}),
    ],
)
def test_values_at_the_edges_of_their_plausible_range_are_accepted(
    topic: str, values: dict[str, float]
) -> None:
    """The plausible ranges are inclusive: 0 and 100 %, absolute zero, 180 degrees of tilt pass."""
    decoded = decode(topic, body(values=values), NOW_US, {**DEVICES, CRYO.id: CRYO})

    assert isinstance(decoded, Telemetry), decoded


def test_configured_range_replaces_the_default() -> None:
    """ingest.plausible_ranges narrows (or widens) a metric's range; a side left out keeps its default."""
    ingest = IngestConfig.model_validate({"plausible_ranges": {"temp_c": {"max": 60}, "co2_pct": {"min": 1}}})
    ranges = ingest.ranges()

    assert ranges["temp_c"] == (-273.15, 60.0)
    assert ranges["co2_pct"] == (1.0, 100.0)
    hot = decode(INC_TELEMETRY, body(values={"temp_c": 60.5}), NOW_US, DEVICES, ranges=ranges)
    low_co2 = decode(INC_TELEMETRY, body(values={"co2_pct": 0.5}), NOW_US, DEVICES, ranges=ranges)
    assert isinstance(hot, Rejection)
    assert hot.reason is Reason.OUT_OF_RANGE
    assert isinstance(low_co2, Rejection)
    assert low_co2.reason is Reason.OUT_OF_RANGE
    assert isinstance(
        decode(INC_TELEMETRY, body(values={"temp_c": 60}), NOW_US, DEVICES, ranges=ranges), Telemetry
    )


@pytest.mark.parametrize(
    "ranges",
    [
        {"door_open": {"min": 0}},  # a boolean has no range
        {"temp_f": {"max": 1}},  # no such metric
        {"rh_pct": {"min": 50, "max": 40}},
        {"rh_pct": {"min": 101}},  # above the default max that it keeps
        {"rh_pct": {"max": float("inf")}},
        {"rh_pct": {"low": 0}},  # extra="forbid"
    ],
)
def test_bad_plausible_range_is_refused(ranges: dict[str, object]) -> None:
    """A range for an unknown or boolean metric, an empty range or a non-finite bound fails validation."""
    with pytest.raises(ValidationError):
        IngestConfig.model_validate({"plausible_ranges": ranges})


# --- duplicate keys --------------------------------------------------------------------


def test_pretty_printed_payload_without_duplicates_is_accepted() -> None:
    """Whitespace before colons or after strings (which makes the cheap key count inexact) rejects nothing."""
    doc = {"seq": 7, "values": {"temp_c": 37.1, "co2_pct": 5.0}, "ts": TS}
    for payload in (
        json.dumps(doc, indent=2).encode(),
        json.dumps(doc, separators=(" , ", " : ")).encode(),
        b'{"seq" :7,"values":{"temp_c"\t:37.1},"ts":"' + TS.encode() + b'"\n}',
    ):
        decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES)
        assert isinstance(decoded, Telemetry), (payload, decoded)


_WS = st.text(alphabet=" \t\n\r", max_size=2)
_INCUBATOR_NUMBERS = ["temp_c", "co2_pct", "rh_pct"]


@st.composite
def _written_payloads(draw: st.DrawFn) -> tuple[bytes, list[str], list[str]]:
    """A telemetry payload written by hand: top-level and value keys (maybe repeated, maybe
    escaped), arbitrary JSON whitespace; with the keys as written."""
    top = draw(
        st.lists(st.sampled_from(["ts", "seq"]), min_size=2, max_size=3).filter(
            lambda k: set(k) == {"ts", "seq"}
        )
    )
    names = draw(st.lists(st.sampled_from(_INCUBATOR_NUMBERS), min_size=1, max_size=4))

    def key(name: str) -> str:
        escaped = draw(st.booleans())
        text = f"\\u{ord(name[0]):04x}{name[1:]}" if escaped else name
        return f'"{text}"{draw(_WS)}:{draw(_WS)}'

    def member(name: str, value: str) -> str:
        return f"{draw(_WS)}{key(name)}{value}{draw(_WS)}"

    scalars = {"ts": f'"{TS}"', "seq": "7"}
    members = [member(name, scalars[name]) for name in top]
    inner = ",".join(member(name, str(draw(st.integers(0, 100)))) for name in names)
    members.insert(draw(st.integers(0, len(members))), member("values", "{" + inner + "}"))
    return ("{" + ",".join(members) + "}").encode(), top, names


@given(_written_payloads())
@settings(max_examples=400)
def test_duplicate_keys_are_always_found(written: tuple[bytes, list[str], list[str]]) -> None:
    """Whatever the whitespace and escapes, a key named twice rejects the payload, and only that."""
    payload, top, names = written

    decoded = decode(INC_TELEMETRY, payload, NOW_US, DEVICES)

    if len(set(top)) < len(top) or len(set(names)) < len(names):
        assert isinstance(decoded, Rejection), payload
        assert decoded.reason is Reason.DUPLICATE_KEY, (payload, decoded)
    else:
        assert isinstance(decoded, Telemetry), (payload, decoded)
        assert [name for name, _ in decoded.values] == names


def test_invalid_utf8_detail_names_the_offending_byte() -> None:
    """A payload that is not UTF-8 is rejected with the position and value of its first bad byte."""
    decoded = decode(INC_TELEMETRY, b'{"ts": "2024\x92"}', NOW_US, DEVICES)
    assert isinstance(decoded, Rejection)
    assert (decoded.reason, decoded.detail) == (
        Reason.INVALID_UTF8,
        "not UTF-8: byte 12 (0x92): invalid start byte",
    )
