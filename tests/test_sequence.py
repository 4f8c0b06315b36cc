"""Sequence tracking: first, next, gap, behind (redelivery or late) and counter restart."""

from __future__ import annotations

from coldwatch.sequence import SeqEvent, SeqTracker
from coldwatch.storage.base import DeviceState, SeqGap

US = 1_000_000
T0 = 1_714_564_800 * US


def _tracker_at(seq: int, ts_us: int) -> SeqTracker:
    """A tracker that has already seen ``seq`` at ``ts_us`` from inc-01."""
    tracker = SeqTracker({})
    tracker.observe("inc-01", seq, ts_us, ts_us)
    return tracker


def test_first_reading() -> None:
    """The first reading of a device is FIRST and becomes its remembered state."""
    tracker = SeqTracker({})

    observation = tracker.observe("inc-01", 41, T0, T0 + 5)

    assert observation.event is SeqEvent.FIRST
    assert observation.gap is None
    assert tracker.state("inc-01") == DeviceState(last_seq=41, last_ts_us=T0, last_received_us=T0 + 5)


def test_next_reading() -> None:
    """A seq one above the highest seen is NEXT and advances the state."""
    tracker = _tracker_at(1, T0)

    observation = tracker.observe("inc-01", 2, T0 + 10 * US, T0 + 11 * US)

    assert observation.event is SeqEvent.NEXT
    assert observation.gap is None
    assert tracker.state("inc-01").last_seq == 2
    assert tracker.state("inc-01").last_ts_us == T0 + 10 * US


def test_gap_reports_exact_missing_range() -> None:
    """A jump from 2 to 6 is a GAP missing exactly 3, 4 and 5, detected at receive time."""
    tracker = _tracker_at(2, T0)

    observation = tracker.observe("inc-01", 6, T0 + 40 * US, T0 + 41 * US)

    assert observation.event is SeqEvent.GAP
    assert observation.gap == SeqGap("inc-01", first_missing=3, last_missing=5, detected_us=T0 + 41 * US)
    assert observation.gap.count == 3
    assert tracker.state("inc-01").last_seq == 6


def test_gap_of_one() -> None:
    """Skipping a single seq is a gap whose first and last missing are the same number."""
    tracker = _tracker_at(10, T0)

    observation = tracker.observe("inc-01", 12, T0 + 20 * US, T0 + 20 * US)

    assert observation.gap is not None
    assert (observation.gap.first_missing, observation.gap.last_missing, observation.gap.count) == (11, 11, 1)


def test_redelivery_is_behind_and_keeps_state() -> None:
    """The same seq and ts again is BEHIND; the highest seq and ts are unchanged."""
    tracker = _tracker_at(5, T0)

    observation = tracker.observe("inc-01", 5, T0, T0 + 99 * US)

    assert observation.event is SeqEvent.BEHIND
    assert observation.gap is None
    state = tracker.state("inc-01")
    assert (state.last_seq, state.last_ts_us) == (5, T0)
    # The device was still heard from, which communication-loss detection relies on.
    assert state.last_received_us == T0 + 99 * US


def test_late_reading_is_behind() -> None:
    """A lower seq with an older timestamp (a late gap filler) is BEHIND, not a restart."""
    tracker = _tracker_at(6, T0)

    observation = tracker.observe("inc-01", 4, T0 - 20 * US, T0 + US)

    assert observation.event is SeqEvent.BEHIND
    assert tracker.state("inc-01").last_seq == 6


def test_restart_lower_seq_newer_ts() -> None:
    """A lower seq with a newer timestamp is RESTART: the device reset its counter."""
    tracker = _tracker_at(500, T0)

    observation = tracker.observe("inc-01", 0, T0 + 60 * US, T0 + 61 * US)

    assert observation.event is SeqEvent.RESTART
    assert observation.gap is None
    assert tracker.state("inc-01").last_seq == 0
    assert tracker.state("inc-01").last_ts_us == T0 + 60 * US
    # Counting resumes from the new counter.
    assert tracker.observe("inc-01", 1, T0 + 70 * US, T0 + 70 * US).event is SeqEvent.NEXT


def test_devices_are_tracked_independently() -> None:
    """Each device has its own sequence: one device's seq says nothing about another's."""
    tracker = _tracker_at(5, T0)

    assert tracker.observe("pc-1", 100, T0, T0).event is SeqEvent.FIRST
    assert tracker.observe("inc-01", 6, T0 + US, T0 + US).event is SeqEvent.NEXT


def test_remembered_state_is_continued_and_updated_in_place() -> None:
    """A tracker built from stored states continues from them and updates the same objects."""
    stored = DeviceState(last_seq=9, last_ts_us=T0, last_received_us=T0, online=True)
    states = {"inc-01": stored}
    tracker = SeqTracker(states)

    observation = tracker.observe("inc-01", 12, T0 + US, T0 + 2 * US)

    assert observation.event is SeqEvent.GAP
    assert observation.gap == SeqGap("inc-01", 10, 11, T0 + 2 * US)
    assert states["inc-01"] is stored
    assert (stored.last_seq, stored.last_ts_us, stored.last_received_us, stored.online) == (
        12,
        T0 + US,
        T0 + 2 * US,
        True,
    )
