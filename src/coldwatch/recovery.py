"""Recovery of readings lost upstream of the collector. Pure: no I/O, no clock, no asyncio.

Devices number their readings (``seq``) and keep them in a buffer. When the collector
finds a gap in a device's sequence, or the broker has lost the collector's session (and
with it whatever it had queued), it asks the device to send the missing range again on
``{prefix}/{site}/{area}/{kind}/{device}/resend``::

    {"from_seq": 1200, "to_seq": 1234, "request_id": "inc-01:1200-1234:1"}

(``to_seq`` null: everything after ``from_seq - 1`` the device still holds). The device
re-publishes those readings with ``buffered: true`` and their original ``ts`` and ``seq``.

:class:`GapBook` keeps every open gap with the ``seq`` numbers still missing, decides which
requests are due (a bounded number of attempts per gap, at most ``max_per_s`` requests a
second over all devices, so that a flapping device cannot flood the broker), and reports
each gap once as ``recovered`` (every missing reading stored) or ``lost`` (not filled
within ``timeout_s``, or the device restarted its numbering).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import AlarmEvent, AlarmKey, EventKind, Severity
from coldwatch.storage.base import SeqGap

__all__ = [
    "INTEGRITY_METRIC",
    "INTEGRITY_RULE",
    "GapBook",
    "GapChange",
    "ResendRequest",
    "integrity_clear",
    "integrity_key",
    "integrity_raise",
    "resend_topic",
]

US = 1_000_000
INF = float("inf")
INTEGRITY_RULE = "data_integrity"
INTEGRITY_METRIC = "seq"
GapState = Literal["recovered", "lost"]


def resend_topic(prefix: str, site: str, area: str, kind: str, device_id: str) -> str:
    """The topic on which the collector asks a device to send readings again."""
    return f"{prefix}/{site}/{area}/{kind}/{device_id}/resend"


@dataclass(frozen=True, slots=True)
class ResendRequest:
    """Ask ``device_id`` for its readings ``from_seq`` .. ``to_seq`` (None: all it holds after)."""

    device_id: str
    from_seq: int
    to_seq: int | None
    request_id: str

    def payload(self) -> bytes:
        """The request as published (JSON)."""
        body = {"from_seq": self.from_seq, "to_seq": self.to_seq, "request_id": self.request_id}
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class GapChange:
    """A gap reached its final state."""

    gap: SeqGap
    state: GapState
    at_us: int
    why: str


@dataclass(slots=True)
class _Open:
    """An open gap: the ``seq`` ranges still missing (ascending, disjoint) and its requests."""

    gap: SeqGap
    missing: list[list[int]]
    attempts: int = 0
    next_due_us: int = 0

    def request(self, device_id: str) -> ResendRequest:
        """Ask for everything still missing (one range: from the first to the last)."""
        lo, hi = self.missing[0][0], self.missing[-1][1]
        return ResendRequest(device_id, lo, hi, f"{device_id}:{lo}-{hi}:{self.attempts}")

    def fill(self, seq: int) -> bool:
        """Strike ``seq`` off; True when it was missing."""
        for i, (lo, hi) in enumerate(self.missing):
            if seq < lo:
                return False
            if seq > hi:
                continue
            if lo == hi:
                del self.missing[i]
            elif seq == lo:
                self.missing[i][0] = seq + 1
            elif seq == hi:
                self.missing[i][1] = seq - 1
            else:
                self.missing[i : i + 1] = [[lo, seq - 1], [seq + 1, hi]]
            return True
        return False


@dataclass(slots=True)
class _Probe:
    """After a lost session: the device is asked for everything after ``after_seq``."""

    after_seq: int
    attempts: int = 0
    next_due_us: int = 0

    def request(self, device_id: str) -> ResendRequest:
        """Ask for everything after ``after_seq``."""
        first = self.after_seq + 1
        return ResendRequest(device_id, first, None, f"{device_id}:{first}-:{self.attempts}")


@dataclass(slots=True)
class GapBook:
    """Open gaps and post-session-loss probes of every device; what to ask for, and when."""

    timeout_s: float
    retry_s: float
    max_attempts: int
    max_per_s: float
    max_open: int = 100  # open gaps per device
    gaps: dict[str, list[_Open]] = field(default_factory=dict)
    probes: dict[str, _Probe] = field(default_factory=dict)
    _tokens: float = 0.0
    _refilled_us: int | None = None
    # Nothing is due, or expires, before these: most calls (one per batch) cost nothing.
    _due_us: float = INF
    _expires_us: float = INF
    _resume: str | None = None  # the device whose turn it is when the rate bound cut a round

    def load(self, gap: SeqGap, stored: set[int], at_us: int) -> list[GapChange]:
        """Restore an open gap after a restart, less the ``seq`` numbers stored since.

        Returns the gap as recovered if nothing is missing any more (the readings were
        stored, for example by another cluster member, before its state was), and any gap
        given up to keep within ``max_open``.
        """
        entry = _Open(gap, [[gap.first_missing, gap.last_missing]])
        for seq in sorted(stored):
            entry.fill(seq)
        if not entry.missing:
            return [GapChange(gap, "recovered", at_us, "every missing reading was stored")]
        return self._add(entry, at_us)

    def open(self, gap: SeqGap) -> list[GapChange]:
        """A new gap: asked for at the next :meth:`due`. Returns any gap given up for it."""
        return self._add(_Open(gap, [[gap.first_missing, gap.last_missing]], next_due_us=gap.detected_us))

    def _add(self, entry: _Open, at_us: int | None = None) -> list[GapChange]:
        device_id = entry.gap.device_id
        entries = self.gaps.setdefault(device_id, [])
        entries.append(entry)
        self._due_us = min(self._due_us, entry.next_due_us)
        self._expires_us = min(self._expires_us, entry.gap.detected_us + round(self.timeout_s * US))
        if len(entries) <= self.max_open:
            return []
        # A device that keeps skipping numbers (broken or hostile) must not grow memory, the
        # work per reading or its share of requests without bound: its oldest gap goes.
        oldest = entries.pop(0)
        why = f"more than {self.max_open} gaps open on the device: the oldest is given up"
        return [GapChange(oldest.gap, "lost", entry.gap.detected_us if at_us is None else at_us, why)]

    def session_lost(self, last_seqs: dict[str, int], at_us: int) -> None:
        """The broker lost our session: ask each device for everything after its last ``seq``."""
        for device_id, last_seq in last_seqs.items():
            self.probes[device_id] = _Probe(last_seq, next_due_us=at_us)
        if last_seqs:
            self._due_us = min(self._due_us, at_us)

    def pending(self, device_id: str) -> bool:
        """Whether readings of ``device_id`` are (or may be) still missing."""
        return device_id in self.probes or bool(self.gaps.get(device_id))

    def open_count(self) -> int:
        """Gaps not yet recovered or lost."""
        return sum(len(g) for g in self.gaps.values())

    def stored(self, device_id: str, seq: int, at_us: int) -> list[GapChange]:
        """A reading of ``device_id`` was stored; return the gaps it completed."""
        probe = self.probes.get(device_id)
        if probe is not None and seq > probe.after_seq:
            # The device is heard from again: anything still missing now shows as a gap.
            del self.probes[device_id]
        entries = self.gaps.get(device_id)
        if not entries:
            return []
        why = "every missing reading was re-sent"
        done = [GapChange(e.gap, "recovered", at_us, why) for e in entries if e.fill(seq) and not e.missing]
        if done:
            self._drop(device_id, {id(c.gap) for c in done})
        return done

    def restarted(self, device_id: str, at_us: int) -> list[GapChange]:
        """The device restarted its numbering: its open gaps can no longer be asked for."""
        self.probes.pop(device_id, None)
        entries = self.gaps.pop(device_id, [])
        why = "the device restarted its seq numbering before re-sending"
        return [GapChange(e.gap, "lost", at_us, why) for e in entries]

    def expire(self, now_us: int) -> list[GapChange]:
        """Gaps not filled within ``timeout_s`` of their detection: lost."""
        if now_us < self._expires_us:
            return []
        timeout_us = round(self.timeout_s * US)
        lost: list[GapChange] = []
        self._expires_us = INF
        for device_id, entries in list(self.gaps.items()):
            expired = [e for e in entries if now_us >= e.gap.detected_us + timeout_us]
            for entry in entries:
                if now_us < entry.gap.detected_us + timeout_us:
                    self._expires_us = min(self._expires_us, entry.gap.detected_us + timeout_us)
            if not expired:
                continue
            for entry in expired:
                still = sum(hi - lo + 1 for lo, hi in entry.missing)
                why = f"{still} reading(s) not re-sent within {self.timeout_s:g} s"
                lost.append(GapChange(entry.gap, "lost", now_us, why))
            self._drop(device_id, {id(e.gap) for e in expired})
        return lost

    def due(self, now_us: int) -> list[ResendRequest]:
        """The requests to publish now, within the attempt and rate bounds.

        Devices take turns, one request each per round, so that a device with many gaps
        cannot hold back another's; a round cut short by the rate bound resumes where it
        stopped. While rate-limited a call costs little: it stops at the last token.
        """
        if now_us < self._due_us:
            return []
        self._refill(now_us)
        out: list[ResendRequest] = []
        order = [*self.gaps, *(d for d in self.probes if d not in self.gaps)]
        start = order.index(self._resume) if self._resume in self.gaps or self._resume in self.probes else 0
        more: deque[tuple[str, deque[_Open | _Probe]]] = deque()  # devices with more due this call
        for i in range(len(order)):
            device_id = order[(start + i) % len(order)]
            if not self._has_token(device_id, now_us):
                return out
            waiting = deque(e for e in self._entries(device_id) if self._is_due(e, now_us))
            if waiting:
                self._ask(device_id, waiting.popleft(), now_us, out)
                if waiting:
                    more.append((device_id, waiting))
        while more:
            device_id, waiting = more[0]
            if not self._has_token(device_id, now_us):
                return out
            more.popleft()
            self._ask(device_id, waiting.popleft(), now_us, out)
            if waiting:
                more.append((device_id, waiting))
        # Everything due went out: the next call that can ask anything (exhausted gaps never).
        self._resume = None
        self._due_us = min(
            (e.next_due_us for d in order for e in self._entries(d) if e.attempts < self.max_attempts),
            default=INF,
        )
        return out

    def _entries(self, device_id: str) -> list[_Open | _Probe]:
        probe = self.probes.get(device_id)
        gaps: list[_Open | _Probe] = [*self.gaps.get(device_id, ())]
        return gaps if probe is None else [probe, *gaps]

    def _is_due(self, entry: _Open | _Probe, now_us: int) -> bool:
        return entry.attempts < self.max_attempts and entry.next_due_us <= now_us

    def _has_token(self, device_id: str, now_us: int) -> bool:
        """Whether a request may go out now; if not, ``device_id`` is first in the next round."""
        if self._tokens >= 1:
            return True
        self._resume = device_id
        self._due_us = now_us + math.ceil((1 - self._tokens) / self.max_per_s * US)
        return False

    def _ask(self, device_id: str, entry: _Open | _Probe, now_us: int, out: list[ResendRequest]) -> None:
        entry.attempts += 1
        entry.next_due_us = now_us + round(self.retry_s * US)
        self._tokens -= 1
        out.append(entry.request(device_id))

    def unsent(self, request: ResendRequest, now_us: int) -> None:
        """A request from :meth:`due` could not be published: it takes no attempt, and is due again."""
        for entry in self._entries(request.device_id):
            if entry.request(request.device_id).request_id == request.request_id:
                entry.attempts -= 1
                entry.next_due_us = now_us
                self._tokens += 1
                self._due_us = min(self._due_us, now_us)
                return

    def _refill(self, now_us: int) -> None:
        burst = max(1.0, self.max_per_s)
        if self._refilled_us is None:
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + (now_us - self._refilled_us) / US * self.max_per_s)
        self._refilled_us = now_us

    def _drop(self, device_id: str, gap_ids: set[int]) -> None:
        kept = [e for e in self.gaps[device_id] if id(e.gap) not in gap_ids]
        if kept:
            self.gaps[device_id] = kept
        else:
            del self.gaps[device_id]


def integrity_key(device_id: str) -> AlarmKey:
    """The one data-integrity alarm slot of a device."""
    return AlarmKey(device_id, INTEGRITY_METRIC, INTEGRITY_RULE)


def integrity_raise(
    current: Alarm | None,
    device_id: str,
    severity: Severity,
    at_us: int,
    detail: str,
    *,
    value: float | None = None,
) -> list[AlarmEvent]:
    """Raise the device's data-integrity alarm, or raise its severity if it is active already.

    A cleared alarm nobody has acknowledged yet is not superseded by a loss of the same or
    a lower severity (that loss is in ``seq_gaps`` and the audit trail): a device that loses
    readings over and over raises one alarm per acknowledgement, not one per loss.
    """
    key = integrity_key(device_id)
    if current is not None and current.active:
        if severity > current.severity:
            return [AlarmEvent(EventKind.SEVERITY_CHANGED, key, at_us, severity, value, detail=detail)]
        return []
    if current is not None and severity <= current.severity:
        return []
    return [AlarmEvent(EventKind.RAISED, key, at_us, severity, value, detail=detail)]


def integrity_clear(current: Alarm | None, device_id: str, at_us: int) -> list[AlarmEvent]:
    """Clear the device's data-integrity alarm: nothing is missing or being asked for any more."""
    if current is None or not current.active:
        return []
    return [AlarmEvent(EventKind.CLEARED, integrity_key(device_id), at_us, None)]
