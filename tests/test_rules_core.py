"""The rules core: on-delays, off-margins, door suppression, communication loss, late data, profiles.

Every test drives the pure core synchronously with readings at exact device times and
pins the exact timestamps (integer microseconds) of the events it produces.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Sequence

import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.rules.config import (
    CommLossRule,
    ConsecutiveRule,
    EventsInWindowRule,
    HeldLevel,
    HeldRule,
    ProbeDisagreementRule,
    ProbeLevel,
    RulesConfig,
    ThresholdLevel,
    ThresholdRule,
)
from coldwatch.rules.device import DeviceRules
from coldwatch.rules.engine import Engine
from coldwatch.rules.evaluators import HeldEvaluator, ProbeDisagreementEvaluator, ThresholdEvaluator
from coldwatch.rules.lifecycle import AlarmBook
from coldwatch.rules.model import AlarmEvent, AlarmKey, EngineReading, EventKind, RuleEvaluator, Severity

DEV = "dev-1"
RAISED, CHANGED, CLEARED, REVOKED = (
    EventKind.RAISED,
    EventKind.SEVERITY_CHANGED,
    EventKind.CLEARED,
    EventKind.REVOKED,
)
ALERT, ACTION = Severity.ALERT, Severity.ACTION

Brief = tuple[EventKind, int, Severity | None]


def s(seconds: float) -> int:
    """Seconds to integer microseconds."""
    return round(seconds * 1_000_000)


def brief(events: Iterable[AlarmEvent]) -> list[Brief]:
    """The parts of events that a test pins: kind, exact time and severity."""
    return [(e.kind, e.ts_us, e.severity) for e in events]


def level(limit: float, delay_s: float = 0.0, margin: float = 0.0) -> ThresholdLevel:
    return ThresholdLevel(limit=limit, delay_s=delay_s, margin=margin)


def threshold(
    direction: str,
    alert: ThresholdLevel | None = None,
    action: ThresholdLevel | None = None,
    *,
    metric: str = "temp_c",
    suppress_after_door: bool = False,
) -> ThresholdEvaluator:
    levels = {name: lv for name, lv in (("alert", alert), ("action", action)) if lv is not None}
    spec = ThresholdRule.model_validate(
        {
            "metric": metric,
            "direction": direction,
            "levels": levels,
            "suppress_after_door": suppress_after_door,
        }
    )
    return ThresholdEvaluator(spec)


def device(
    *evaluators: RuleEvaluator,
    comm: Sequence[CommLossRule] = (),
    horizon_s: float = 3600,
    recovery_s: float = 600,
    started_us: int = 0,
) -> DeviceRules:
    return DeviceRules.build(
        DEV,
        [lambda ev=ev: copy.deepcopy(ev) for ev in evaluators],  # type: ignore[misc]
        list(comm),
        door_recovery_s=recovery_s,
        horizon_s=horizon_s,
        started_us=started_us,
    )


def reading(t_s: float, seq: int = 0, received_s: float = 0.0, **values: float) -> EngineReading:
    return EngineReading(DEV, s(t_s), values, seq=seq, received_us=s(received_s))


def feed(
    rules: DeviceRules, series: Iterable[tuple[float, float]], metric: str = "temp_c"
) -> list[AlarmEvent]:
    """Ingest (seconds, value) pairs of one metric in the order given."""
    events: list[AlarmEvent] = []
    for t_s, value in series:
        events += rules.ingest(EngineReading(DEV, s(t_s), {metric: value}))
    return events


def every(step_s: float, start_s: float, stop_s: float, value: float) -> list[tuple[float, float]]:
    """Readings of one value every ``step_s`` from ``start_s`` to ``stop_s`` inclusive."""
    out: list[tuple[float, float]] = []
    t = start_s
    while t <= stop_s:
        out.append((t, value))
        t += step_s
    return out


# --- thresholds ------------------------------------------------------------------------


def test_high_threshold_raises_stamped_at_run_start_plus_delay() -> None:
    """A high excursion held through its on-delay raises at the reading reaching it, stamped start+delay."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 9.0), (60, 11.0), (120, 11.0)]) == []
    events = rules.ingest(reading(180, temp_c=11.5))
    assert brief(events) == [(RAISED, s(180), ALERT)]
    assert (events[0].value, events[0].limit, events[0].late) == (11.5, 10.0, False)
    assert events[0].key == AlarmKey(DEV, "temp_c", "high")


def test_raise_between_sparse_readings_is_stamped_when_the_delay_elapsed() -> None:
    """With no reading at start+delay, the raise comes with the next reading but is stamped start+delay."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(60, 11.0)]) == []
    assert brief(feed(rules, [(250, 11.0)])) == [(RAISED, s(180), ALERT)]


def test_low_threshold_raises_stamped_at_run_start_plus_delay() -> None:
    """A low excursion raises stamped start+delay at the first reading at or after it."""
    rules = device(threshold("low", level(36.5, delay_s=120)))
    events = feed(rules, [(0, 37.0), (30, 36.4), (90, 36.0), (150, 36.4)])
    assert brief(events) == [(RAISED, s(150), ALERT)]


@pytest.mark.parametrize(("direction", "limit"), [("high", 10.0), ("low", 36.5)])
def test_value_exactly_at_the_limit_is_not_beyond(direction: str, limit: float) -> None:
    """A reading exactly at the limit never counts as an excursion (the comparison is strict)."""
    rules = device(threshold(direction, level(limit)))
    assert feed(rules, every(60, 0, 600, limit)) == []


def test_normal_reading_exactly_at_start_plus_delay_prevents_the_raise() -> None:
    """An in-band reading exactly at start+delay ends the run: nothing is raised; a new run starts later."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 11.0), (60, 11.0), (120, 10.0), (180, 11.0), (240, 11.0)]) == []
    assert brief(feed(rules, [(300, 11.0)])) == [(RAISED, s(300), ALERT)]


def test_delay_zero_raises_at_the_first_beyond_reading() -> None:
    """Without an on-delay the first reading beyond the limit raises, stamped with its own time."""
    rules = device(threshold("high", level(10.0)))
    assert brief(feed(rules, [(0, 9.0), (37.5, 10.01)])) == [(RAISED, s(37.5), ALERT)]


def test_high_off_margin_keeps_the_alarm_until_limit_minus_margin() -> None:
    """A high alarm at 10 with margin 1 stays at 9.5 and 9.01, clears at exactly 9.0 (<= limit - margin)."""
    rules = device(threshold("high", level(10.0, margin=1.0)))
    assert brief(feed(rules, [(0, 11.0)])) == [(RAISED, 0, ALERT)]
    assert feed(rules, [(60, 9.5), (120, 10.0), (180, 9.01)]) == []
    events = feed(rules, [(240, 9.0)])
    assert brief(events) == [(CLEARED, s(240), None)]
    assert events[0].value == 9.0


def test_low_off_margin_keeps_the_alarm_until_limit_plus_margin() -> None:
    """A low alarm at 10 with margin 1 stays at 10.5 and clears at exactly 11.0 (value >= limit + margin)."""
    rules = device(threshold("low", level(10.0, margin=1.0)))
    assert brief(feed(rules, [(0, 9.0)])) == [(RAISED, 0, ALERT)]
    assert feed(rules, [(60, 10.5), (120, 10.99)]) == []
    assert brief(feed(rules, [(180, 11.0)])) == [(CLEARED, s(180), None)]


def test_off_margin_does_not_keep_a_pending_run() -> None:
    """A reading inside the margin but not beyond the limit ends a pending run: margins keep raised alarms."""
    rules = device(threshold("high", level(10.0, delay_s=120, margin=1.0)))
    assert feed(rules, [(0, 11.0), (60, 9.5), (120, 11.0), (180, 11.0)]) == []
    assert brief(feed(rules, [(240, 11.0)])) == [(RAISED, s(240), ALERT)]


def test_alert_to_action_escalation_is_stamped_when_the_action_delay_elapsed() -> None:
    """Escalation is stamped at the action run's start plus the action delay, even between readings."""
    rules = device(threshold("high", level(10.0, delay_s=60), level(20.0, delay_s=300)))
    assert brief(feed(rules, [(0, 15.0), (60, 25.0)])) == [(RAISED, s(60), ALERT)]
    assert feed(rules, [(120, 25.0), (200, 25.0), (359, 25.0)]) == []
    events = feed(rules, [(400, 26.0)])
    assert brief(events) == [(CHANGED, s(360), ACTION)]
    assert (events[0].value, events[0].limit) == (26.0, 20.0)


def test_simultaneous_alert_and_action_delays_raise_action_at_once() -> None:
    """When both delays elapse at the same instant, the alarm is raised once, at action (one notification)."""
    rules = device(threshold("high", level(10.0, delay_s=60), level(20.0, delay_s=60)))
    assert brief(feed(rules, [(0, 25.0), (60, 25.0)])) == [(RAISED, s(60), ACTION)]


def test_action_to_alert_de_escalation_is_stamped_at_the_reading() -> None:
    """A value back between the limits lowers the severity at that reading; one back in band then clears."""
    rules = device(threshold("high", level(10.0, delay_s=60), level(20.0, delay_s=60)))
    feed(rules, [(0, 25.0), (60, 25.0)])
    assert brief(feed(rules, [(90, 15.0)])) == [(CHANGED, s(90), ALERT)]
    assert feed(rules, [(150, 12.0)]) == []
    assert brief(feed(rules, [(210, 9.0)])) == [(CLEARED, s(210), None)]


def test_action_de_escalates_to_alert_when_the_alert_delay_is_longer() -> None:
    """Falling from action to between the limits lowers to alert even while the alert delay has not elapsed.

    The cryoshipper profile has action delay 0 and alert delay 60 s: -130 C raises action
    at once; -140 C thirty seconds later is still above the -150 C alert limit, so the
    alarm must stay open at alert, not clear and re-raise at 60 s.
    """
    rules = device(threshold("high", level(-150.0, delay_s=60, margin=2.0), level(-135.0, margin=2.0)))
    assert brief(feed(rules, [(0, -130.0)])) == [(RAISED, 0, ACTION)]
    assert brief(feed(rules, [(30, -140.0)])) == [(CHANGED, s(30), ALERT)]
    assert feed(rules, [(60, -140.0), (90, -140.0)]) == []


def test_clearing_from_action_goes_straight_to_none() -> None:
    """An action alarm whose value returns in band clears in one event, without passing through alert."""
    rules = device(threshold("high", level(10.0, delay_s=60), level(20.0, delay_s=60)))
    feed(rules, [(0, 25.0), (60, 25.0)])
    events = feed(rules, [(120, 5.0)])
    assert brief(events) == [(CLEARED, s(120), None)]


def test_pending_condition_broken_by_one_in_band_reading_raises_nothing() -> None:
    """One in-band reading inside the delay restarts the run, so no alarm is raised at the original time."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 11.0), (60, 9.0), (120, 11.0), (180, 11.0), (239, 11.0)]) == []
    assert brief(feed(rules, [(240, 11.0)])) == [(RAISED, s(240), ALERT)]


def test_reading_without_the_metric_changes_nothing() -> None:
    """A reading that lacks the rule's metric neither breaks a pending run nor clears a raised alarm."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 11.0)]) == []
    assert rules.ingest(reading(60, co2_pct=5.0)) == []
    assert brief(feed(rules, [(120, 11.0)])) == [(RAISED, s(120), ALERT)]
    assert rules.ingest(reading(180, co2_pct=5.0)) == []
    assert brief(feed(rules, [(240, 9.0)])) == [(CLEARED, s(240), None)]


# --- held states and probes ----------------------------------------------------------


def door_held() -> HeldEvaluator:
    return HeldEvaluator(
        HeldRule(
            metric="door_open", levels={"alert": HeldLevel(delay_s=180), "action": HeldLevel(delay_s=600)}
        )
    )


def test_door_held_open_raises_alert_at_180_s_and_action_at_600_s() -> None:
    """A door open from 0 raises alert stamped 180 s, escalates stamped 600 s, and clears when it closes."""
    rules = device(door_held())
    events = feed(rules, every(60, 0, 660, 1.0), metric="door_open")
    assert brief(events) == [(RAISED, s(180), ALERT), (CHANGED, s(600), ACTION)]
    assert brief(feed(rules, [(720, 0.0)], metric="door_open")) == [(CLEARED, s(720), None)]


def test_door_closed_exactly_at_180_s_raises_nothing() -> None:
    """A door seen closed at exactly start+180 s was not held open long enough."""
    rules = device(door_held())
    assert feed(rules, [(0, 1.0), (60, 1.0), (120, 1.0), (180, 0.0)], metric="door_open") == []


def probes(delay_s: float = 600, margin: float = 1.0) -> ProbeDisagreementEvaluator:
    return ProbeDisagreementEvaluator(
        ProbeDisagreementRule(levels={"alert": ProbeLevel(limit=5.0, delay_s=delay_s, margin=margin)})
    )


def test_probe_disagreement_raises_after_its_delay_and_clears_at_limit_minus_margin() -> None:
    """|A - B| above 5 for 600 s raises stamped start+600; 4.5 keeps it (margin 1); exactly 4.0 clears it."""
    rules = device(probes())
    events: list[AlarmEvent] = []
    for t in range(0, 601, 120):
        events += rules.ingest(reading(t, temp_c=-190.0, temp_b_c=-184.0))
    assert brief(events) == [(RAISED, s(600), ALERT)]
    assert events[0].key == AlarmKey(DEV, "temp_c", "probe_disagreement")
    assert events[0].value == pytest.approx(6.0)
    assert rules.ingest(reading(720, temp_c=-190.0, temp_b_c=-185.5)) == []
    assert brief(rules.ingest(reading(840, temp_c=-190.0, temp_b_c=-186.0))) == [(CLEARED, s(840), None)]


def test_probe_disagreement_exactly_at_the_limit_and_single_probe_readings() -> None:
    """A difference of exactly 5 is not beyond; a reading with one probe neither breaks nor feeds the run."""
    rules = device(probes(delay_s=120))
    assert rules.ingest(reading(0, temp_c=-190.0, temp_b_c=-185.0)) == []
    assert rules.ingest(reading(60, temp_c=-190.0, temp_b_c=-184.0)) == []
    assert rules.ingest(reading(120, temp_c=-150.0)) == []
    assert brief(rules.ingest(reading(180, temp_c=-190.0, temp_b_c=-184.0))) == [(RAISED, s(180), ALERT)]


# --- incubator door suppression -------------------------------------------------------


def incubator_rules(recovery_s: float = 600) -> DeviceRules:
    """A low temperature rule held during door recovery (36.5 C, 120 s) and the door rule."""
    temp = threshold("low", level(36.5, delay_s=120), suppress_after_door=True)
    return device(temp, door_held(), recovery_s=recovery_s)


def feed_incubator(rules: DeviceRules, series: Iterable[tuple[float, float, float]]) -> list[AlarmEvent]:
    """Ingest (seconds, temp_c, door_open) readings."""
    events: list[AlarmEvent] = []
    for t_s, temp, door in series:
        events += rules.ingest(reading(t_s, temp_c=temp, door_open=door))
    return events


def temp_events(events: Iterable[AlarmEvent]) -> list[Brief]:
    return brief(e for e in events if e.key.metric == "temp_c")


def test_dip_while_the_door_is_open_and_within_recovery_raises_nothing() -> None:
    """A temperature dip while the door is open and in the 600 s recovery after it raises no alarm."""
    rules = incubator_rules()
    series = [(t, 35.0, 1.0) for t in (0, 60, 120)]  # door opened at 0, seen closed at 180
    series += [(t, 35.0, 0.0) for t in range(180, 780, 60)]  # recovery: [180, 780)
    series += [(780, 37.0, 0.0), (840, 37.0, 0.0), (900, 37.0, 0.0)]
    assert temp_events(feed_incubator(rules, series)) == []


def test_dip_persisting_past_recovery_raises_delay_after_the_first_reading_after_recovery() -> None:
    """A dip lasting beyond the recovery raises stamped (first reading at or after close+recovery) + delay."""
    rules = incubator_rules()
    series = [(t, 35.0, 1.0) for t in (0, 60, 120)]
    series += [(t, 35.0, 0.0) for t in range(180, 900, 60)]
    assert temp_events(feed_incubator(rules, series)) == []
    # Recovery ends at 180 + 600 = 780; the run starts there and raises at 780 + 120.
    assert temp_events(feed_incubator(rules, [(900, 35.0, 0.0)])) == [(RAISED, s(900), ALERT)]


def test_run_after_recovery_starts_at_the_first_reading_not_at_the_recovery_end() -> None:
    """The run starts at the first reading at or after the recovery end, not at the end itself."""
    rules = incubator_rules()
    series = [(0, 35.0, 1.0), (90, 35.0, 0.0)]  # closed at 90: recovery until 690
    series += [(t, 35.0, 0.0) for t in range(180, 721, 90)]  # ..., 630, 720
    series += [(810, 35.0, 0.0)]
    assert temp_events(feed_incubator(rules, series)) == []
    # First reading at or after 690 is 720: raise stamped 720 + 120 = 840, at the 900 reading.
    assert temp_events(feed_incubator(rules, [(900, 35.0, 0.0)])) == [(RAISED, s(840), ALERT)]


def test_alarm_open_before_the_door_opened_stays_open() -> None:
    """Suppression never clears an alarm already raised: it stays through door opening and recovery."""
    rules = incubator_rules()
    assert temp_events(feed_incubator(rules, [(0, 35.0, 0.0), (60, 35.0, 0.0), (120, 35.0, 0.0)])) == [
        (RAISED, s(120), ALERT)
    ]
    during = [(180, 35.0, 1.0), (240, 35.0, 1.0), (300, 35.0, 0.0), (360, 35.0, 0.0), (600, 35.0, 0.0)]
    assert temp_events(feed_incubator(rules, during)) == []
    assert temp_events(feed_incubator(rules, [(660, 37.0, 0.0)])) == [(CLEARED, s(660), None)]


def test_door_rule_itself_is_not_suppressed() -> None:
    """The door-open alarm raises at 180 s even though temperature alarms are held while the door is open."""
    rules = incubator_rules()
    events = feed_incubator(rules, [(t, 35.0, 1.0) for t in range(0, 241, 60)])
    assert brief(events) == [(RAISED, s(180), ALERT)]
    assert events[0].key == AlarmKey(DEV, "door_open", "held_open")


# --- communication loss ----------------------------------------------------------------


COMM = AlarmKey(DEV, "device", "comm_loss")


def test_comm_loss_raises_stamped_exactly_last_seen_plus_timeout() -> None:
    """Silence raises nothing before last+timeout, raises stamped last+timeout at it, and only once."""
    rules = device(comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=37.0))
    rules.ingest(reading(100, temp_c=37.0))
    assert rules.advance(s(400) - 1) == []
    events = rules.advance(s(400))
    assert brief(events) == [(RAISED, s(400), ACTION)]
    assert events[0].key == COMM
    assert rules.advance(s(10_000)) == []


def test_comm_loss_stamped_at_due_time_when_advance_comes_late() -> None:
    """A timer that fires late still stamps the alarm at last+timeout, not at the time of the check."""
    rules = device(comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(100, temp_c=37.0))
    assert brief(rules.advance(s(950))) == [(RAISED, s(400), ACTION)]


def test_next_reading_clears_comm_loss_at_its_arrival() -> None:
    """The next reading clears communication loss stamped max(arrival, device time, raise time)."""
    rules = device(comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=37.0))
    rules.advance(s(300))
    events = rules.ingest(reading(500, received_s=520, temp_c=37.0))
    assert brief(events) == [(CLEARED, s(520), None)]
    assert events[0].key == COMM
    # Silence is measured again from the clear (520), not from the reading's device time.
    assert rules.advance(s(819)) == []
    assert brief(rules.advance(s(820))) == [(RAISED, s(820), ACTION)]
    assert brief(rules.ingest(reading(900, temp_c=37.0))) == [(CLEARED, s(900), None)]


def test_offline_status_raises_at_once_and_a_reading_clears_it() -> None:
    """A retained offline status raises at its own time, once; the timer adds nothing; a reading clears it."""
    rules = device(comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=37.0))
    events = rules.status(False, s(42))
    assert brief(events) == [(RAISED, s(42), ACTION)]
    assert events[0].detail == "device reported offline"
    assert rules.status(False, s(50)) == []
    assert rules.advance(s(1000)) == []
    assert brief(rules.ingest(reading(1100, temp_c=37.0))) == [(CLEARED, s(1100), None)]


def test_device_that_never_reported_raises_at_started_plus_timeout() -> None:
    """A device silent since start-up raises stamped started+timeout."""
    rules = device(comm=[CommLossRule(timeout_s=300)], started_us=s(1000))
    assert rules.advance(s(1300) - 1) == []
    assert brief(rules.advance(s(1300))) == [(RAISED, s(1300), ACTION)]


def test_per_metric_comm_loss_watches_only_its_metric() -> None:
    """A per-metric rule raises when its metric is missing for the timeout; only a reading with it clears."""
    per_metric = CommLossRule(metric="co2_pct", timeout_s=300, severity="alert")
    rules = device(comm=[per_metric, CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=37.0, co2_pct=5.0))
    rules.ingest(reading(100, temp_c=37.0))
    rules.ingest(reading(200, temp_c=37.0))
    events = rules.advance(s(300))
    assert brief(events) == [(RAISED, s(300), ALERT)]
    assert events[0].key == AlarmKey(DEV, "co2_pct", "comm_loss")
    assert rules.ingest(reading(350, temp_c=37.0)) == []
    assert brief(rules.ingest(reading(400, co2_pct=5.0))) == [(CLEARED, s(400), None)]


def test_backfilled_readings_do_not_re_raise_comm_loss() -> None:
    """A device backfilling buffered readings is talking: advance must not raise comm loss again meanwhile.

    Silent since 0, raised at 300; at 1000 it reconnects and sends its buffered reading
    of 60 s (then more). The clear is stamped 1000, and a check at 1000 must not raise a
    new comm-loss alarm stamped 360, before the clear it follows.
    """
    rules = device(comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=37.0))
    assert brief(rules.advance(s(300))) == [(RAISED, s(300), ACTION)]
    backfill = EngineReading(DEV, s(60), {"temp_c": 37.0}, buffered=True, received_us=s(1000))
    assert brief(rules.ingest(backfill)) == [(CLEARED, s(1000), None)]
    assert rules.advance(s(1000)) == []


def test_late_reading_does_not_revoke_a_comm_loss_clear() -> None:
    """Rewinding for a late reading must not revoke the comm-loss clear, which the replay never re-judges."""
    temp = threshold("high", level(10.0, delay_s=120))
    rules = device(temp, comm=[CommLossRule(timeout_s=300)])
    rules.ingest(reading(0, temp_c=5.0))
    rules.advance(s(300))
    assert brief(rules.ingest(reading(400, temp_c=5.0))) == [(CLEARED, s(400), None)]
    assert rules.ingest(reading(200, temp_c=5.0)) == []


# --- late data ---------------------------------------------------------------------------


def net(events: Iterable[AlarmEvent]) -> set[tuple[str, AlarmKey, int, int]]:
    """Identities of the events that stand once every revocation is applied."""
    standing: set[tuple[str, AlarmKey, int, int]] = set()
    for event in events:
        if event.kind is REVOKED:
            assert event.revokes is not None
            standing.discard(event.revokes.identity())
        else:
            standing.add(event.identity())
    return standing


def test_late_reading_that_breaks_a_pending_run_prevents_the_raise() -> None:
    """A late in-band reading inside a pending run's delay restarts the run: no raise at the original time."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 11.0), (60, 11.0)]) == []
    assert rules.ingest(reading(30, temp_c=9.0)) == []
    assert feed(rules, [(120, 11.0)]) == []
    events = feed(rules, [(180, 11.0)])
    assert brief(events) == [(RAISED, s(180), ALERT)]
    assert events[0].late is False


def test_late_readings_revealing_a_past_excursion_raise_late_with_exact_times() -> None:
    """Backfilled readings beyond the limit raise and clear, marked late, at their device times."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    assert feed(rules, [(0, 9.0), (300, 9.0)]) == []
    assert rules.ingest(reading(60, temp_c=11.0)) == []
    assert rules.ingest(reading(120, temp_c=11.0)) == []
    events = rules.ingest(reading(180, temp_c=11.0))
    assert brief(events) == [(RAISED, s(180), ALERT), (CLEARED, s(300), None)]
    assert all(e.late for e in events)


def test_late_reading_contradicting_an_emitted_raise_revokes_it() -> None:
    """An in-band late reading inside the run that raised revokes the raise; the run restarts after it."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    raised = feed(rules, [(0, 11.0), (60, 11.0), (120, 11.0)])
    assert brief(raised) == [(RAISED, s(120), ALERT)]
    events = rules.ingest(reading(90, temp_c=9.0))
    # A revocation carries the severity the alarm falls back to: None, it never existed.
    assert brief(events) == [(REVOKED, s(120), None)]
    assert events[0].revokes == raised[0]
    assert (events[0].late, events[0].detail) == (True, "late readings changed this")
    assert feed(rules, [(180, 11.0)]) == []
    assert brief(feed(rules, [(240, 11.0)])) == [(RAISED, s(240), ALERT)]


def test_late_reading_that_moves_a_clear_earlier_revokes_and_reissues_it() -> None:
    """A late in-band reading before the reported clear revokes it and clears, late, at its own time."""
    rules = device(threshold("high", level(10.0, delay_s=120)))
    feed(rules, [(0, 11.0), (60, 11.0), (120, 11.0), (300, 9.0)])
    events = rules.ingest(reading(200, temp_c=9.0))
    # The revoked clear leaves the alarm at its severity until the corrected clear.
    assert brief(events) == [(REVOKED, s(300), ALERT), (CLEARED, s(200), None)]
    assert events[1].late


def test_exact_duplicate_reading_yields_nothing() -> None:
    """A reading with the same timestamp and seq as one already judged is ignored, wherever it falls."""
    rules = device(threshold("high", level(10.0)))
    assert brief(rules.ingest(reading(0, seq=1, temp_c=11.0))) == [(RAISED, 0, ALERT)]
    assert brief(rules.ingest(reading(60, seq=2, temp_c=9.0))) == [(CLEARED, s(60), None)]
    assert rules.ingest(reading(60, seq=2, temp_c=9.0)) == []
    assert rules.ingest(reading(0, seq=1, temp_c=11.0)) == []
    assert rules.too_late == 0


def test_reading_far_older_than_the_horizon_counts_as_too_late() -> None:
    """Once old checkpoints are trimmed, a reading older than the oldest one is counted, not judged."""
    rules = device(threshold("high", level(10.0)), horizon_s=600)
    feed(rules, every(60, 0, 199 * 60, 5.0))
    assert rules.ingest(reading(600, temp_c=50.0)) == []
    assert rules.too_late == 1
    # One inside the horizon is still judged.
    assert brief(rules.ingest(reading(199 * 60 - 30, temp_c=50.0))) == [
        (RAISED, s(199 * 60 - 30), ALERT),
        (CLEARED, s(199 * 60), None),
    ]
    assert rules.too_late == 1


def test_out_of_order_ingest_nets_to_the_same_events_as_timestamp_order() -> None:
    """Readings shuffled within the horizon give, after revocations, exactly the events of timestamp order."""
    rng = random.Random(20240611)
    series: list[tuple[float, float]] = []
    value = 15.0
    for i in range(400):
        value = min(max(value + rng.uniform(-4.0, 4.0), 0.0), 30.0)
        series.append((i * 30.0, round(value, 1)))

    def fresh() -> DeviceRules:
        return device(
            threshold("high", level(12.0, delay_s=60, margin=1.0), level(20.0, delay_s=120, margin=1.0))
        )

    ordered = feed(fresh(), series)
    assert ordered  # the series does produce alarms
    shuffled = list(series)
    for i in range(len(shuffled) - 1):  # bounded displacement: a few readings, well inside the horizon
        j = min(i + rng.randint(0, 4), len(shuffled) - 1)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    assert shuffled != series
    rules = fresh()
    events = feed(rules, shuffled)
    assert rules.too_late == 0
    assert any(e.kind is REVOKED for e in events)  # the rewinding was exercised
    assert net(events) == {e.identity() for e in ordered}


def test_alarm_book_after_late_data_matches_timestamp_order() -> None:
    """A late reading that moves a raise must leave the alarm book as timestamp order would: at action.

    In order: alert raised at 120, escalated to action at 360. The late in-band reading
    at 30 moves the alert raise to 180 but leaves the escalation at 360 unchanged, so
    the device emits only REVOKED(raise 120) and RAISED(alert, 180); the book then holds
    an alert alarm while the condition is at action.
    """
    spec = (level(10.0, delay_s=120), level(20.0, delay_s=300))
    series = [(0.0, 15.0), *every(60, 60, 420, 25.0)]
    in_order = [(0.0, 15.0), (30.0, 5.0), *every(60, 60, 420, 25.0)]
    expected_book = AlarmBook()
    expected_book.apply(feed(device(threshold("high", *spec)), in_order), 0)
    rules = device(threshold("high", *spec))
    book = AlarmBook()
    book.apply(feed(rules, series), 0)
    book.apply(rules.ingest(reading(30, temp_c=5.0)), 0)
    key = AlarmKey(DEV, "temp_c", "high")
    assert expected_book.open[key].severity is ACTION
    assert (book.open[key].raised_ts_us, book.open[key].severity) == (s(180), ACTION)


# --- engine and profiles --------------------------------------------------------------------


def particle(device_id: str, grade: str, room_state: str | None = None) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": device_id,
            "kind": "particle_counter",
            "site": "s1",
            "area": "a1",
            "grade": grade,
            "room_state": room_state,
        }
    )


def other(device_id: str, kind: Kind) -> DeviceConfig:
    return DeviceConfig(id=device_id, kind=kind, site="s1", area="a1")


Limit = tuple[str, str, str, str, str, float]


def limits_of(engine: Engine, device_id: str) -> set[Limit]:
    return {row for row in engine.limits() if row[0] == device_id}


def particle_limits(device_id: str, fine: float, coarse: float) -> set[Limit]:
    return {
        (device_id, "particles_0_5um_m3", "consecutive", "alert", "high", fine / 2),
        (device_id, "particles_0_5um_m3", "consecutive", "action", "high", fine),
        (device_id, "particles_5_0um_m3", "events_in_window", "alert", "high", coarse / 2),
        (device_id, "particles_5_0um_m3", "events_in_window", "action", "high", coarse),
    }


@pytest.mark.parametrize(
    ("grade", "room_state", "fine", "coarse"),
    [
        ("A", "at_rest", 3_520, 29),
        ("A", "in_operation", 3_520, 29),
        ("B", "at_rest", 3_520, 29),
        ("B", "in_operation", 352_000, 2_930),
        ("B", None, 352_000, 2_930),  # the room state defaults to in operation
        ("C", "at_rest", 352_000, 2_930),
        ("C", "in_operation", 3_520_000, 29_300),
        ("D", "at_rest", 3_520_000, 29_300),
    ],
)
def test_particle_limits_follow_annex_1_grade_and_room_state(
    grade: str, room_state: str | None, fine: float, coarse: float
) -> None:
    """Particle counters get Annex 1 action limits for their grade and state, alert at half of them."""
    engine = Engine([particle("pc-1", grade, room_state)], RulesConfig(), started_us=0)
    assert limits_of(engine, "pc-1") == particle_limits("pc-1", fine, coarse)
    specs = engine.rules["pc-1"]
    fine_rule = next(r for r in specs if isinstance(r, ConsecutiveRule))
    assert (fine_rule.levels["alert"].n, fine_rule.levels["alert"].m) == (2, 2)
    assert (fine_rule.levels["action"].n, fine_rule.levels["action"].m) == (3, 3)
    coarse_rule = next(r for r in specs if isinstance(r, EventsInWindowRule))
    assert coarse_rule.window_s == 600
    assert (coarse_rule.levels["alert"].count, coarse_rule.levels["action"].count) == (2, 3)


def test_grade_d_in_operation_has_no_particle_rules() -> None:
    """Annex 1 sets no grade D in-operation limits, so such a counter only has communication loss."""
    engine = Engine([particle("pc-d", "D", "in_operation")], RulesConfig(), started_us=0)
    (comm,) = engine.rules["pc-d"]
    assert isinstance(comm, CommLossRule)
    assert comm.timeout_s == 300
    assert limits_of(engine, "pc-d") == set()


def test_incubator_profile_bands_door_and_comm_loss() -> None:
    """Incubators get 37 +/- 0.5/1.0 C and 5 +/- 0.5/1.0 % bands, door held 180/600 s and comm loss 300 s."""
    engine = Engine([other("inc-1", Kind.INCUBATOR)], RulesConfig(), started_us=0)
    assert limits_of(engine, "inc-1") == {
        ("inc-1", "temp_c", "high", "alert", "high", 37.5),
        ("inc-1", "temp_c", "high", "action", "high", 38.0),
        ("inc-1", "temp_c", "low", "alert", "low", 36.5),
        ("inc-1", "temp_c", "low", "action", "low", 36.0),
        ("inc-1", "co2_pct", "high", "alert", "high", 5.5),
        ("inc-1", "co2_pct", "high", "action", "high", 6.0),
        ("inc-1", "co2_pct", "low", "alert", "low", 4.5),
        ("inc-1", "co2_pct", "low", "action", "low", 4.0),
    }
    specs = engine.rules["inc-1"]
    door = next(r for r in specs if isinstance(r, HeldRule))
    assert (door.levels["alert"].delay_s, door.levels["action"].delay_s) == (180, 600)
    comm = next(r for r in specs if isinstance(r, CommLossRule))
    assert comm.timeout_s == 300
    assert all(r.suppress_after_door for r in specs if isinstance(r, ThresholdRule))


def test_cryoshipper_profile_alerts_at_minus_150_and_acts_at_minus_135() -> None:
    """Cryoshippers alarm above -150 C (alert) and -135 C (action) on both probes; LN2, tilt, battery too."""
    engine = Engine([other("ln2-1", Kind.CRYOSHIPPER)], RulesConfig(), started_us=0)
    assert limits_of(engine, "ln2-1") == {
        ("ln2-1", "temp_c", "high", "alert", "high", -150.0),
        ("ln2-1", "temp_c", "high", "action", "high", -135.0),
        ("ln2-1", "temp_b_c", "high", "alert", "high", -150.0),
        ("ln2-1", "temp_b_c", "high", "action", "high", -135.0),
        ("ln2-1", "ln2_level_pct", "low", "alert", "low", 20.0),
        ("ln2-1", "ln2_level_pct", "low", "action", "low", 10.0),
        ("ln2-1", "tilt_deg", "high", "alert", "high", 45.0),
        ("ln2-1", "battery_pct", "low", "alert", "low", 20.0),
    }
    assert engine.predictions_h() == {"ln2-1": None}


def test_engine_cryoshipper_raises_alert_after_60_s_and_action_at_once() -> None:
    """Through the engine: -140 C raises alert stamped start+60 s; -130 C escalates at its own reading."""
    engine = Engine([other("ln2-1", Kind.CRYOSHIPPER)], RulesConfig(), started_us=0)

    def at(t_s: float, temp: float) -> list[Brief]:
        events = engine.ingest(EngineReading("ln2-1", s(t_s), {"temp_c": temp}))
        return brief(e for e in events if e.key == AlarmKey("ln2-1", "temp_c", "high"))

    assert at(0, -190.0) == []
    assert at(10, -140.0) == []
    assert at(40, -140.0) == []
    assert at(70, -140.0) == [(RAISED, s(70), ALERT)]
    assert at(80, -130.0) == [(CHANGED, s(80), ACTION)]


def test_engine_incubator_door_suppression_with_the_built_in_profile() -> None:
    """Through the engine: the door alarm raises at 180 s; the dip only after recovery plus delay."""
    engine = Engine([other("inc-1", Kind.INCUBATOR)], RulesConfig(door_recovery_s=300), started_us=0)
    events: list[AlarmEvent] = []
    for t in range(0, 1201, 60):
        door = 1.0 if t < 240 else 0.0
        events += engine.ingest(
            EngineReading("inc-1", s(t), {"temp_c": 35.0, "co2_pct": 5.0, "door_open": door})
        )
    # Door seen closed at 240; recovery until 540; temperature run from 540, delay 120.
    assert [(e.key.metric, e.key.rule, e.kind, e.ts_us, e.severity) for e in events] == [
        ("door_open", "held_open", RAISED, s(180), ALERT),
        ("door_open", "held_open", CLEARED, s(240), None),
        ("temp_c", "low", RAISED, s(660), ACTION),
    ]


def test_engine_advance_status_and_too_late_cover_every_device() -> None:
    """The engine fires comm loss per device from its start time, honours status, sums too-late readings."""
    devices = [other("inc-1", Kind.INCUBATOR), other("ln2-1", Kind.CRYOSHIPPER)]
    engine = Engine(devices, RulesConfig(), started_us=s(1000), reorder_horizon_s=0)
    assert engine.devices["inc-1"].horizon_us == 0
    engine.ingest(EngineReading("ln2-1", s(1200), {"temp_c": -190.0}))
    assert brief(engine.advance(s(1300))) == [(RAISED, s(1300), ACTION)]  # inc-1: 1000 + 300
    assert brief(engine.advance(s(1800))) == [(RAISED, s(1800), ACTION)]  # ln2-1: 1200 + 600
    assert engine.status("inc-1", online=False, at_us=s(1900)) == []  # already raised
    assert engine.too_late() == 0


def test_kind_override_replaces_a_built_in_rule_for_every_device_of_the_kind() -> None:
    """A profile override with the same metric and rule id replaces the built-in rule for that kind."""
    cfg = RulesConfig.model_validate(
        {
            "profiles": {
                "incubator": [
                    {
                        "type": "threshold",
                        "metric": "temp_c",
                        "direction": "high",
                        "levels": {"alert": {"limit": 37.3}, "action": {"limit": 37.8}},
                    }
                ]
            }
        }
    )
    engine = Engine([other("inc-1", Kind.INCUBATOR), other("inc-2", Kind.INCUBATOR)], cfg, started_us=0)
    for device_id in ("inc-1", "inc-2"):
        highs = {row[3:] for row in limits_of(engine, device_id) if row[1:3] == ("temp_c", "high")}
        assert highs == {("alert", "high", 37.3), ("action", "high", 37.8)}
        assert len([r for r in engine.rules[device_id] if isinstance(r, ThresholdRule)]) == 4


def test_device_override_wins_over_the_kind_override() -> None:
    """A per-device rule replaces the kind's rule (built-in or overridden) for that device only."""
    kind_rule = ThresholdRule(metric="temp_c", direction="high", levels={"alert": level(37.3)})
    device_rule = ThresholdRule(metric="temp_c", direction="high", levels={"action": level(39.0)})
    cfg = RulesConfig(profiles={"incubator": [kind_rule]}, devices={"inc-2": [device_rule]})
    engine = Engine([other("inc-1", Kind.INCUBATOR), other("inc-2", Kind.INCUBATOR)], cfg, started_us=0)
    assert {r for r in limits_of(engine, "inc-1") if r[1:3] == ("temp_c", "high")} == {
        ("inc-1", "temp_c", "high", "alert", "high", 37.3)
    }
    assert {r for r in limits_of(engine, "inc-2") if r[1:3] == ("temp_c", "high")} == {
        ("inc-2", "temp_c", "high", "action", "high", 39.0)
    }


def test_enabled_false_removes_a_built_in_rule() -> None:
    """A rule overridden with enabled: false disappears from the device's rules, limits and alarms."""
    off = ThresholdRule(metric="tilt_deg", direction="high", levels={"alert": level(45.0)}, enabled=False)
    door_off = HeldRule(metric="door_open", levels={"alert": HeldLevel(delay_s=1)}, enabled=False)
    cfg = RulesConfig(profiles={"cryoshipper": [off]}, devices={"inc-1": [door_off]})
    engine = Engine([other("ln2-1", Kind.CRYOSHIPPER), other("inc-1", Kind.INCUBATOR)], cfg, started_us=0)
    assert not [row for row in engine.limits() if row[1] == "tilt_deg"]
    assert not [r for r in engine.rules["inc-1"] if isinstance(r, HeldRule)]
    events: list[AlarmEvent] = []
    for t in range(0, 1201, 60):
        events += engine.ingest(EngineReading("ln2-1", s(t), {"tilt_deg": 90.0, "temp_c": -190.0}))
        events += engine.ingest(EngineReading("inc-1", s(t), {"door_open": 1.0}))
    assert events == []
