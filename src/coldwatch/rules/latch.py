"""Turns a rule's signal into alarm events: on-delays, severity changes, clearing. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from coldwatch.rules.model import AlarmEvent, AlarmKey, EventKind, Severity, Signal

__all__ = ["Latch"]


@dataclass(slots=True)
class Latch:
    """The alarm state of one :class:`AlarmKey`.

    A severity's condition must hold at every reading from the start of its run until a
    reading taken at or after ``start + delay``; the alarm is then raised, stamped
    ``start + delay``. A reading that no longer meets the condition ends the run (before
    the delay: nothing is raised; after it: the alarm clears or lowers its severity).
    Hysteresis (the off-margin) is the rule's business: it decides the signal's level.
    Every rule has a delay entry (possibly 0) for each severity it has a level for.
    """

    key: AlarmKey
    delays_us: dict[Severity, int]
    run_start: dict[Severity, int] = field(default_factory=dict)
    active: Severity | None = None

    def seed(self, severity: Severity, since_us: int) -> None:
        """Restore an alarm known to be open (after a restart)."""
        self.active = severity
        for level in self.delays_us:
            if level <= severity:
                self.run_start.setdefault(level, since_us - self.delays_us[level])

    def feed(self, ts_us: int, signal: Signal, *, late: bool = False) -> list[AlarmEvent]:
        """Account for the signal at ``ts_us``; return the events it causes, in time order."""
        level = signal.level
        if level is None and self.active is None:
            # Nothing raised, nothing met (most readings): every pending run ends, no event.
            self.run_start.clear()
            return []
        keeps = signal.keeps()
        for severity in self.delays_us:  # only the severities this rule has levels for
            raised = self.active is not None and severity <= self.active
            # A pending run needs the strict condition; a raised one is kept within margin.
            holds = keeps if raised else level
            if holds is not None and holds >= severity:
                self.run_start.setdefault(severity, ts_us)
            else:
                self.run_start.pop(severity, None)
        events: list[AlarmEvent] = []
        # Severities whose delay has elapsed, each with the instant it did. A level below
        # the raised severity counts as reached: its alarm exists already, so falling back
        # to it from a higher level is a severity change, never a clear.
        reached = sorted(
            (start + self.delays_us[sev], sev)
            for sev, start in self.run_start.items()
            if ts_us - start >= self.delays_us[sev] or (self.active is not None and sev <= self.active)
        )
        target = max((sev for _, sev in reached), default=None)
        if self.active is None:
            for index, (at_us, sev) in enumerate(reached):
                if index + 1 < len(reached) and reached[index + 1][0] == at_us:
                    continue  # a higher level reached at the same instant: raise at that one
                # Escalate through severities in the order their delays elapsed.
                if self.active is None or sev > self.active:
                    kind = EventKind.RAISED if self.active is None else EventKind.SEVERITY_CHANGED
                    events.append(self._event(kind, at_us, sev, signal, late))
                    self.active = sev
            return events
        if target is None:
            events.append(self._event(EventKind.CLEARED, ts_us, None, signal, late))
            self.active = None
        elif target != self.active:
            # Escalation is stamped when the higher delay elapsed; de-escalation now.
            at_us = next(at for at, sev in reached if sev == target) if target > self.active else ts_us
            events.append(self._event(EventKind.SEVERITY_CHANGED, at_us, target, signal, late))
            self.active = target
        return events

    def _event(
        self, kind: EventKind, ts_us: int, severity: Severity | None, signal: Signal, late: bool
    ) -> AlarmEvent:
        return AlarmEvent(kind, self.key, ts_us, severity, signal.value, signal.limit, late)
