"""Property-based tests of the rules engine's invariants (hypothesis)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from coldwatch.rules.config import ThresholdLevel, ThresholdRule
from coldwatch.rules.device import DeviceRules
from coldwatch.rules.evaluators import ThresholdEvaluator
from coldwatch.rules.model import US, AlarmEvent, EngineReading, EventKind

LIMIT = 10.0


@st.composite
def series(draw: st.DrawFn) -> list[tuple[int, float]]:
    """Readings at increasing, irregular times with values around the limit."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=60))
    values = draw(
        st.lists(
            st.sampled_from([7.0, 8.5, 9.0, 9.5, 10.0, 10.5, 12.0, 15.0]),
            min_size=len(gaps),
            max_size=len(gaps),
        )
    )
    ts, out = 0, []
    for gap, value in zip(gaps, values, strict=True):
        ts += gap
        out.append((ts * US, value))
    return out


def device(delay_s: int, margin: float, horizon_s: float = 10**6) -> DeviceRules:
    """One device with one high threshold."""
    rule = ThresholdRule(
        metric="temp_c",
        direction="high",
        levels={"action": ThresholdLevel(limit=LIMIT, delay_s=delay_s, margin=margin)},
    )
    return DeviceRules.build(
        "dev", [ThresholdEvaluator(rule)], [], door_recovery_s=0, horizon_s=horizon_s, started_us=0
    )


def feed(rules: DeviceRules, readings: list[tuple[int, float]]) -> list[AlarmEvent]:
    """Every event from judging ``readings`` in the order given."""
    events: list[AlarmEvent] = []
    for seq, (ts, value) in enumerate(readings):
        events += rules.ingest(EngineReading("dev", ts, {"temp_c": value}, seq=ts))
        del seq
    return events


def history(events: list[AlarmEvent]) -> Counter[tuple[str, object, int, int]]:
    """The alarm history that stands once revocations are applied."""
    standing: Counter[tuple[str, object, int, int]] = Counter()
    for event in events:
        if event.kind is EventKind.REVOKED:
            assert event.revokes is not None
            standing[event.revokes.identity()] -= 1
        else:
            standing[event.identity()] += 1
    return +standing


delays = st.sampled_from([0, 30, 60, 120, 300])
margins = st.sampled_from([0.0, 0.5, 1.0])


@settings(max_examples=300, deadline=None)
@given(series(), delays, margins)
def test_no_alarm_before_the_condition_has_held_for_its_delay(
    readings: list[tuple[int, float]], delay_s: int, margin: float
) -> None:
    """Every raise follows beyond-limit readings from raise-delay up to a reading at or after the raise."""
    events = feed(device(delay_s, margin), readings)
    for event in events:
        if event.kind is not EventKind.RAISED:
            continue
        start = event.ts_us - delay_s * US
        run = [(ts, v) for ts, v in readings if ts >= start]
        assert run[0][0] == start, "the run starts with a reading"
        confirm = next(i for i, (ts, _) in enumerate(run) if ts >= event.ts_us)
        assert all(v > LIMIT for _, v in run[: confirm + 1]), "the condition held throughout the delay"


@settings(max_examples=300, deadline=None)
@given(series(), delays, margins)
def test_alarm_does_not_clear_while_beyond_limit_minus_margin(
    readings: list[tuple[int, float]], delay_s: int, margin: float
) -> None:
    """A high alarm clears only at a reading at or below limit - margin."""
    events = feed(device(delay_s, margin), readings)
    values = dict(readings)
    for event in events:
        if event.kind is EventKind.CLEARED:
            assert values[event.ts_us] <= LIMIT - margin


@settings(max_examples=300, deadline=None)
@given(series(), delays, margins, st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_alarms(
    readings: list[tuple[int, float]], delay_s: int, margin: float, rnd: object
) -> None:
    """Feeding the same readings in any arrival order leaves the same alarm history."""
    import random  # noqa: PLC0415

    assert isinstance(rnd, random.Random)
    in_order = history(feed(device(delay_s, margin), readings))
    shuffled = list(readings)
    rnd.shuffle(shuffled)
    assert history(feed(device(delay_s, margin), shuffled)) == in_order
