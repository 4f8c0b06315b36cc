"""Gap recovery inside the writer: what a batch records when readings go missing upstream.

The writer calls :class:`Recovery` while it judges a batch: for each reading (gaps found,
filled or lost), when the broker has lost the collector's session, and once per batch to
give up on old gaps and publish the re-send requests now due (:mod:`coldwatch.recovery`
decides which). Everything it records (gap states, audit entries, data-integrity alarms)
goes into the batch and is committed with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coldwatch.audit import AuditDraft
from coldwatch.config import Config, DeviceConfig
from coldwatch.metrics import Metrics
from coldwatch.recovery import (
    INTEGRITY_RULE,
    GapBook,
    GapChange,
    integrity_clear,
    integrity_key,
    integrity_raise,
    resend_topic,
)
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.model import AlarmEvent, Severity
from coldwatch.sequence import Observation, SeqEvent
from coldwatch.storage.base import Batch, DeviceState, SeqGap

__all__ = ["Recovery", "SessionLost", "gap_audit"]


@dataclass(frozen=True, slots=True)
class SessionLost:
    """The broker answered a reconnect without the collector's session: its queue is gone."""

    at_us: int
    client_id: str


def gap_audit(gap: SeqGap, state: str, at_us: int, why: str) -> AuditDraft:
    """The audit trail entry of a gap's state change (detected, recovered, lost)."""
    return AuditDraft(
        at_us=at_us,
        actor="coldwatch",
        action=f"seq_gap.{state}",
        object_type="seq_gap",
        object_id=f"{gap.device_id}:{gap.first_missing}-{gap.last_missing}",
        old_value=None if state == "detected" else "open",
        new_value="open" if state == "detected" else state,
        reason=why,
    )


class Recovery:
    """Open gaps, re-send requests and data-integrity alarms, as the writer judges batches."""

    def __init__(
        self,
        config: Config,
        book: AlarmBook,
        metrics: Metrics,
        states: Mapping[str, DeviceState],
        *,
        alarms: Callable[[Batch, list[AlarmEvent], int], None],
        resend: Callable[[str, bytes], bool] | None,
    ) -> None:
        ingest = config.ingest
        self.gaps = GapBook(
            ingest.gap_recovery_timeout_s,
            ingest.resend_retry_s,
            ingest.resend_max_attempts,
            ingest.resend_max_per_s,
            ingest.max_open_gaps_per_device,
        )
        self._loaded: list[GapChange] = []  # gaps the restart found complete, recorded at the first step
        self._prefix = config.mqtt.topic_prefix
        self._devices: dict[str, DeviceConfig] = config.device_map()
        self._book = book
        self._metrics = metrics
        self._states = states
        self._alarms = alarms  # applies engine-style alarm events to the book, into the batch
        # Publishes a re-send request (topic, payload); False when it cannot now (not connected).
        self._resend = resend
        # Devices whose data-integrity alarm is active: it clears once nothing is missing.
        self._watch = {k.device_id for k, a in book.open.items() if k.rule == INTEGRITY_RULE and a.active}
        metrics.gaps_open.set_function(self.gaps.open_count)

    def load(self, gaps: list[tuple[SeqGap, set[int]]], at_us: int) -> None:
        """Take up the gaps left open by the previous run (with the seqs stored since)."""
        for gap, stored in gaps:
            self._loaded += self.gaps.load(gap, stored, at_us)

    def reading(self, batch: Batch, device_id: str, seq: int, observation: Observation, at_us: int) -> None:
        """Account for one reading about to be stored."""
        gaps = self.gaps
        if observation.gap is not None:
            batch.audit.append(gap_audit(observation.gap, "detected", at_us, "re-send requested"))
            self._changes(batch, gaps.open(observation.gap))
        if observation.event is SeqEvent.RESTART:
            self._changes(batch, gaps.restarted(device_id, at_us))
        if gaps.gaps or gaps.probes:
            self._changes(batch, gaps.stored(device_id, seq, at_us))
        if device_id in self._watch:
            self._settle(batch, device_id, at_us)

    def session_lost(self, batch: Batch, lost: SessionLost) -> None:
        """Ask every device heard from for what came after its last reading; raise the alarm."""
        last = {
            device_id: state.last_seq
            for device_id, state in self._states.items()
            if state.last_seq is not None and device_id in self._devices
        }
        self.gaps.session_lost(last, lost.at_us)
        batch.audit.append(
            AuditDraft(
                at_us=lost.at_us,
                actor="coldwatch",
                action="broker.session_lost",
                object_type="mqtt_session",
                object_id=lost.client_id,
                old_value="session present",
                new_value=f"new session; {len(last)} device(s) asked to re-send",
                reason="the broker answered the reconnect without our persistent session: "
                "messages it had queued for the collector are lost",
            )
        )
        for device_id, seq in last.items():
            detail = f"broker lost the collector's session: readings after seq {seq} may be missing"
            self._integrity(batch, device_id, Severity.ALERT, lost.at_us, detail=detail)

    def step(self, batch: Batch, now_us: int) -> None:
        """Give up on gaps past their recovery time; publish the re-send requests now due."""
        gaps = self.gaps
        if self._loaded:
            self._changes(batch, self._loaded)
            self._loaded = []
        if not (gaps.gaps or gaps.probes):
            return
        self._changes(batch, gaps.expire(now_us))
        if self._resend is None:
            return
        connected = True
        for request in gaps.due(now_us):
            device = self._devices[request.device_id]
            topic = resend_topic(self._prefix, device.site, device.area, device.kind.value, device.id)
            # Not connected (a broker outage, or a new session not yet subscribed): the request
            # uses no attempt and goes out at the first step once it can.
            connected = connected and self._resend(topic, request.payload())
            if connected:
                self._metrics.resend_requests.inc()
            else:
                gaps.unsent(request, now_us)

    def _integrity(
        self,
        batch: Batch,
        device_id: str,
        severity: Severity,
        at_us: int,
        *,
        detail: str,
        value: float | None = None,
    ) -> None:
        """Raise (or make more severe) the device's data-integrity alarm."""
        current = self._book.open.get(integrity_key(device_id))
        self._alarms(batch, integrity_raise(current, device_id, severity, at_us, detail, value=value), at_us)
        self._watch.add(device_id)

    def _settle(self, batch: Batch, device_id: str, at_us: int) -> None:
        """Clear the device's data-integrity alarm once nothing is missing or asked for."""
        if not self.gaps.pending(device_id):
            self._watch.discard(device_id)
            current = self._book.open.get(integrity_key(device_id))
            self._alarms(batch, integrity_clear(current, device_id, at_us), at_us)

    def _changes(self, batch: Batch, changes: list[GapChange]) -> None:
        """Record gaps that were recovered or lost; a lost one raises a data-integrity alarm."""
        for change in changes:
            gap = change.gap
            batch.gap_updates.append((gap, change.state, change.at_us))
            batch.audit.append(gap_audit(gap, change.state, change.at_us, change.why))
            if change.state == "lost":
                detail = f"seq {gap.first_missing}..{gap.last_missing} lost: {change.why}"
                self._integrity(
                    batch, gap.device_id, Severity.ACTION, change.at_us, detail=detail, value=gap.count
                )
            if gap.device_id in self._watch:
                self._settle(batch, gap.device_id, change.at_us)
