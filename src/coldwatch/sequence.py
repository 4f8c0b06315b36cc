"""Per-device sequence tracking: finds readings lost upstream of the collector. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coldwatch.storage.base import DeviceState, SeqGap

__all__ = ["SeqEvent", "SeqTracker"]


class SeqEvent(enum.Enum):
    """How a reading's ``seq`` relates to what the device sent before."""

    FIRST = "first"  # first reading ever seen from the device
    NEXT = "next"  # exactly one more than the highest seen
    GAP = "gap"  # higher than expected: readings in between never arrived
    BEHIND = "behind"  # at or below the highest seen: a redelivery or a late reading
    RESTART = "restart"  # lower seq with a newer timestamp: the device restarted its counter


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reading told the tracker."""

    event: SeqEvent
    gap: SeqGap | None = None


class SeqTracker:
    """Remembers each device's highest ``seq`` and reports gaps as they appear."""

    def __init__(self, states: dict[str, DeviceState]) -> None:
        self._states = states

    def state(self, device_id: str) -> DeviceState:
        """The current state of ``device_id`` (created empty on first use)."""
        state = self._states.get(device_id)
        if state is None:
            state = self._states[device_id] = DeviceState()
        return state

    def observe(self, device_id: str, seq: int, ts_us: int, received_us: int) -> Observation:
        """Account for one reading and return what it means for the device's sequence."""
        state = self.state(device_id)
        last_seq, last_ts = state.last_seq, state.last_ts_us
        state.last_received_us = received_us
        if last_seq is None or last_ts is None:
            event, gap = SeqEvent.FIRST, None
        elif seq == last_seq + 1:
            event, gap = SeqEvent.NEXT, None
        elif seq > last_seq + 1:
            event = SeqEvent.GAP
            gap = SeqGap(device_id, last_seq + 1, seq - 1, received_us)
        elif ts_us > last_ts:
            event, gap = SeqEvent.RESTART, None
        else:
            return Observation(SeqEvent.BEHIND)
        state.last_seq = seq
        state.last_ts_us = ts_us
        return Observation(event, gap)
