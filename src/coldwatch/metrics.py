"""Prometheus metrics. The only module that imports prometheus_client.

The registry is injected, so tests build a fresh one and read real samples from it.
Label values come from the device registry and fixed enums, never from payloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from coldwatch.catalogue import KINDS
from coldwatch.config import DeviceConfig
from coldwatch.payload import Reason
from coldwatch.rules.lifecycle import Alarm

__all__ = ["CONTENT_TYPE", "Metrics", "render"]

# "_created" series double the exposition size and no dashboard or alert here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DEVICE_LABELS = ("device", "kind", "site", "area")


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text of ``registry``."""
    return b"".join(render_chunks(registry))


@dataclass(slots=True)
class _PerDevice:
    """Per-device counters and latest values (device id -> value)."""

    readings: dict[str, int] = field(default_factory=dict)
    buffered: dict[str, int] = field(default_factory=dict)
    seq_missing: dict[str, int] = field(default_factory=dict)
    seq_restarts: dict[str, int] = field(default_factory=dict)
    last_value: dict[str, dict[str, float]] = field(default_factory=dict)
    last_ts_s: dict[str, float] = field(default_factory=dict)
    online: dict[str, int] = field(default_factory=dict)
    limits: Callable[[], Iterable[tuple[str, str, str, str, str, float]]] = list

    def add(self, series: dict[str, int], device_id: str, amount: int = 1) -> None:
        """Count ``amount`` more on a device's counter."""
        series[device_id] = series.get(device_id, 0) + amount


Series = tuple[str, str, str, tuple[str, ...], Iterable[tuple[tuple[str, ...], float]]]


class _PerDeviceCollector(Collector):
    """The per-device series, built from plain data when scraped.

    For the registry (tests, ``get_sample_value``) it yields metric families; the /metrics
    endpoint instead streams their text (``render_chunks``): with 10,000 devices the
    families' sample objects cost a hundred megabytes for every scrape.
    """

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        if _STREAMING.get():
            return
        for name, kind, text, labels, samples in self.series():
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(name, text, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family

    def series(self) -> Iterator[Series]:
        """(name, type, help, label names, samples) of each family, one family at a time."""
        owner = self._owner
        data = owner.per_device
        counters = (
            (
                "coldwatch_readings",
                "Readings (messages) committed to storage, by device",
                data.readings,
                True,
            ),
            (
                "coldwatch_seq_missing_readings",
                "Readings missing from a device's sequence (lost upstream, or rejected: see the quarantine)",
                data.seq_missing,
                True,
            ),
            (
                "coldwatch_seq_restarts",
                "Times a device restarted its sequence counter",
                data.seq_restarts,
                False,
            ),
            (
                "coldwatch_buffered_readings",
                "Readings backfilled by a device from its buffer (not live)",
                data.buffered,
                False,
            ),
        )
        for name, text, counts, every_device in counters:
            # A zero for every registered device where rates must work from the start.
            ids = [d.id for d in owner.devices] if every_device else list(counts)
            yield name, "counter", text, _DEVICE_LABELS, [(owner.labels_of(i), counts.get(i, 0)) for i in ids]
        yield (
            "coldwatch_last_value",
            "gauge",
            "Latest value of each device metric (booleans as 0/1)",
            (*_DEVICE_LABELS, "metric"),
            [
                ((*owner.labels_of(device_id), metric), value)
                for device_id, values in list(data.last_value.items())
                for metric, value in values.items()
            ],
        )
        for name, text, values in (
            (
                "coldwatch_device_last_reading_timestamp_seconds",
                "Device timestamp of the newest reading, Unix seconds",
                data.last_ts_s,
            ),
            (
                "coldwatch_device_online",
                "1 when the device's retained status is online, 0 when offline",
                data.online,
            ),
        ):
            yield (
                name,
                "gauge",
                text,
                _DEVICE_LABELS,
                [(owner.labels_of(i), v) for i, v in list(values.items())],
            )
        yield (
            "coldwatch_rule_limit",
            "gauge",
            "Every configured limit, for drawing limit lines",
            (*_DEVICE_LABELS, "metric", "rule", "severity", "direction"),
            (  # a generator: every device's limits are never all in memory at once
                ((*owner.labels_of(device_id), metric, rule, severity, direction), value)
                for device_id, metric, rule, severity, direction, value in data.limits()
            ),
        )

    def text_chunks(self) -> Iterator[bytes]:
        """The exposition text of :meth:`series`, in chunks of at most ``_CHUNK_LINES`` lines."""
        for name, kind, text, labels, samples in self.series():
            sample = f"{name}_total" if kind == "counter" else name
            lines = [f"# HELP {sample} {_escape_help(text)}\n# TYPE {sample} {kind}\n"]
            order = sorted(range(len(labels)), key=labels.__getitem__)  # as the client library writes
            for values, value in samples:
                label_text = ",".join(f'{labels[i]}="{_escape(values[i])}"' for i in order)
                lines.append(f"{sample}{{{label_text}}} {floatToGoString(value)}\n")  # type: ignore[no-untyped-call]
                if len(lines) >= _CHUNK_LINES:
                    yield "".join(lines).encode()
                    lines = []
            yield "".join(lines).encode()


_STREAMING: ContextVar[bool] = ContextVar("coldwatch_metrics_streaming", default=False)
_CHUNK_LINES = 2000
_PER_DEVICE: WeakKeyDictionary[CollectorRegistry, _PerDeviceCollector] = WeakKeyDictionary()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_chunks(registry: CollectorRegistry) -> Iterator[bytes]:
    """The exposition text of ``registry``, the per-device series streamed in chunks."""
    token = _STREAMING.set(True)
    try:
        head = generate_latest(registry)
    finally:
        _STREAMING.reset(token)
    yield head
    per_device = _PER_DEVICE.get(registry)
    if per_device is not None:
        yield from per_device.text_chunks()


class _ScrapeTimeCollector(Collector):
    """Values computed when scraped, so nothing stale survives between scrapes."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        age = GaugeMetricFamily(
            "coldwatch_device_last_reading_age_seconds",
            "Seconds since the collector last received a reading from the device",
            labels=_DEVICE_LABELS,
        )
        now_s = owner.clock()
        for device in owner.devices:
            last_us = owner.last_received_us.get(device.id)
            if last_us is not None:
                age.add_metric(owner.labels_of(device.id), max(0.0, now_s - last_us / 1e6))
        yield age
        depth = GaugeMetricFamily(
            "coldwatch_ingest_queue_depth", "Messages received but not yet committed to storage"
        )
        depth.add_metric([], float(owner.queue_depth()))
        yield depth
        oldest_us = owner.oldest_unacked_us()
        held = GaugeMetricFamily(
            "coldwatch_oldest_unacked_message_age_seconds",
            "Age of the oldest message received and not yet acknowledged to the broker (0 when none); "
            "a batch takes milliseconds: alert when this stays above a few seconds",
        )
        held.add_metric([], max(0.0, now_s - oldest_us / 1e6) if oldest_us is not None else 0.0)
        yield held
        unacked = GaugeMetricFamily(
            "coldwatch_unacked_messages", "Messages received and not yet acknowledged to the broker"
        )
        unacked.add_metric([], float(owner.unacked()))
        yield unacked
        alarms = GaugeMetricFamily(
            "coldwatch_alarms_open",
            "Open alarms (1 per alarm) by device, metric, rule, severity and lifecycle state",
            labels=[*_DEVICE_LABELS, "metric", "rule", "severity", "state"],
        )
        shelved = GaugeMetricFamily(
            "coldwatch_alarms_shelved", "Open alarms shelved now", labels=[*_DEVICE_LABELS, "metric", "rule"]
        )
        now_us = int(now_s * 1e6)
        for alarm in owner.open_alarms():
            if alarm.key.device_id not in owner.registered:
                continue
            labels = [*owner.labels_of(alarm.key.device_id), alarm.key.metric, alarm.key.rule]
            alarms.add_metric([*labels, alarm.severity.label, alarm.state.value], 1.0)
            if alarm.shelved(now_us):
                shelved.add_metric(labels, 1.0)
        yield alarms
        yield shelved
        forecast = GaugeMetricFamily(
            "coldwatch_hold_time_forecast_hours",
            "Predicted hours until an LN2 shipper reaches its temperature limit or runs dry",
            labels=_DEVICE_LABELS,
        )
        for device_id, hours in owner.forecasts().items():
            if hours is not None:
                forecast.add_metric(owner.labels_of(device_id), hours)
        yield forecast
        late = GaugeMetricFamily(
            "coldwatch_rules_too_late_readings",
            "Readings stored but too far behind their device's newest to be judged again",
        )
        late.add_metric([], float(owner.too_late()))
        yield late
        yield from _notification_families(owner, now_s)

    def describe(self) -> Iterable[Metric]:
        return []


def _notification_families(owner: Metrics, now_s: float) -> Iterable[Metric]:
    delivered, failed, pending, oldest_us = owner.notifications()
    sent = CounterMetricFamily(
        "coldwatch_notifications_delivered", "Notifications delivered, by channel", labels=["channel"]
    )
    bad = CounterMetricFamily(
        "coldwatch_notification_attempts_failed",
        "Failed notification attempts (retried), by channel",
        labels=["channel"],
    )
    for channel in ("alertmanager", "webhook"):
        sent.add_metric([channel], float(delivered.get(channel, 0)))
        bad.add_metric([channel], float(failed.get(channel, 0)))
    yield sent
    yield bad
    waiting = GaugeMetricFamily("coldwatch_notifications_pending", "Notifications waiting in the outbox")
    waiting.add_metric([], float(pending))
    yield waiting
    age = GaugeMetricFamily(
        "coldwatch_notification_oldest_pending_age_seconds",
        "Age of the oldest undelivered notification (0 when none): alert on it",
    )
    age.add_metric([], max(0.0, now_s - oldest_us / 1e6) if oldest_us is not None else 0.0)
    yield age
    dead_by_channel, dead_rows = owner.notification_dead_letters()
    dead = CounterMetricFamily(
        "coldwatch_notifications_dead_lettered",
        "Notifications given up on (rejected permanently too often, or receiver removed), by channel",
        labels=["channel"],
    )
    for channel in ("alertmanager", "webhook"):
        dead.add_metric([channel], float(dead_by_channel.get(channel, 0)))
    yield dead
    stored = GaugeMetricFamily(
        "coldwatch_notifications_dead_letters",
        "Notifications in the dead-letter state in the outbox (never delivered, no longer retried)",
    )
    stored.add_metric([], float(dead_rows))
    yield stored


class Metrics:
    """All of the collector's metrics, registered in one (injected) registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        devices: Sequence[DeviceConfig],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.devices = list(devices)
        self.clock = clock
        self.last_received_us: dict[str, int] = {}
        self.queue_depth: Callable[[], int] = lambda: 0
        self.oldest_unacked_us: Callable[[], int | None] = lambda: None
        self.unacked: Callable[[], int] = lambda: 0
        self.open_alarms: Callable[[], Iterable[Alarm]] = list
        self.forecasts: Callable[[], dict[str, float | None]] = dict
        self.too_late: Callable[[], int] = lambda: 0
        # (delivered by channel, failed attempts by channel, pending, oldest pending us)
        self.notifications: Callable[[], tuple[Mapping[str, int], Mapping[str, int], int, int | None]] = (
            lambda: ({}, {}, 0, None)
        )
        # (dead-lettered since start by channel, dead-lettered rows stored)
        self.notification_dead_letters: Callable[[], tuple[Mapping[str, int], int]] = lambda: ({}, 0)
        self._labels = {d.id: (d.id, d.kind.value, d.site, d.area) for d in self.devices}
        self.registered = frozenset(self._labels)
        # Per-device series are plain data, exposed by a collector at scrape time: with
        # 10,000 devices a client-library child per series cost tens of megabytes.
        self.per_device = _PerDevice()
        self.values = Counter(
            "coldwatch_values", "Metric values committed to storage", ["kind"], registry=registry
        )
        self.rejected = Counter(
            "coldwatch_messages_rejected",
            "Messages rejected and quarantined, by reason",
            ["reason"],
            registry=registry,
        )
        self.read_pauses = Counter(
            "coldwatch_ingest_read_pauses",
            "Times reading from the broker stopped because the ingest queue was full (back-pressure)",
            registry=registry,
        )
        self.duplicates = Counter(
            "coldwatch_duplicate_readings",
            "Redelivered readings recognised as already stored and skipped",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "coldwatch_broker_connected", "1 while connected to the MQTT broker", registry=registry
        )
        self.broker_connects = Counter(
            "coldwatch_broker_connects", "Successful connections to the MQTT broker", registry=registry
        )
        self.broker_session_lost = Counter(
            "coldwatch_broker_session_lost",
            "Reconnects the broker answered without the collector's persistent session (its queue lost)",
            registry=registry,
        )
        self.resend_requests = Counter(
            "coldwatch_resend_requests",
            "Requests published asking a device to re-send readings it sent but the collector lacks",
            registry=registry,
        )
        self.gaps_resolved = Counter(
            "coldwatch_seq_gaps_resolved",
            "Seq gaps that reached their final state: recovered (all re-sent) or lost",
            ["state"],
            registry=registry,
        )
        self.gaps_open = Gauge(
            "coldwatch_seq_gaps_open", "Seq gaps neither recovered nor lost yet", registry=registry
        )
        self.audit_anchor_failures = Counter(
            "coldwatch_audit_anchor_failures",
            "Times the audit trail's chain head could not be written to the anchor file",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "coldwatch_storage_batch_write_seconds",
            "Time to commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        # Freshness, end to end: device clocks are assumed to be synchronised (NTP).
        delay_buckets = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.ingest_delay = Histogram(
            "coldwatch_ingest_delay_seconds",
            "From a live reading's device timestamp to its commit",
            buckets=delay_buckets,
            registry=registry,
        )
        self.alarm_delay = Histogram(
            "coldwatch_alarm_delay_seconds",
            "From the device timestamp of the live reading that raised or escalated an alarm to its commit",
            buckets=delay_buckets,
            registry=registry,
        )
        self.batch_size = Histogram(
            "coldwatch_storage_batch_messages",
            "Messages per committed batch",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.storage_errors = Counter(
            "coldwatch_storage_errors",
            "Failed batch writes, and failed reads of a late reading's history (both retried)",
            registry=registry,
        )
        self.late_readbacks = Counter(
            "coldwatch_rules_history_reads",
            "Late readings whose device's readings since a checkpoint were read back from the database",
            registry=registry,
        )
        self.rule_errors = Counter(
            "coldwatch_rule_errors",
            "Readings a rule failed on (logged; the reading is stored)",
            registry=registry,
        )
        self.alarm_transitions = Counter(
            "coldwatch_alarm_transitions",
            "Alarm lifecycle transitions (raised, severity_changed, cleared, revoked, ...) by rule",
            ["rule", "event"],
            registry=registry,
        )
        registry.register(_ScrapeTimeCollector(self))
        per_device = _PerDeviceCollector(self)
        registry.register(per_device)
        _PER_DEVICE[registry] = per_device
        for reason in Reason:
            self.rejected.labels(reason.value)
        for kind in KINDS:
            self.values.labels(kind.value)

    def set_limits(self, limits: Callable[[], Iterable[tuple[str, str, str, str, str, float]]]) -> None:
        """Publish every configured limit: (device, metric, rule, severity, direction, value), at scrape."""
        self.per_device.limits = limits

    def labels_of(self, device_id: str) -> tuple[str, str, str, str]:
        """The label values of a registered device id."""
        return self._labels[device_id]
