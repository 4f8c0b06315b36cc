"""The alarm lifecycle (ISA-18.2 style): engine events and user actions drive each alarm's state."""

from __future__ import annotations

import pytest

from coldwatch.errors import ColdwatchError
from coldwatch.rules.lifecycle import Alarm, AlarmBook, AlarmState, LifecycleError, Transition
from coldwatch.rules.model import AlarmEvent, AlarmKey, EventKind, Severity

KEY = AlarmKey("inc-1", "temp_c", "low")
OTHER = AlarmKey("inc-1", "co2_pct", "high")
ALERT, ACTION = Severity.ALERT, Severity.ACTION
UNACK, ACK = AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK
CLEARED_UNACK, CLOSED = AlarmState.CLEARED_UNACK, AlarmState.CLOSED


def s(seconds: float) -> int:
    """Seconds to integer microseconds."""
    return round(seconds * 1_000_000)


def raised(t_s: float, severity: Severity = ALERT, key: AlarmKey = KEY, *, late: bool = False) -> AlarmEvent:
    return AlarmEvent(EventKind.RAISED, key, s(t_s), severity, value=35.9, limit=36.5, late=late)


def changed(t_s: float, severity: Severity, key: AlarmKey = KEY) -> AlarmEvent:
    return AlarmEvent(EventKind.SEVERITY_CHANGED, key, s(t_s), severity, value=35.5, limit=36.0)


def cleared(t_s: float, key: AlarmKey = KEY, *, late: bool = False) -> AlarmEvent:
    return AlarmEvent(EventKind.CLEARED, key, s(t_s), None, value=37.0, limit=36.5, late=late)


def revoked(event: AlarmEvent) -> AlarmEvent:
    """The REVOKED event the engine emits when late data withdraws ``event``."""
    return AlarmEvent(
        EventKind.REVOKED,
        event.key,
        event.ts_us,
        event.severity,
        late=True,
        detail="late data",
        revokes=event,
    )


def book_with_raised(t_s: float = 100, severity: Severity = ALERT) -> tuple[AlarmBook, Alarm]:
    book = AlarmBook()
    book.apply([raised(t_s, severity)], s(t_s + 1))
    return book, book.open[KEY]


def only(transitions: list[Transition]) -> Transition:
    assert len(transitions) == 1
    return transitions[0]


# --- engine events -----------------------------------------------------------------------


def test_raise_opens_an_active_unacknowledged_alarm() -> None:
    """A RAISED event opens alarm 1, active and unacknowledged, stamped with device and processing times."""
    book = AlarmBook()
    step = only(book.apply([raised(100)], s(101)))
    alarm = step.alarm
    assert (alarm.id, alarm.key, alarm.severity, alarm.state) == (1, KEY, ALERT, UNACK)
    assert (alarm.raised_ts_us, alarm.raised_received_us, alarm.value, alarm.limit) == (
        s(100),
        s(101),
        35.9,
        36.5,
    )
    assert (step.event, step.ts_us, step.received_us, step.from_state, step.actor) == (
        "raised",
        s(100),
        s(101),
        None,
        "coldwatch",
    )
    assert alarm.open
    assert alarm.active
    assert book.open == {KEY: alarm}
    assert book.next_id == 2


def test_late_raise_is_marked_late_on_the_alarm() -> None:
    """An alarm raised from backfilled data carries the late flag."""
    book = AlarmBook()
    assert only(book.apply([raised(100, late=True)], s(500))).alarm.late


def test_second_raise_of_an_active_key_is_ignored() -> None:
    """One open alarm per key: a RAISED for a key whose alarm is active changes nothing."""
    book, alarm = book_with_raised()
    assert book.apply([raised(200, ACTION)], s(201)) == []
    assert book.open[KEY] == alarm
    assert book.next_id == 2


def test_alarms_of_different_keys_are_independent_with_increasing_ids() -> None:
    """Each key has its own alarm; ids are assigned in the order alarms are raised."""
    book = AlarmBook()
    steps = book.apply([raised(100), raised(110, ACTION, OTHER)], s(120))
    assert [(t.alarm.id, t.alarm.key) for t in steps] == [(1, KEY), (2, OTHER)]
    only(book.apply([cleared(130, OTHER)], s(131)))
    assert book.open[KEY].state is UNACK


def test_acknowledge_an_active_alarm_makes_it_active_acknowledged() -> None:
    """Acknowledging an active alarm records the user, the reason and the time of the action."""
    book, alarm = book_with_raised()
    step = book.acknowledge(alarm.id, "alice", "investigating the door seal", s(150))
    assert step.alarm.state is ACK
    assert (step.event, step.ts_us, step.received_us, step.from_state) == (
        "acknowledged",
        s(150),
        s(150),
        UNACK,
    )
    assert (step.actor, step.reason) == ("alice", "investigating the door seal")
    assert book.open[KEY].state is ACK


def test_clearing_an_acknowledged_alarm_closes_it() -> None:
    """An acknowledged alarm that clears is closed and leaves the open set, with its clearing time."""
    book, alarm = book_with_raised()
    book.acknowledge(alarm.id, "alice", "seen", s(150))
    step = only(book.apply([cleared(300)], s(301)))
    assert (step.event, step.from_state, step.alarm.state) == ("cleared", ACK, CLOSED)
    assert step.alarm.cleared_ts_us == s(300)
    assert not step.alarm.open
    assert book.open == {}


def test_clearing_an_unacknowledged_alarm_leaves_it_cleared_unacknowledged_until_ack() -> None:
    """An unacknowledged alarm that clears waits, cleared-unacknowledged, until acknowledgement closes it."""
    book, alarm = book_with_raised()
    step = only(book.apply([cleared(300)], s(301)))
    assert (step.from_state, step.alarm.state, step.alarm.cleared_ts_us) == (UNACK, CLEARED_UNACK, s(300))
    assert step.alarm.open
    assert not step.alarm.active
    ack = book.acknowledge(alarm.id, "bob", "excursion reviewed", s(400))
    assert (ack.from_state, ack.alarm.state) == (CLEARED_UNACK, CLOSED)
    assert book.open == {}


def test_escalation_makes_an_acknowledged_alarm_unacknowledged_again() -> None:
    """A higher severity needs a new acknowledgement: active-acknowledged becomes active-unacknowledged."""
    book, alarm = book_with_raised()
    book.acknowledge(alarm.id, "alice", "seen", s(150))
    step = only(book.apply([changed(200, ACTION)], s(201)))
    assert (step.event, step.ts_us, step.from_state) == ("severity_changed", s(200), ACK)
    assert (step.alarm.severity, step.alarm.state) == (ACTION, UNACK)
    assert (step.alarm.value, step.alarm.limit) == (35.5, 36.0)
    assert step.alarm.id == alarm.id


def test_de_escalation_keeps_the_acknowledgement() -> None:
    """A lower severity does not ask for a new acknowledgement."""
    book, alarm = book_with_raised(severity=ACTION)
    book.acknowledge(alarm.id, "alice", "seen", s(150))
    step = only(book.apply([changed(200, ALERT)], s(201)))
    assert (step.alarm.severity, step.alarm.state) == (ALERT, ACK)


def test_escalation_of_an_unacknowledged_alarm_stays_unacknowledged() -> None:
    """Escalating an alarm nobody acknowledged keeps it unacknowledged and changes its severity."""
    book, _ = book_with_raised()
    step = only(book.apply([changed(200, ACTION)], s(201)))
    assert (step.from_state, step.alarm.state, step.alarm.severity) == (UNACK, UNACK, ACTION)


def test_changes_and_clears_without_an_active_alarm_are_ignored() -> None:
    """Severity changes and clears for a key with no active alarm produce no transition."""
    book = AlarmBook()
    assert book.apply([changed(100, ACTION), cleared(110)], s(111)) == []
    book.apply([raised(200), cleared(300)], s(301))
    assert book.apply([cleared(310), changed(320, ACTION)], s(321)) == []
    assert book.open[KEY].state is CLEARED_UNACK


def test_new_raise_supersedes_a_cleared_unacknowledged_alarm() -> None:
    """A key raising again while its last alarm waits cleared-unacknowledged closes that one as superseded."""
    book, first = book_with_raised()
    book.apply([cleared(300)], s(301))
    old, new = book.apply([raised(400, ACTION)], s(401))
    assert (old.event, old.from_state, old.alarm.state, old.alarm.id) == (
        "superseded",
        CLEARED_UNACK,
        CLOSED,
        first.id,
    )
    assert (old.ts_us, old.received_us) == (s(400), s(401))
    assert (new.event, new.alarm.id, new.alarm.state, new.alarm.severity) == ("raised", 2, UNACK, ACTION)
    assert book.open == {KEY: new.alarm}
    with pytest.raises(LifecycleError, match="no open alarm 1"):
        book.acknowledge(first.id, "alice", "too late", s(500))


def test_revoked_raise_closes_the_alarm_as_revoked() -> None:
    """REVOKED of the event that raised an open alarm closes it, with the revocation's reason."""
    book = AlarmBook()
    raise_event = raised(100)
    book.apply([raise_event], s(101))
    step = only(book.apply([revoked(raise_event)], s(500)))
    assert (step.event, step.ts_us, step.received_us, step.from_state) == ("revoked", s(100), s(500), UNACK)
    assert step.alarm.state is CLOSED
    assert step.alarm.detail.startswith("revoked: late readings showed no excursion long enough")
    assert step.reason == "raised " + step.alarm.detail
    assert book.open == {}


def test_revoked_raise_of_an_acknowledged_or_cleared_unack_alarm_closes_it() -> None:
    """Revocation closes an open alarm whatever its acknowledgement state."""
    for extra in ("ack", "cleared"):
        book = AlarmBook()
        raise_event = raised(100)
        book.apply([raise_event], s(101))
        if extra == "ack":
            book.acknowledge(1, "alice", "seen", s(150))
        else:
            book.apply([cleared(200)], s(201))
        step = only(book.apply([revoked(raise_event)], s(500)))
        assert step.alarm.state is CLOSED
        assert book.open == {}


def test_revocations_that_do_not_match_the_open_alarm_are_ignored() -> None:
    """A REVOKED for another raise time, without the revoked event, or for an unknown key changes nothing."""
    book, alarm = book_with_raised(100)
    other_raise = raised(90)
    no_target = AlarmEvent(EventKind.REVOKED, KEY, s(100), ALERT, late=True, detail="late data")
    assert book.apply([revoked(other_raise), no_target, revoked(raised(100, key=OTHER))], s(500)) == []
    assert book.open == {KEY: alarm}


def test_revoked_raise_then_the_replacement_raise_opens_a_new_alarm() -> None:
    """Late data that moves a raise: the old alarm closes as revoked, a new late one opens at the new time."""
    book = AlarmBook()
    first = raised(120)
    book.apply([first], s(121))
    steps = book.apply([revoked(first), raised(180, late=True)], s(600))
    assert [(t.event, t.alarm.id, t.alarm.state) for t in steps] == [
        ("revoked", 1, CLOSED),
        ("raised", 2, UNACK),
    ]
    assert (book.open[KEY].raised_ts_us, book.open[KEY].late) == (s(180), True)


def test_late_earlier_clear_corrects_the_cleared_time() -> None:
    """When late data moves a clear earlier (REVOKED clear at 300, CLEARED at 200), the alarm records 200.

    These are the events DeviceRules emits for readings 0-120 s above the limit, an
    in-band one at 300 s and then a late in-band one at 200 s. The book ignores both:
    the alarm keeps cleared_ts_us = 300 s and nothing of the correction is recorded.
    """
    book, _ = book_with_raised(120)
    first_clear = cleared(300)
    book.apply([first_clear], s(301))
    steps = book.apply([revoked(first_clear), cleared(200, late=True)], s(400))
    assert book.open[KEY].cleared_ts_us == s(200)
    assert steps  # the correction is recorded in the alarm's history


# --- user actions ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   "])
def test_acknowledge_without_a_reason_is_refused(reason: str) -> None:
    """A reason is mandatory (Annex 11): an empty or blank reason is refused and nothing changes."""
    book, alarm = book_with_raised()
    with pytest.raises(LifecycleError, match="reason is required"):
        book.acknowledge(alarm.id, "alice", reason, s(150))
    assert book.open[KEY].state is UNACK


@pytest.mark.parametrize("actor", ["", "  "])
def test_every_user_action_needs_a_named_actor(actor: str) -> None:
    """Acknowledge, shelve and unshelve are refused without a named user."""
    book, alarm = book_with_raised()
    with pytest.raises(LifecycleError, match="named user"):
        book.acknowledge(alarm.id, actor, "seen", s(150))
    with pytest.raises(LifecycleError, match="named user"):
        book.shelve(alarm.id, actor, "maintenance", s(900), s(150))
    with pytest.raises(LifecycleError, match="named user"):
        book.unshelve(alarm.id, actor, "done", s(150))


def test_actions_on_an_unknown_alarm_id_are_refused() -> None:
    """An id that names no open alarm is refused for every user action."""
    book, _ = book_with_raised()
    with pytest.raises(LifecycleError, match="no open alarm 99"):
        book.acknowledge(99, "alice", "seen", s(150))
    with pytest.raises(LifecycleError, match="no open alarm 99"):
        book.shelve(99, "alice", "maintenance", s(900), s(150))
    with pytest.raises(LifecycleError, match="no open alarm 99"):
        book.unshelve(99, "alice", "done", s(150))


def test_acknowledging_twice_is_refused() -> None:
    """An active-acknowledged alarm cannot be acknowledged again."""
    book, alarm = book_with_raised()
    book.acknowledge(alarm.id, "alice", "seen", s(150))
    with pytest.raises(LifecycleError, match="already acknowledged"):
        book.acknowledge(alarm.id, "bob", "seen too", s(160))
    assert book.open[KEY].state is ACK


def test_acknowledging_a_closed_alarm_is_refused() -> None:
    """Once closed, an alarm is no longer open and cannot be acted on."""
    book, alarm = book_with_raised()
    book.acknowledge(alarm.id, "alice", "seen", s(150))
    book.apply([cleared(300)], s(301))
    with pytest.raises(LifecycleError, match=f"no open alarm {alarm.id}"):
        book.acknowledge(alarm.id, "alice", "again", s(400))


def test_lifecycle_error_is_a_coldwatch_error() -> None:
    """Callers can catch every refused action through the project's base exception."""
    assert issubclass(LifecycleError, ColdwatchError)


def test_shelve_until_a_future_time_records_who_and_why() -> None:
    """Shelving is bounded, attributed and reasoned; the alarm is shelved until, not at, its end."""
    book, alarm = book_with_raised()
    step = book.shelve(alarm.id, "carol", "planned defrost", s(1000), s(200))
    assert (step.event, step.ts_us, step.from_state, step.actor, step.reason) == (
        "shelved",
        s(200),
        UNACK,
        "carol",
        "planned defrost",
    )
    shelved = book.open[KEY]
    assert (shelved.shelved_until_us, shelved.shelved_by, shelved.state) == (s(1000), "carol", UNACK)
    assert shelved.shelved(s(200))
    assert shelved.shelved(s(1000) - 1)
    assert not shelved.shelved(s(1000))


@pytest.mark.parametrize("until_s", [200, 199, 0])
def test_shelve_that_does_not_end_in_the_future_is_refused(until_s: float) -> None:
    """A shelve ending now or in the past is refused and leaves the alarm unshelved."""
    book, alarm = book_with_raised()
    with pytest.raises(LifecycleError, match="future"):
        book.shelve(alarm.id, "carol", "planned defrost", s(until_s), s(200))
    assert book.open[KEY].shelved_until_us is None


def test_shelve_without_a_reason_is_refused() -> None:
    """Shelving, like acknowledging, requires a reason."""
    book, alarm = book_with_raised()
    with pytest.raises(LifecycleError, match="reason is required"):
        book.shelve(alarm.id, "carol", "", s(1000), s(200))


def test_unshelve_ends_the_shelve_early() -> None:
    """Unshelving removes the shelve and records who ended it and why."""
    book, alarm = book_with_raised()
    book.shelve(alarm.id, "carol", "planned defrost", s(1000), s(200))
    step = book.unshelve(alarm.id, "dave", "defrost finished", s(500))
    assert (step.event, step.ts_us, step.actor, step.reason) == (
        "unshelved",
        s(500),
        "dave",
        "defrost finished",
    )
    assert (book.open[KEY].shelved_until_us, book.open[KEY].shelved_by) == (None, None)
    assert not book.open[KEY].shelved(s(600))


def test_shelve_survives_engine_events_and_acknowledgement() -> None:
    """A shelved alarm keeps its shelve through escalation and acknowledgement."""
    book, alarm = book_with_raised()
    book.shelve(alarm.id, "carol", "planned defrost", s(1000), s(200))
    book.apply([changed(300, ACTION)], s(301))
    book.acknowledge(alarm.id, "alice", "seen", s(400))
    assert (book.open[KEY].shelved_until_us, book.open[KEY].state) == (s(1000), ACK)


def test_cleared_unacknowledged_alarm_can_be_shelved() -> None:
    """An alarm waiting for acknowledgement after clearing is still open and may be shelved."""
    book, alarm = book_with_raised()
    book.apply([cleared(300)], s(301))
    step = book.shelve(alarm.id, "carol", "weekend", s(1000), s(400))
    assert (step.from_state, step.alarm.state) == (CLEARED_UNACK, CLEARED_UNACK)


def test_load_restores_open_alarms_and_the_next_id() -> None:
    """Restoring from storage keeps only open alarms and continues numbering from the stored next id."""
    open_alarm = Alarm(7, KEY, ALERT, ACK, s(100), s(101))
    closed_alarm = Alarm(8, OTHER, ACTION, CLOSED, s(100), s(101))
    book = AlarmBook()
    book.load([open_alarm, closed_alarm], next_id=9)
    assert book.open == {KEY: open_alarm}
    assert book.find(7) == open_alarm
    assert book.find(8) is None
    step = only(book.apply([raised(200, key=OTHER)], s(201)))
    assert step.alarm.id == 9
    assert only(book.apply([cleared(300)], s(301))).alarm.state is CLOSED


def test_unshelving_an_alarm_that_is_not_shelved_is_refused() -> None:
    """Unshelve needs a shelve to end: on a never-shelved or already unshelved alarm it is refused."""
    book, alarm = book_with_raised()
    with pytest.raises(LifecycleError, match=f"alarm {alarm.id} is not shelved"):
        book.unshelve(alarm.id, "dave", "nothing to end", s(150))
    book.shelve(alarm.id, "carol", "planned defrost", s(1000), s(200))
    book.unshelve(alarm.id, "dave", "defrost finished", s(500))
    with pytest.raises(LifecycleError, match="is not shelved"):
        book.unshelve(alarm.id, "dave", "again", s(510))
