"""A revoked alarm records what late readings actually changed (pure core: device rules and alarm book)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coldwatch.rules.config import ThresholdLevel, ThresholdRule
from coldwatch.rules.device import DeviceRules
from coldwatch.rules.evaluators import ThresholdEvaluator
from coldwatch.rules.lifecycle import AlarmBook, AlarmState
from coldwatch.rules.model import EngineReading

DEV = "inc-1"


def _at(seconds: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _rules() -> DeviceRules:
    spec = ThresholdRule(
        metric="temp_c", direction="high", levels={"alert": ThresholdLevel(limit=10.0, delay_s=120)}
    )
    return DeviceRules.build(
        DEV, [lambda: ThresholdEvaluator(spec)], [], door_recovery_s=600, horizon_s=3600, started_us=0
    )


def _feed(rules: DeviceRules, book: AlarmBook, t_s: int, value: float) -> list[tuple[str, str, str]]:
    events = rules.ingest(EngineReading(DEV, t_s * 1_000_000, {"temp_c": value}))
    return [(t.event, t.alarm.detail, t.reason) for t in book.apply(events, t_s * 1_000_000)]


def test_a_moved_start_is_recorded_as_moved_not_as_no_excursion() -> None:
    """Late readings that only move an excursion's start revoke the alarm saying where the start moved."""
    rules, book = _rules(), AlarmBook()
    for t_s in (0, 60, 120, 180):
        _feed(rules, book, t_s, 25.0)
    assert book.open  # raised at 120 s: above the limit since 0 s, for the 120 s delay
    steps = _feed(rules, book, 30, 5.0)  # late: within limits at 30 s, so the excursion began at 60 s
    revoked = [s for s in steps if s[0] == "revoked"]
    assert len(revoked) == 1, steps
    _, detail, reason = revoked[0]
    assert "no excursion" not in detail
    assert f"moved the start of this excursion from {_at(120)} to {_at(180)}" in detail, detail
    assert reason.startswith("raised revoked: late readings moved the start"), reason
    assert [s[0] for s in steps][-1] == "raised"
    assert next(iter(book.open.values())).state is AlarmState.ACTIVE_UNACK


def test_a_moved_end_is_recorded_with_both_times() -> None:
    """Late readings that move a clear earlier record the old and the new end of the excursion."""
    rules, book = _rules(), AlarmBook()
    for t_s, value in ((0, 25.0), (60, 25.0), (120, 25.0), (300, 5.0)):
        _feed(rules, book, t_s, value)
    steps = _feed(rules, book, 200, 5.0)
    reasons = [s[2] for s in steps if s[0] == "revoked"]
    assert reasons == [
        f"cleared revoked: late readings moved the end of the excursion from {_at(300)} to {_at(200)}"
    ]


def test_a_withdrawn_raise_says_no_alarm_was_due() -> None:
    """A raise that late readings withdraw with no replacement says no excursion lasted long enough."""
    rules, book = _rules(), AlarmBook()
    for t_s in (0, 60, 120):
        _feed(rules, book, t_s, 25.0)
    steps = _feed(rules, book, 90, 5.0)
    assert [(s[0], s[1]) for s in steps] == [
        ("revoked", f"revoked: late readings showed no excursion long enough to raise an alarm at {_at(120)}")
    ]


def test_an_unchanged_end_revoked_with_a_moved_start_is_not_said_to_have_moved() -> None:
    """A clear revoked only because the start before it moved says the end stands, not that it moved."""
    rules, book = _rules(), AlarmBook()
    for t_s, value in ((0, 25.0), (60, 25.0), (120, 25.0), (180, 25.0), (300, 5.0)):
        _feed(rules, book, t_s, value)
    steps = _feed(rules, book, 30, 5.0)  # late: the excursion began at 60 s; it still ended at 300 s
    reasons = [s[2] for s in steps if s[0] == "revoked"]
    stands = f"late readings changed an earlier event; this cleared at {_at(300)} stands"
    assert reasons[0] == f"cleared revoked: {stands}", reasons
    moved = f"late readings moved the start of this excursion from {_at(120)} to {_at(180)}"
    assert reasons[1].startswith(f"raised revoked: {moved}"), reasons
    assert [s[0] for s in steps][-2:] == ["raised", "cleared"]


def test_a_withdrawn_excursion_is_not_said_to_have_moved_to_a_later_one() -> None:
    """Late readings that withdraw one excursion leave a later, unchanged one standing, not as its move."""
    rules, book = _rules(), AlarmBook()
    for t_s, value in ((0, 25.0), (60, 25.0), (120, 25.0), (150, 5.0), (200, 25.0), (260, 25.0), (320, 25.0)):
        _feed(rules, book, t_s, value)
    steps = _feed(rules, book, 90, 5.0)  # late: the first excursion never lasted its 120 s delay
    reasons = [s[2] for s in steps if s[0] == "revoked"]
    assert reasons == [
        f"raised revoked: late readings changed an earlier event; this raised at {_at(320)} stands",
        (
            "cleared revoked: late readings showed no excursion long enough to raise an alarm; "
            f"its end at {_at(150)} goes with it"
        ),
        f"raised revoked: late readings showed no excursion long enough to raise an alarm at {_at(120)}",
    ], reasons
