"""Run a scenario through the daemon's rules engine and alarm lifecycle, in event time.

Nothing waits: time is the scenario's own. The engine phase turns readings into alarm
events, each stamped with when the collector would have produced it; the lifecycle phase
applies them, and the scenario's user actions, in that order to an :class:`AlarmBook`,
exactly as the daemon's pipeline does. Two engine phases give the same events: the
reading-by-reading one (the daemon's own code path) and a batched one (``batch``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from coldwatch.replay.scenario import Action, Expectation, LoadedScenario
from coldwatch.replay.timeline import DeviceStream, build_streams, merged_arrivals
from coldwatch.rules.engine import Engine
from coldwatch.rules.lifecycle import AlarmBook, AlarmState, LifecycleError, Transition
from coldwatch.rules.model import US, AlarmEvent, Severity

__all__ = [
    "AlarmRecord",
    "EmittedEvent",
    "ExpectationResult",
    "ScenarioResult",
    "check_expectations",
    "engine_events",
    "run_scenario",
]

# When, within one instant, an event reaches the lifecycle: timers fire first, then the
# scenario's user actions, then what the readings that arrived at that instant caused.
PHASE_TIMER, PHASE_ACTION, PHASE_READING = 0, 1, 2

EngineMode = Literal["auto", "reading", "batched"]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class EmittedEvent:
    """An alarm event and when the collector produces it."""

    emit_us: int
    phase: int
    event: AlarmEvent


@dataclass(slots=True)
class AlarmRecord:
    """One alarm from raise to its final state, in scenario time (offsets in seconds)."""

    id: int
    device: str
    metric: str
    rule: str
    severity: str  # the highest severity it reached
    state: str
    raised_s: float
    reached_s: dict[str, float]  # severity -> when the alarm first reached it
    cleared_s: float | None
    acknowledged_by: str | None
    late: bool
    revoked: bool
    detail: str
    value: float | None
    limit: float | None


@dataclass(slots=True)
class ExpectationResult:
    """The verdict on one expectation."""

    expectation: Expectation
    status: Literal["pass", "fail", "not_run"]
    detail: str
    alarm_ids: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the expectation held."""
        return self.status == "pass"


@dataclass(slots=True)
class ScenarioResult:
    """Everything a report needs about one run of one scenario."""

    loaded: LoadedScenario
    mode: str  # how it ran: reading-by-reading, batched, or via-broker
    readings: int
    elapsed_s: float
    alarms: list[AlarmRecord]
    results: list[ExpectationResult]
    transitions: list[Transition]
    streams: dict[str, DeviceStream]
    limits: list[tuple[str, str, str, str, str, float]]
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every expectation held and nothing went wrong."""
        return not self.errors and all(r.passed for r in self.results)


def _engine(loaded: LoadedScenario) -> Engine:
    return Engine(loaded.devices, loaded.rules, started_us=loaded.scenario.start_us)


def action_times(loaded: LoadedScenario) -> list[int]:
    start = loaded.scenario.start_us
    return sorted(start + round(a.at * US) for a in loaded.scenario.actions)


def engine_events(
    loaded: LoadedScenario,
    streams: dict[str, DeviceStream],
    progress: Progress | None = None,
) -> list[EmittedEvent]:
    """The reading-by-reading engine phase: the daemon's code path, one reading at a time."""
    engine = _engine(loaded)
    out: list[EmittedEvent] = []
    end = loaded.scenario.start_us + loaded.scenario.duration_us
    # Timers also run at each user action and at the scenario's end, in time order (a
    # backfill may arrive after the end).
    pending = sorted([*action_times(loaded), end])
    done = 0
    for received, stream, index in merged_arrivals(streams):
        while pending and pending[0] <= received:
            at = pending.pop(0)
            out += [EmittedEvent(at, PHASE_TIMER, e) for e in engine.advance(at)]
        out += [EmittedEvent(received, PHASE_TIMER, e) for e in engine.advance(received)]
        out += [EmittedEvent(received, PHASE_READING, e) for e in engine.ingest(stream.reading(index))]
        done += 1
        if progress is not None and done % 65536 == 0:
            progress(65536)
    for at in pending:
        out += [EmittedEvent(at, PHASE_TIMER, e) for e in engine.advance(at)]
    if progress is not None:
        progress(done % 65536)
    return out


def _apply(loaded: LoadedScenario, emitted: list[EmittedEvent]) -> tuple[list[Transition], list[str]]:
    """The lifecycle phase: events and user actions, in the order the collector meets them."""
    start = loaded.scenario.start_us
    actions = sorted(loaded.scenario.actions, key=lambda a: a.at)
    book = AlarmBook()
    transitions: list[Transition] = []
    errors: list[str] = []
    timed: list[tuple[int, int, int, AlarmEvent | Action]] = [
        (e.emit_us, e.phase, n, e.event) for n, e in enumerate(emitted)
    ]
    timed += [(start + round(a.at * US), PHASE_ACTION, n, a) for n, a in enumerate(actions)]
    timed.sort(key=lambda item: item[:3])
    for at, _, _, item in timed:
        if isinstance(item, AlarmEvent):
            transitions += book.apply([item], at)
            continue
        step = item.acknowledge
        target = next(
            (
                alarm
                for key, alarm in sorted(book.open.items())
                if key.device_id == step.device
                and key.rule == step.rule
                and (step.metric is None or key.metric == step.metric)
            ),
            None,
        )
        when = f"action at {item.at:g} s: acknowledge {step.device}/{step.rule}"
        if target is None:
            errors.append(f"{when}: no open alarm to acknowledge")
            continue
        try:
            transitions.append(book.acknowledge(target.id, step.user, step.reason, at))
        except LifecycleError as exc:
            errors.append(f"{when}: {exc}")
    return transitions, errors


def alarm_records(transitions: list[Transition], start_us: int) -> list[AlarmRecord]:
    """Each alarm's story, from its transitions."""
    records: dict[int, AlarmRecord] = {}
    for step in transitions:
        alarm = step.alarm
        at_s = (step.ts_us - start_us) / US
        record = records.get(alarm.id)
        if record is None:
            record = records[alarm.id] = AlarmRecord(
                id=alarm.id,
                device=alarm.key.device_id,
                metric=alarm.key.metric,
                rule=alarm.key.rule,
                severity=alarm.severity.label,
                state=alarm.state.value,
                raised_s=(alarm.raised_ts_us - start_us) / US,
                reached_s={alarm.severity.label: (alarm.raised_ts_us - start_us) / US},
                cleared_s=None,
                acknowledged_by=None,
                late=alarm.late,
                revoked=False,
                detail=alarm.detail,
                value=alarm.value,
                limit=alarm.limit,
            )
        if step.event == "severity_changed":
            record.reached_s.setdefault(alarm.severity.label, at_s)
            if alarm.severity > Severity[record.severity.upper()]:
                record.severity = alarm.severity.label
        record.state = alarm.state.value
        record.cleared_s = None if alarm.cleared_ts_us is None else (alarm.cleared_ts_us - start_us) / US
        record.acknowledged_by = alarm.acknowledged_by
        record.detail = alarm.detail
        record.revoked = alarm.detail.startswith("revoked")
        if step.event == "revoked" and record.revoked:
            record.state = AlarmState.CLOSED.value
    return sorted(records.values(), key=lambda r: (r.raised_s, r.id))


def _fmt(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{int(days)}d" if days else "",
        f"{int(hours)}h" if hours else "",
        f"{int(minutes)}m" if minutes else "",
    ]
    text = "".join(parts)
    if secs or not text:
        text += f"{secs:g}s"
    return sign + text


def format_offset(seconds: float) -> str:
    """``1h2m3s``-style text of a scenario offset."""
    return _fmt(seconds)


def _check_one(exp: Expectation, alarms: list[AlarmRecord]) -> ExpectationResult:  # noqa: C901, PLR0911, PLR0912 - one branch per clause
    floor = Severity[exp.severity.upper()] if exp.severity is not None else 0

    def reached(a: AlarmRecord) -> float:
        """When the alarm first stood at the expected severity or worse (a jump past it counts)."""
        return min(t for sev, t in a.reached_s.items() if Severity[sev.upper()] >= floor)

    ours = [
        a
        for a in alarms
        if a.device == exp.device
        and a.rule == exp.rule
        and (exp.metric is None or a.metric == exp.metric)
        and any(Severity[sev.upper()] >= floor for sev in a.reached_s)
    ]
    # A revoked alarm was raised all the same (someone may have been paged): "never" sees it.
    candidates = [a for a in ours if not a.revoked]
    what = exp.label + (f" at {exp.severity} or worse" if exp.severity else "")
    seen = ", ".join(f"#{a.id} at {_fmt(reached(a))}" for a in candidates) or "none"
    ids = [a.id for a in candidates]
    if exp.never:
        if ours:
            raised = ", ".join(
                f"#{a.id} at {_fmt(reached(a))}{' (revoked)' if a.revoked else ''}" for a in ours
            )
            return ExpectationResult(
                exp, "fail", f"{what} must never be raised; raised: {raised}", [a.id for a in ours]
            )
        return ExpectationResult(exp, "pass", f"{what} never raised", [])
    if exp.count is not None and len(candidates) != exp.count:
        return ExpectationResult(
            exp, "fail", f"expected {exp.count} alarm(s) of {what}, got {len(candidates)}: {seen}", ids
        )
    matched: AlarmRecord | None = candidates[0] if candidates else None
    notes = [f"{len(candidates)} alarm(s) of {what}"] if exp.count is not None else []
    if exp.raised_within is None and len(candidates) > 1:
        notes.append(f"the first (#{candidates[0].id}) is checked")
    if exp.raised_within is not None:
        lo, hi = exp.raised_within
        inside = [a for a in candidates if lo <= reached(a) <= hi]
        if not inside:
            return ExpectationResult(
                exp, "fail", f"{what} not raised within [{_fmt(lo)}, {_fmt(hi)}]; raised: {seen}", ids
            )
        matched = inside[0]
        notes.append(f"raised at {_fmt(reached(matched))} (#{matched.id})")
    if matched is None:
        return ExpectationResult(exp, "pass", "; ".join(notes), ids)
    if exp.cleared_within is not None:
        lo, hi = exp.cleared_within
        if matched.cleared_s is None:
            return ExpectationResult(exp, "fail", f"alarm #{matched.id} never cleared", [matched.id])
        if not lo <= matched.cleared_s <= hi:
            return ExpectationResult(
                exp,
                "fail",
                f"alarm #{matched.id} cleared at {_fmt(matched.cleared_s)}, "
                f"not within [{_fmt(lo)}, {_fmt(hi)}]",
                [matched.id],
            )
        notes.append(f"cleared at {_fmt(matched.cleared_s)}")
    if exp.acknowledged is not None:
        acked = matched.acknowledged_by is not None
        if acked != exp.acknowledged:
            word = "acknowledged" if acked else "not acknowledged"
            return ExpectationResult(exp, "fail", f"alarm #{matched.id} is {word}", [matched.id])
        notes.append(f"acknowledged by {matched.acknowledged_by}" if acked else "not acknowledged")
    if exp.state is not None:
        if matched.state != exp.state:
            return ExpectationResult(
                exp, "fail", f"alarm #{matched.id} ends {matched.state}, expected {exp.state}", [matched.id]
            )
        notes.append(f"ends {matched.state}")
    if exp.late is not None:
        if matched.late != exp.late:
            word = "from late (backfilled) data" if matched.late else "from live data"
            return ExpectationResult(exp, "fail", f"alarm #{matched.id} was raised {word}", [matched.id])
        notes.append("from backfilled data" if matched.late else "from live data")
    return ExpectationResult(exp, "pass", "; ".join(notes), [matched.id])


def check_expectations(expectations: list[Expectation], alarms: list[AlarmRecord]) -> list[ExpectationResult]:
    """Judge every expectation against the alarms of a run."""
    return [_check_one(exp, alarms) for exp in expectations]


def choose_mode(streams: dict[str, DeviceStream], mode: EngineMode) -> Literal["reading", "batched"]:
    """The engine phase to use: batched needs every device's readings to arrive in order."""
    if mode == "reading":
        return "reading"
    in_order = all(s.in_order for s in streams.values())
    if mode == "batched" and not in_order:
        msg = "the batched engine needs readings that arrive in timestamp order; use --engine reading"
        raise ValueError(msg)
    return "batched" if in_order else "reading"


def run_scenario(
    loaded: LoadedScenario,
    *,
    mode: EngineMode = "auto",
    progress: Progress | None = None,
    streams: dict[str, DeviceStream] | None = None,
) -> ScenarioResult:
    """Replay one scenario in event time and judge its expectations."""
    from coldwatch.replay.batch import batched_events  # noqa: PLC0415 - the batch imports this module

    began = time.perf_counter()
    streams = build_streams(loaded.scenario) if streams is None else streams
    chosen = choose_mode(streams, mode)
    engine = _engine(loaded)
    if chosen == "batched":
        emitted = batched_events(loaded, streams, progress)
    else:
        emitted = engine_events(loaded, streams, progress)
    transitions, errors = _apply(loaded, emitted)
    alarms = alarm_records(transitions, loaded.scenario.start_us)
    results = check_expectations(loaded.scenario.expect, alarms)
    return ScenarioResult(
        loaded=loaded,
        mode="batched" if chosen == "batched" else "reading-by-reading",
        readings=sum(len(s) for s in streams.values()),
        elapsed_s=time.perf_counter() - began,
        alarms=alarms,
        results=results,
        transitions=transitions,
        streams=streams,
        limits=engine.limits(),
        errors=errors,
    )
