"""The batched engine phase gives exactly the events of the reading-by-reading engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldwatch.replay.batch import batched_events
from coldwatch.replay.runner import EmittedEvent, engine_events
from coldwatch.replay.scenario import LoadedScenario, Scenario, _resolve, load_scenario
from coldwatch.replay.timeline import build_streams

LIBRARY = sorted((Path(__file__).parent.parent / "simulators" / "scenarios").glob("*.yaml"))


def _both(loaded: LoadedScenario) -> tuple[list[EmittedEvent], list[EmittedEvent]]:
    streams = build_streams(loaded.scenario)
    return engine_events(loaded, streams), batched_events(loaded, streams)


def _assert_same(reference: list[EmittedEvent], batched: list[EmittedEvent]) -> None:
    """Same events (kind, key, time, severity, value, limit, lateness, detail) at the same instants."""
    assert [(e.emit_us, e.phase, e.event) for e in batched] == [
        (e.emit_us, e.phase, e.event) for e in reference
    ]


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_library_scenarios_batched_equals_reading_by_reading(path: Path) -> None:
    """Every library scenario with in-order readings yields identical events on both paths."""
    loaded = load_scenario(path)
    streams = build_streams(loaded.scenario)
    if not all(s.in_order for s in streams.values()):
        pytest.skip("late readings arrive out of order: only the reading-by-reading path applies")
    reference, batched = _both(loaded)
    _assert_same(reference, batched)


# --- random timelines -------------------------------------------------------------------

METRICS = {
    "incubator": {"temp_c": (37.0, 1.6), "co2_pct": (5.0, 1.6)},
    "cryoshipper": {
        "temp_c": (-160.0, 30.0),
        "temp_b_c": (-160.0, 30.0),
        "ln2_level_pct": (30.0, 25.0),
        "tilt_deg": (30.0, 30.0),
        "battery_pct": (30.0, 20.0),
    },
    "particle_counter": {
        "particles_0_5um_m3": (300_000.0, 250_000.0),
        "particles_5_0um_m3": (2_000.0, 2_000.0),
    },
}

EXTRA_RULES: dict[str, list[dict[str, Any]]] = {
    "incubator": [
        {
            "type": "rate",
            "metric": "temp_c",
            "window_s": 120,
            "levels": {"alert": {"limit_per_min": 0.3, "margin": 0.05, "delay_s": 30}},
        },
        {
            "type": "time_out_of_range",
            "metric": "co2_pct",
            "low": 4.5,
            "high": 5.5,
            "window_s": 1800,
            "levels": {"alert": {"budget_s": 300}, "action": {"budget_s": 600}},
        },
        {"type": "mkt", "metric": "temp_c", "window_s": 3600, "levels": {"alert": {"limit_c": 37.3}}},
    ],
    "cryoshipper": [
        {
            "type": "forecast",
            "window_s": 1800,
            "min_points": 5,
            "levels": {"alert": {"hours": 3}, "action": {"hours": 1}},
        },
    ],
    "particle_counter": [],
}


def _segments(draw: st.DrawFn, mean: float, spread: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        value = mean + spread * draw(st.floats(-1.0, 1.0))
        minutes = draw(st.integers(1, 40))
        kind = draw(st.sampled_from(["hold", "ramp", "step", "noise"]))
        if kind == "hold":
            out.append({"hold": {"value": value, "for": f"{minutes}m"}})
        elif kind == "ramp":
            out.append({"ramp": {"to": value, "over": f"{minutes}m"}})
        elif kind == "step":
            out.append({"step": {"to": value, "for": f"{minutes}m"}})
        else:
            sd = spread * draw(st.floats(0.01, 0.3))
            out.append(
                {"noise": {"mean": value, "sd": sd, "seed": draw(st.integers(0, 99)), "for": f"{minutes}m"}}
            )
    return out


def _windows(draw: st.DrawFn, most: int, hours: float) -> list[dict[str, Any]]:
    return [
        {"at": round(draw(st.floats(0, hours * 3600)), 1), "for": draw(st.integers(30, 1500))}
        for _ in range(draw(st.integers(0, most)))
    ]


@st.composite
def random_scenarios(draw: st.DrawFn) -> LoadedScenario:
    kind = draw(st.sampled_from(sorted(METRICS)))
    hours = draw(st.floats(0.5, 4.0))
    device: dict[str, Any] = {"id": "dev-1", "kind": kind, "site": "s1", "area": "a1"}
    if kind == "particle_counter":
        device["grade"] = draw(st.sampled_from(["A", "B", "C"]))
    metrics = {
        m: _segments(draw, *ms) for m, ms in METRICS[kind].items() if draw(st.booleans()) or m == "temp_c"
    }
    timeline: dict[str, Any] = {
        "interval": draw(st.sampled_from([1, 5, 10, 30, 60])),
        "metrics": metrics,
        "gaps": _windows(draw, 2, hours),
        "outages": [{**w, "backfill": draw(st.booleans())} for w in _windows(draw, 2, hours)],
    }
    if kind == "incubator":
        timeline["door"] = _windows(draw, 3, hours)
    if kind == "cryoshipper":
        timeline["lid"] = _windows(draw, 2, hours)
    rules = {"devices": {"dev-1": EXTRA_RULES[kind]}, "door_recovery_s": draw(st.sampled_from([0, 120, 600]))}
    spec = Scenario.model_validate(
        {
            "duration": hours * 3600,
            "devices": [device],
            "rules": rules,
            "timeline": {"dev-1": timeline},
            "actions": [],
            "expect": [{"id": "R", "device": "dev-1", "rule": "device/comm_loss", "never": True}],
        }
    )
    return _resolve(Path("random.yaml"), spec, repr(spec))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_scenarios())
def test_random_timelines_batched_equals_reading_by_reading(loaded: LoadedScenario) -> None:
    """Random signals, gaps, outages with backfill and door/lid openings: identical events on both paths."""
    streams = build_streams(loaded.scenario)
    assert all(s.in_order for s in streams.values()), "outages alone never deliver readings out of order"
    reference, batched = _both(loaded)
    _assert_same(reference, batched)


def test_random_timelines_do_raise_alarms() -> None:
    """The comparison is not vacuous: a drawn-out excursion yields several kinds of events."""
    spec = Scenario.model_validate(
        {
            "duration": "3h",
            "devices": [{"id": "dev-1", "kind": "incubator", "site": "s1", "area": "a1"}],
            "rules": {"devices": {"dev-1": EXTRA_RULES["incubator"]}},
            "timeline": {
                "dev-1": {
                    "interval": 10,
                    "metrics": {
                        "temp_c": [
                            {"hold": {"value": 37, "for": "30m"}},
                            {"ramp": {"to": 39, "over": "4m"}},
                            {"hold": {"for": "20m"}},
                        ],
                        "co2_pct": [{"noise": {"mean": 5.4, "sd": 0.2, "seed": 1, "for": "3h"}}],
                    },
                    "gaps": [{"at": "2h", "for": "10m"}],
                    "door": [{"at": "1h", "for": "2m"}],
                }
            },
            "expect": [{"id": "R", "device": "dev-1", "rule": "device/comm_loss", "never": True}],
        }
    )
    reference, batched = _both(_resolve(Path("x.yaml"), spec, "x"))
    rules = {e.event.key.rule for e in reference}
    assert {"high", "rate", "time_out_of_range", "mkt", "comm_loss"} <= rules, rules
    _assert_same(reference, batched)


def _record(**kw: Any) -> Any:
    from coldwatch.replay.runner import AlarmRecord  # noqa: PLC0415

    base: dict[str, Any] = {
        "id": 1, "device": "inc-1", "metric": "temp_c", "rule": "high", "severity": "action",
        "state": "closed", "raised_s": 60.0, "reached_s": {"action": 60.0}, "cleared_s": 120.0,
        "acknowledged_by": None, "late": False, "revoked": False, "detail": "", "value": 39.0, "limit": 38.0,
    }  # fmt: skip
    return AlarmRecord(**{**base, **kw})


def test_expectations_count_a_jump_past_a_severity_and_revoked_alarms() -> None:
    """An alarm raised straight at action breaks 'never at alert'; a revoked one still breaks 'never'."""
    from coldwatch.replay.runner import check_expectations  # noqa: PLC0415
    from coldwatch.replay.scenario import Expectation  # noqa: PLC0415

    never_alert = Expectation(id="R1", device="inc-1", rule="temp_c/high", severity="alert", never=True)
    never_any = Expectation(id="R2", device="inc-1", rule="temp_c/high", never=True)
    raised_at_alert = Expectation(
        id="R3", device="inc-1", rule="temp_c/high", severity="alert", raised_within=(60, 60)
    )
    results = check_expectations([never_alert, never_any, raised_at_alert], [_record()])
    assert [r.status for r in results] == ["fail", "fail", "pass"]
    revoked = check_expectations([never_any], [_record(revoked=True, detail="revoked: late readings")])
    assert revoked[0].status == "fail"
    assert "(revoked)" in revoked[0].detail


def test_count_zero_cannot_carry_clauses_it_would_never_check() -> None:
    """count: 0 with a state (or clear, acknowledgement, lateness) clause is refused."""
    from pydantic import ValidationError  # noqa: PLC0415

    from coldwatch.replay.scenario import Expectation  # noqa: PLC0415

    with pytest.raises(ValidationError, match="count: 0"):
        Expectation(id="R", device="inc-1", rule="temp_c/high", count=0, state="closed")
