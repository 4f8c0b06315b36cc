"""Decoding of device messages: topic and payload in, a reading or a counted rejection out.

Pure: takes the message and the current time as arguments, does no I/O and keeps no
state. The device payload contract is documented in README.md.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from coldwatch.catalogue import DEFAULT_RANGES, KINDS, Kind
from coldwatch.config import DeviceConfig

__all__ = [
    "Range",
    "Reason",
    "Rejection",
    "Status",
    "Telemetry",
    "decode",
    "parse_timestamp_us",
]

US: Final = 1_000_000
# Readings stamped before 2000-01-01 come from a device whose clock was never set.
MIN_TS_US: Final = 946_684_800 * US
# Epoch seconds beyond 9999-12-31: no clock means that; multiplied out, 1e308 overflows.
MAX_TS_S: Final = 253_402_300_799
MAX_SEQ: Final = 2**63 - 1  # a signed 64-bit integer in every database
TOP_LEVEL_KEYS: Final = frozenset({"ts", "seq", "values", "buffered"})
_QUOTE_THEN_SPACE: Final = re.compile(rb'"[ \t\n\r]')  # JSON whitespace after a string


class Reason(enum.StrEnum):
    """Why a message was rejected. Bounded: used as a metric label."""

    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NON_FINITE = "non_finite"
    NOT_AN_OBJECT = "not_an_object"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE = "unknown_device"
    KIND_MISMATCH = "kind_mismatch"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_TS = "missing_ts"
    INVALID_TS = "invalid_ts"
    FUTURE_TS = "future_ts"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_METRIC = "unknown_metric"
    BAD_STATUS = "bad_status"
    DUPLICATE_KEY = "duplicate_key"
    OUT_OF_RANGE = "out_of_range"
    # The collector failed on the message (a fault of coldwatch, not necessarily of the
    # device): rejected, quarantined and acknowledged all the same, never retried forever.
    INTERNAL_ERROR = "internal_error"


Range = tuple[float, float]  # inclusive (lowest, highest) plausible value of a metric


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One accepted reading message: several metric values from one device at one time."""

    device_id: str
    seq: int
    ts_us: int
    buffered: bool
    values: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Status:
    """A device's retained online/offline status (also its last will)."""

    device_id: str
    online: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that was refused, with the reason and a human-readable detail."""

    reason: Reason
    detail: str
    device_id: str | None = None


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, reason: Reason, detail: str, device_id: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


def decode(
    topic: str,
    payload: bytes,
    now_us: int,
    devices: dict[str, DeviceConfig],
    *,
    prefix: str = "coldwatch",
    max_payload_bytes: int = 64 * 1024,
    max_future_skew_s: float = 300.0,
    ranges: Mapping[str, Range] | None = None,
) -> Telemetry | Status | Rejection:
    """Decode one MQTT message into a :class:`Telemetry`, a :class:`Status` or a :class:`Rejection`.

    ``ranges``: the plausible range of each metric (default: the catalogue's); a value
    outside it rejects the whole message.
    """
    device_id: str | None = None
    try:
        device, leaf = _route(topic, devices, prefix)
        device_id = device.id
        if len(payload) > max_payload_bytes:
            raise _Reject(Reason.TOO_LARGE, f"{len(payload)} bytes > {max_payload_bytes}")
        if leaf == "status":
            return _decode_status(device.id, payload)
        return _decode_telemetry(
            device, payload, now_us, max_future_skew_s, DEFAULT_RANGES if ranges is None else ranges
        )
    except _Reject as rej:
        return Rejection(rej.reason, rej.detail, device_id or rej.device_id)


def _route(topic: str, devices: dict[str, DeviceConfig], prefix: str) -> tuple[DeviceConfig, str]:
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != prefix or parts[5] not in {"telemetry", "status"}:
        raise _Reject(Reason.BAD_TOPIC, f"expected {prefix}/site/area/kind/device/(telemetry|status)")
    _, site, area, kind, device_id, leaf = parts
    device = devices.get(device_id)
    if device is None:
        raise _Reject(Reason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
    if kind != device.kind.value:
        raise _Reject(
            Reason.KIND_MISMATCH, f"topic kind {kind!r}, registered {device.kind.value!r}", device.id
        )
    if site != device.site or area != device.area:
        raise _Reject(
            Reason.TOPIC_MISMATCH,
            f"topic site/area {site}/{area}, registered {device.site}/{device.area}",
            device.id,
        )
    return device, leaf


def _decode_status(device_id: str, payload: bytes) -> Status:
    try:
        text = payload.decode("utf-8").strip().strip('"').lower()
    except UnicodeDecodeError as exc:
        raise _Reject(Reason.INVALID_UTF8, str(exc)) from None
    if text not in {"online", "offline"}:
        raise _Reject(Reason.BAD_STATUS, "status must be 'online' or 'offline'")
    return Status(device_id, online=text == "online")


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "UTF-8" in message:
            raise _Reject(Reason.INVALID_UTF8, _utf8_problem(payload, message)) from None
        if "infinity" in message or _has_non_finite_literal(payload):
            raise _Reject(Reason.NON_FINITE, "NaN or infinity is not a valid reading") from None
        raise _Reject(Reason.INVALID_JSON, message) from None


def _utf8_problem(payload: bytes, fallback: str) -> str:
    """Where ``payload`` stops being UTF-8, by byte (the parser's own words speak of str and surrogates)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: byte {exc.start} (0x{payload[exc.start]:02x}): {exc.reason}"
    return fallback  # valid UTF-8 bytes, refused for a lone surrogate written as \ud800-style escape


def _has_non_finite_literal(payload: bytes) -> bool:
    """Whether ``payload`` parses only when NaN/Infinity literals are allowed (error path only)."""
    found = False

    def constant(_: str) -> float:
        nonlocal found
        found = True
        return 0.0

    try:
        json.loads(payload, parse_constant=constant)
    except (ValueError, RecursionError):  # nested too deep for the standard library's parser
        return False
    return found


def _key_tokens_at_most(payload: bytes) -> int:
    """An upper bound on the object keys written in ``payload`` (duplicates included).

    A key is a string whose closing quote is followed by optional JSON whitespace and a
    colon, so that quote is followed by ``:`` or by whitespace: each key adds one to
    exactly one of the two counts. A quote inside a string only adds more. Compact and
    ``json.dumps`` output have no quote followed by whitespace, so the bound is exact and
    costs one count and one search.
    """
    colons = payload.count(b'":')
    if _QUOTE_THEN_SPACE.search(payload) is None:
        return colons
    return colons + len(_QUOTE_THEN_SPACE.findall(payload))


def _reject_duplicate(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: an object as a dict, rejected when it names a key twice."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(Reason.DUPLICATE_KEY, f"key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return out


def _check_unique_keys(payload: bytes, parsed_keys: int) -> None:
    """Reject ``payload`` if one of its objects names a key twice (orjson keeps the last one silently).

    ``parsed_keys``: how many keys the parsed objects hold. When the bound on the keys
    written equals it, none was dropped; otherwise (rare) a parse that sees every pair decides.
    """
    if _key_tokens_at_most(payload) == parsed_keys:
        return
    try:
        json.loads(payload, object_pairs_hook=_reject_duplicate)
    except (ValueError, RecursionError) as exc:  # orjson parsed it; the standard library should too
        raise _Reject(Reason.INVALID_JSON, str(exc)[:200]) from None


def _decode_telemetry(
    device: DeviceConfig, payload: bytes, now_us: int, max_future_skew_s: float, ranges: Mapping[str, Range]
) -> Telemetry:
    body = _loads(payload)
    if not isinstance(body, dict):
        raise _Reject(Reason.NOT_AN_OBJECT, f"payload is a JSON {type(body).__name__}, not an object")
    extra = body.keys() - TOP_LEVEL_KEYS
    if extra:
        raise _Reject(Reason.UNKNOWN_FIELD, f"unknown field(s) {sorted(extra)}")
    if "ts" not in body:
        raise _Reject(Reason.MISSING_TS, "'ts' is required")
    ts_us = parse_timestamp_us(body["ts"])
    if ts_us - now_us > max_future_skew_s * US:
        raise _Reject(
            Reason.FUTURE_TS, f"ts is {(ts_us - now_us) / US:.1f} s in the future (max {max_future_skew_s:g})"
        )
    seq = body.get("seq")
    if seq is None:
        raise _Reject(Reason.MISSING_FIELD, "'seq' is required")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise _Reject(Reason.WRONG_TYPE, "'seq' must be an integer from 0 to 2^63-1")
    buffered = body.get("buffered", False)
    if type(buffered) is not bool:
        raise _Reject(Reason.WRONG_TYPE, "'buffered' must be true or false")
    values = body.get("values")
    if values is None:
        raise _Reject(Reason.MISSING_FIELD, "'values' is required")
    if not isinstance(values, dict) or not values:
        raise _Reject(Reason.WRONG_TYPE, "'values' must be a non-empty object")
    decoded = _decode_values(device.kind, values, ranges)
    # Only now, for a message otherwise accepted: its objects are this one and ``values``
    # (every other field is a scalar). A duplicate elsewhere fails some check above.
    _check_unique_keys(payload, len(body) + len(values))
    return Telemetry(device.id, seq, ts_us, buffered, decoded)


def _decode_values(
    kind: Kind, values: dict[str, Any], ranges: Mapping[str, Range]
) -> tuple[tuple[str, float], ...]:
    specs = KINDS[kind]
    out: list[tuple[str, float]] = []
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise _Reject(Reason.UNKNOWN_METRIC, f"{name!r} is not a metric of a {kind.value}")
        kind_of_value = type(value)
        if spec.boolean:
            if kind_of_value is not bool:
                raise _Reject(Reason.WRONG_TYPE, f"{name!r} must be true or false")
            out.append((name, 1.0 if value else 0.0))
        elif kind_of_value is int or kind_of_value is float:
            number = float(value)
            if not math.isfinite(number):
                raise _Reject(Reason.NON_FINITE, f"{name!r} is not finite")
            plausible = ranges.get(name)
            if plausible is not None and not plausible[0] <= number <= plausible[1]:
                low, high = plausible
                raise _Reject(Reason.OUT_OF_RANGE, f"{name!r} {number:.6g} is outside {low:g}..{high:g}")
            out.append((name, number))
        else:
            raise _Reject(Reason.WRONG_TYPE, f"{name!r} must be a number")
    return tuple(out)


def parse_timestamp_us(value: Any) -> int:
    """Parse an RFC 3339 timestamp with offset, or Unix epoch seconds, to epoch microseconds."""
    if type(value) is int or type(value) is float:
        if not math.isfinite(value):
            raise _Reject(Reason.NON_FINITE, "'ts' is not finite")
        if not 0 <= value <= MAX_TS_S:
            raise _Reject(Reason.INVALID_TS, f"'ts' {value:.6g} is not epoch seconds up to the year 9999")
        ts_us = round(value * US)
    elif isinstance(value, str):
        try:
            # RFC 3339 allows lower-case "t" and "z"; Python 3.11 accepts only upper case.
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise _Reject(Reason.INVALID_TS, f"'ts' {value[:40]!r} is not RFC 3339") from None
        if moment.tzinfo is None or ("T" not in value.upper() and " " not in value):
            raise _Reject(Reason.INVALID_TS, f"'ts' {value[:40]!r} has no date-time with UTC offset")
        try:
            ts_us = int(moment.timestamp()) * US + moment.microsecond
        except (OverflowError, ValueError):  # e.g. year 1 with a positive offset is before year 1 UTC
            raise _Reject(Reason.INVALID_TS, f"'ts' {value[:40]!r} is out of range") from None
    else:
        raise _Reject(Reason.WRONG_TYPE, "'ts' must be an RFC 3339 string or epoch seconds")
    if ts_us < MIN_TS_US:
        raise _Reject(Reason.INVALID_TS, "'ts' is before 2000-01-01: the device clock is not set")
    return ts_us
