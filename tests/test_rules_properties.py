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
        "dev", [lambda: ThresholdEvaluator(rule)], [], door_recovery_s=0, horizon_s=horizon_s, started_us=0
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


KIND_VALUES = {
    "incubator": {
        "temp_c": [35.5, 36.4, 37.0, 37.6, 38.3],
        "co2_pct": [3.8, 4.6, 5.0, 5.6, 6.2],
        "door_open": [0.0, 0.0, 0.0, 1.0],
    },
    "cryoshipper": {
        "temp_c": [-190.0, -160.0, -149.0, -140.0, -130.0],
        "temp_b_c": [-190.0, -150.0, -131.0],
        "ln2_level_pct": [80.0, 30.0, 19.0, 9.0],
        "tilt_deg": [2.0, 50.0],
        "lid_open": [0.0, 1.0],
        "battery_pct": [90.0, 15.0],
    },
    "particle_counter": {
        "particles_0_5um_m3": [100.0, 2000.0, 4000.0],
        "particles_5_0um_m3": [0.0, 0.0, 35.0],
    },
}


@st.composite
def device_series(draw: st.DrawFn, kind: str) -> list[EngineReading]:
    """Readings of one device of ``kind`` at irregular times, every metric drawn from its range."""
    gaps = draw(st.lists(st.integers(min_value=5, max_value=400), min_size=1, max_size=50))
    ts, out = 0, []
    for seq, gap in enumerate(gaps):
        ts += gap
        values = {m: draw(st.sampled_from(choices)) for m, choices in KIND_VALUES[kind].items()}
        out.append(EngineReading("dev", ts * US, values, seq=seq))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(KIND_VALUES)).flatmap(lambda k: st.tuples(st.just(k), device_series(k))),
    st.randoms(use_true_random=False),
)
def test_every_builtin_rule_gives_the_same_alarms_in_any_arrival_order(
    case: tuple[str, list[EngineReading]], rnd: object
) -> None:
    """With every rule of a kind's built-in profile, arrival order does not change the alarm history."""
    import random  # noqa: PLC0415

    from coldwatch.config import DeviceConfig  # noqa: PLC0415
    from coldwatch.rules.config import RulesConfig  # noqa: PLC0415
    from coldwatch.rules.engine import Engine  # noqa: PLC0415

    assert isinstance(rnd, random.Random)
    kind, readings = case
    extra = {"grade": "A"} if kind == "particle_counter" else {}
    device = DeviceConfig.model_validate({"id": "dev", "kind": kind, "site": "s", "area": "a", **extra})

    def run(order: list[EngineReading]) -> Counter[tuple[str, object, int, int]]:
        engine = Engine([device], RulesConfig(reorder_horizon_s=10**7), started_us=0)
        return history(engine.ingest_many(order))

    shuffled = list(readings)
    rnd.shuffle(shuffled)
    assert run(shuffled) == run(readings)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["incubator", "cryoshipper"]).flatmap(lambda k: st.tuples(st.just(k), device_series(k))),
    st.randoms(use_true_random=False),
)
def test_alarm_records_are_the_same_in_any_arrival_order(
    case: tuple[str, list[EngineReading]], rnd: object
) -> None:
    """The stored alarm records (raised, severity, cleared) do not depend on arrival order."""
    import random  # noqa: PLC0415

    from coldwatch.config import DeviceConfig  # noqa: PLC0415
    from coldwatch.rules.config import RulesConfig  # noqa: PLC0415
    from coldwatch.rules.engine import Engine  # noqa: PLC0415
    from coldwatch.rules.lifecycle import AlarmBook  # noqa: PLC0415

    assert isinstance(rnd, random.Random)
    kind, readings = case
    device = DeviceConfig.model_validate({"id": "dev", "kind": kind, "site": "s", "area": "a"})

    def records(order: list[EngineReading]) -> list[tuple[object, ...]]:
        engine = Engine([device], RulesConfig(reorder_horizon_s=10**7), started_us=0)
        book = AlarmBook()
        final: dict[int, tuple[object, ...]] = {}
        for reading in order:
            for step in book.apply(engine.ingest(reading), 0):
                a = step.alarm
                final[a.id] = (
                    a.key,
                    a.raised_ts_us,
                    a.severity,
                    a.cleared_ts_us,
                    a.detail.startswith("revoked"),
                )
        return sorted((r for r in final.values() if not r[4]), key=repr)

    shuffled = list(readings)
    rnd.shuffle(shuffled)
    assert records(shuffled) == records(readings)
