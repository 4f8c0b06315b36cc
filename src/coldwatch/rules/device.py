"""All the rules of one device: readings in timestamp order, late readings by rewind. Pure.

Readings normally arrive in timestamp order and are judged at once. A reading older
than the newest already judged (a late or backfilled one) makes the device rewind to
the last checkpoint before it and judge again, in timestamp order, everything since:
the alarm history is then the same whatever order the readings arrived in. Events
that the replay no longer produces are revoked; new ones are marked late.

The readings judged again come from the device's history: held here (``History``), or,
in the collector, read back from the database for each rewind with only the readings not
yet committed held here (``StoredHistory``, :mod:`coldwatch.rules.history`).
"""

from __future__ import annotations

import bisect
import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from coldwatch.rules.config import CommLossRule
from coldwatch.rules.history import History, StoredHistory
from coldwatch.rules.latch import Latch
from coldwatch.rules.lifecycle import Alarm
from coldwatch.rules.model import (
    US,
    AlarmEvent,
    AlarmKey,
    EngineReading,
    EventKind,
    RuleEvaluator,
    Severity,
)

__all__ = ["DeviceRules"]

DOOR_METRIC = "door_open"
CHECKPOINT_EVERY = 64
MAX_CHECKPOINTS = 32
# Readings kept for rewinding, whatever the horizon: memory per device stays bounded even
# when a device clock is stuck or a high rate meets a long horizon.
MAX_HISTORY = 4096


# A stateless evaluator's pre-check: True when ``update`` would return no signal or one
# without a level (see ThresholdEvaluator.calm).
Calm = Callable[[Mapping[str, float]], bool]


@dataclass(slots=True)
class _Judged:
    """The part of a device's state that is a function of its readings (checkpointed)."""

    evaluators: list[RuleEvaluator]
    latches: list[Latch]
    # Per evaluator, fixed at build and shared by every copy of the state: whether it is
    # stateless (``update`` changes nothing, a copy shares it) and its ``calm`` pre-check
    # if it is and has one.
    stateless: list[bool]
    calm: list[Calm | None]
    door_open: bool = False
    door_closed_us: int | None = None
    # (evaluator, latch, calm) of each rule, in order: what judging a reading walks through.
    rules: list[tuple[RuleEvaluator, Latch, Calm | None]] = field(init=False, repr=False)
    # The screen: the ``calm`` pre-checks of the stateless rules that have one, and the
    # other rules, in order. While every screened rule's alarm is idle (``quiet``) and a
    # reading passes every check, judging it walks only the other rules: the screened
    # ones would be skipped one by one, each touching its own latch (a cache miss apiece
    # among thousands of devices). ``quiet`` is only ever set by a full walk that found
    # those alarms idle (``_judge``); anything else that changes a latch clears it.
    screen: _Screen = field(init=False, repr=False)
    unscreened: list[tuple[RuleEvaluator, Latch, Calm | None]] = field(init=False, repr=False)
    screened_latches: tuple[Latch, ...] = field(init=False, repr=False)
    quiet: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        self.rules = list(zip(self.evaluators, self.latches, self.calm, strict=True))
        self.screen = _screen(tuple(ev for ev, _, calm in self.rules if calm is not None))
        self.unscreened = [rule for rule in self.rules if rule[2] is None]
        self.screened_latches = tuple(latch for _, latch, calm in self.rules if calm is not None)
        self.quiet = False

    def passes_screen(self, values: Mapping[str, float]) -> bool:
        """Whether every screened rule is calm at ``values`` (their alarms being idle, nothing to do)."""
        ranges, pairs, checks = self.screen
        get = values.get
        for metric, low, high in ranges:
            value = get(metric)
            if value is not None and not low <= value <= high:
                return False
        for metric, other, bound in pairs:
            a, b = get(metric), get(other)
            if a is not None and b is not None and not abs(a - b) <= bound:
                return False
        for calm in checks:  # noqa: SIM110 - a loop: all() of a generator costs more, every reading
            if not calm(values):
                return False
        return True

    def screened_idle(self) -> bool:
        """Whether every screened rule's alarm is idle, nothing pending."""
        for latch in self.screened_latches:  # noqa: SIM110 - as above
            if latch.active is not None or latch.run_start:
                return False
        return True

    @classmethod
    def of(cls, evaluators: list[RuleEvaluator], latches: list[Latch]) -> _Judged:
        """The state of no readings, with these evaluators and their latches."""
        stateless = [bool(getattr(ev, "stateless", False)) for ev in evaluators]
        calm: list[Calm | None] = [
            getattr(ev, "calm", None) if shared else None
            for ev, shared in zip(evaluators, stateless, strict=True)
        ]
        return cls(evaluators, latches, stateless, calm)

    def save(self) -> _Saved:
        """What a checkpoint keeps of this state: only what readings change, compactly.

        A device holds a checkpoint every CHECKPOINT_EVERY readings for the whole reorder
        horizon, so an idle latch is kept as None and all-idle latches as ``()``; stateless
        evaluators, and a latch's key and delays, are never written and stay shared. A
        windowed evaluator keeps its window on an append-only tape and is saved as a
        small token (indices and running sums, :mod:`coldwatch.rules.tape`): a checkpoint
        costs the same whatever the window length. Any other evaluator with state is
        copied (``copy.deepcopy``).
        """
        evaluators: tuple[object, ...] = ()
        if not all(self.stateless):
            evaluators = tuple(
                None if shared else _token(ev)
                for ev, shared in zip(self.evaluators, self.stateless, strict=True)
            )
        latches = tuple(
            None
            if latch.active is None and not latch.run_start
            else (latch.active, tuple(latch.run_start.items()))
            for latch in self.latches
        )
        if not any(latches):
            latches = ()
        return _Saved(evaluators, latches, self.door_open, self.door_closed_us)

    def restore(self, saved: _Saved) -> _Judged:
        """A state of the same rules as this one, as ``saved`` (left as it is, for a later rewind)."""
        evaluators = self.evaluators
        if saved.evaluators:
            # A tape-backed evaluator goes back in place: the checkpoints after ``saved``
            # are dropped by the rewind, and those before it only need the tape's prefix.
            evaluators = [
                _rolled_back(live, kept) for live, kept in zip(self.evaluators, saved.evaluators, strict=True)
            ]
        latches = [Latch(latch.key, latch.delays_us) for latch in self.latches]
        for latch, kept in zip(latches, saved.latches, strict=False):  # () when all idle
            if kept is not None:
                latch.active, run_start = kept
                latch.run_start.update(run_start)
        return _Judged(
            list(evaluators), latches, self.stateless, self.calm, saved.door_open, saved.door_closed_us
        )

    def forget(self, saved: _Saved) -> None:
        """Let the tape-backed evaluators drop what no state from ``saved`` on can need."""
        for live, kept in zip(self.evaluators, saved.evaluators, strict=False):  # () when none
            if isinstance(kept, _Token):
                live.forget(kept.state)  # type: ignore[attr-defined]


# A screen: per metric, the range its value must be in (absent counts as in); pairs of
# metrics whose difference must be within a bound (either absent counts as within); and
# the ``calm`` checks that are neither.
_Screen = tuple[tuple[tuple[str, float, float], ...], tuple[tuple[str, str, float], ...], tuple[Calm, ...]]


@functools.lru_cache(maxsize=256)
def _screen(screened: tuple[RuleEvaluator, ...]) -> _Screen:
    """The screen of these (stateless) rules with a ``calm`` check, ranges of one metric intersected.

    An evaluator's ``calm_range`` (metric, lo, hi) says its ``calm`` is true exactly when
    the metric is absent or lo <= value <= hi; both checks of a metric pass exactly when
    its value is in the intersection of their (closed) ranges. An evaluator's ``calm_pair``
    (metric, other, bound) says its ``calm`` is true exactly when either is absent or
    ``abs(metric - other) <= bound``. Stateless evaluators are
    shared by every device of a profile, and so is their screen (one object, warm in the
    cache, not one per device and checkpoint).
    """
    ranges: dict[str, tuple[float, float]] = {}
    pairs: list[tuple[str, str, float]] = []
    checks: list[Calm] = []
    for evaluator in screened:
        calm_range: tuple[str, float, float] | None = getattr(evaluator, "calm_range", None)
        if calm_range is None:
            calm_pair: tuple[str, str, float] | None = getattr(evaluator, "calm_pair", None)
            if calm_pair is None:
                checks.append(evaluator.calm)  # type: ignore[attr-defined]
            else:
                pairs.append(calm_pair)
            continue
        metric, low, high = calm_range
        if metric in ranges:
            low, high = max(low, ranges[metric][0]), min(high, ranges[metric][1])
        ranges[metric] = (low, high)
    return tuple((metric, low, high) for metric, (low, high) in ranges.items()), tuple(pairs), tuple(checks)


@dataclass(frozen=True, slots=True)
class _Token:
    """A tape-backed evaluator's checkpoint (see :mod:`coldwatch.rules.tape`)."""

    state: object


def _token(evaluator: RuleEvaluator) -> object:
    checkpoint = getattr(evaluator, "checkpoint", None)
    if checkpoint is not None:
        return _Token(checkpoint())
    return copy.deepcopy(evaluator)


def _rolled_back(live: RuleEvaluator, kept: object) -> RuleEvaluator:
    if kept is None:
        return live
    if isinstance(kept, _Token):
        live.rollback(kept.state)  # type: ignore[attr-defined]
        return live
    copied: RuleEvaluator = copy.deepcopy(kept)  # type: ignore[assignment]
    return copied


@dataclass(frozen=True, slots=True)
class _Saved:
    """A checkpointed :class:`_Judged` (see ``_Judged.save``)."""

    # Per evaluator: None (stateless), a _Token, or a copy; () if none has state.
    evaluators: tuple[object, ...]
    latches: tuple[tuple[Severity | None, tuple[tuple[Severity, int], ...]] | None, ...]  # None: idle
    door_open: bool
    door_closed_us: int | None


@dataclass(slots=True)
class _CommLoss:
    spec: CommLossRule
    key: AlarmKey
    timeout_us: int
    raised_us: int | None = None
    cleared_us: int | None = None  # silence is measured from a clear too: a backfill ended it
    arrived_us: int | None = None  # the latest arrival of a reading this rule watches


def _position(reading: EngineReading) -> tuple[int, int]:
    return reading.ts_us, reading.seq


def _difference(
    old: list[AlarmEvent], new: list[AlarmEvent], before: dict[AlarmKey, Severity | None]
) -> list[AlarmEvent]:
    """What to tell the world when ``new`` replaces ``old`` after a rewind.

    Per alarm key, the events after the first difference are revoked (newest first, each
    carrying the severity the alarm falls back to, None if it did not exist) and the new
    ones issued, marked late.
    """
    out: list[AlarmEvent] = []
    for key in sorted({e.key for e in old} | {e.key for e in new}):
        old_k = [e for e in old if e.key == key]
        new_k = [e for e in new if e.key == key]
        same = 0
        while same < min(len(old_k), len(new_k)) and old_k[same].identity() == new_k[same].identity():
            same += 1
        for index in range(len(old_k) - 1, same - 1, -1):
            previous = old_k[index - 1].severity if index > 0 else before.get(key)
            out.append(
                AlarmEvent(
                    EventKind.REVOKED,
                    key,
                    old_k[index].ts_us,
                    previous,
                    late=True,
                    detail="late readings changed this",
                    revokes=old_k[index],
                )
            )
        out += [replace(e, late=True) for e in new_k[same:]]
    return out


@dataclass(slots=True)
class DeviceRules:
    """Rule state of one device."""

    device_id: str
    judged: _Judged
    comm: list[_CommLoss]
    door_recovery_us: int
    horizon_us: int
    started_us: int
    history: History = field(default_factory=lambda: History(""))
    # The history kept in the database instead (None: kept in ``history``, in memory).
    stored: StoredHistory | None = None
    # (ts, seq, history length at the time (the readings counted, with the history stored),
    #  state before the readings after it; None: fresh)
    checkpoints: list[tuple[int, int, int, _Saved | None]] = field(default_factory=list)
    # Builds the state of no readings at all: the first checkpoint, without a copy per device.
    fresh: Callable[[], _Judged] | None = None
    emitted: list[AlarmEvent] = field(default_factory=list)
    offline: bool = False
    too_late: int = 0
    newest: tuple[int, int] | None = None  # (ts, seq) judged last, without a reorder horizon
    fingerprint: str = ""  # of the rules and settings (coldwatch.rules.snapshot.fingerprint)
    unforgotten: int = 0  # readings judged since the windows last dropped their past (no horizon)
    # Restored from a snapshot at this (ts, seq): nothing at or before it is judged again.
    floor: tuple[int, int] | None = None
    # For snapshots (coldwatch.rules.snapshot): readings judged since the last, whether a
    # late reading rewound the state since, and the position of the last.
    since_snapshot: int = 0
    rewound: bool = False
    snapshot_at: tuple[int, int] | None = None
    # The last reading was one judged before (a copy): not to be stored again (Engine.took_copy).
    copied: bool = False

    @classmethod
    def build(
        cls,
        device_id: str,
        evaluators: Sequence[Callable[[], RuleEvaluator]],
        comm_rules: list[CommLossRule],
        *,
        door_recovery_s: float,
        horizon_s: float,
        started_us: int,
        stored_history: bool = False,
    ) -> DeviceRules:
        """Rules of one device, fresh; ``evaluators`` make each rule's evaluator in its initial state."""
        comm = [
            _CommLoss(r, AlarmKey(device_id, r.metric or "device", r.rule_id()), round(r.timeout_s * US))
            for r in comm_rules
        ]

        def fresh() -> _Judged:
            judged = [factory() for factory in evaluators]
            # A latch only reads its delays: it shares the evaluator's.
            latches = [Latch(AlarmKey(device_id, ev.metric, ev.rule), ev.delays_us) for ev in judged]
            return _Judged.of(judged, latches)

        rules = cls(
            device_id,
            fresh(),
            comm,
            round(door_recovery_s * US),
            round(horizon_s * US),
            started_us,
            history=History(device_id),
            fresh=fresh,
            stored=StoredHistory() if stored_history and horizon_s > 0 else None,
        )
        if rules.horizon_us > 0:
            rules.checkpoints.append((-(2**63), -1, 0, None))
        return rules

    # --- readings ------------------------------------------------------------------

    def ingest(self, reading: EngineReading) -> list[AlarmEvent]:
        """Judge one reading (rewinding if it is older than the newest judged)."""
        # Communication loss is about arrival, not device time: it is never replayed.
        comm_events = self._comm_on_reading(reading)
        self.since_snapshot += 1
        if self.horizon_us == 0:
            position = (reading.ts_us, reading.seq)
            # No reorder horizon: readings at or behind the newest are not judged again.
            if self.newest is not None and position <= self.newest:
                self.too_late += 1
                return comm_events
            self.newest = position
            self.unforgotten += 1
            if self.unforgotten >= CHECKPOINT_EVERY:
                # Nothing is ever rewound: the windows keep only what they still hold.
                self.unforgotten = 0
                self.judged.forget(self.judged.save())
            return comm_events + self._judge(self.judged, reading, late=reading.buffered)
        stored = self.stored
        if stored is None:
            if self.history.is_after_newest(reading.ts_us, reading.seq, self.floor):
                events = self._judge(self.judged, reading, late=reading.buffered)
                self._remember(reading, events)
            else:
                events = self._rewind(reading)
        elif stored.is_after_newest(reading.ts_us, reading.seq, self.floor):
            events = self._judge(self.judged, reading, late=reading.buffered)
            stored.pend(reading)
            self._remember(reading, events)
        else:
            events = self._rewind_stored(reading)
        if comm_events:
            return comm_events + events
        return events

    def _judge(self, state: _Judged, reading: EngineReading, *, late: bool) -> list[AlarmEvent]:
        ts = reading.ts_us
        values = reading.values
        door = values.get(DOOR_METRIC)
        if door is not None:
            is_open = door >= 0.5
            if state.door_open and not is_open:
                state.door_closed_us = ts
            state.door_open = is_open
        suppressed = state.door_open or (
            state.door_closed_us is not None and ts - state.door_closed_us < self.door_recovery_us
        )
        if state.quiet and state.passes_screen(values):
            return self._walk(state.unscreened, ts, values, suppressed=suppressed, late=late)
        events = self._walk(state.rules, ts, values, suppressed=suppressed, late=late)
        state.quiet = state.screened_idle()
        return events

    @staticmethod
    def _walk(
        rules: list[tuple[RuleEvaluator, Latch, Calm | None]],
        ts: int,
        values: Mapping[str, float],
        *,
        suppressed: bool,
        late: bool,
    ) -> list[AlarmEvent]:
        """Judge a reading by ``rules``, in order."""
        events: list[AlarmEvent] = []
        for evaluator, latch, calm in rules:
            idle = latch.active is None
            if idle and calm is not None and not latch.run_start and calm(values):
                # The common case: fed a signal without a level, an idle latch stays idle.
                continue
            signal = evaluator.update(ts, values)
            if signal is None:
                continue
            if idle and (signal.level is None or (suppressed and evaluator.suppressible)):
                # No level met, or held during recovery (nothing is raised; an alarm already
                # open stays): an idle latch stays idle and its pending runs end, as
                # ``Latch.feed`` of a signal without a level does, without the call.
                if latch.run_start:
                    latch.run_start.clear()
                continue
            events += latch.feed(ts, signal, late=late)
        return events

    def _remember(self, reading: EngineReading, events: list[AlarmEvent]) -> None:
        if self.horizon_us == 0:
            return
        held = self.history.append(reading) if self.stored is None else self.stored.judged(reading)
        if events:
            self.emitted += events
        last_cp_ts, _, last_cp_len, _ = self.checkpoints[-1]
        # Checkpoints cost a copy of the rule state: take one every CHECKPOINT_EVERY readings
        # and at most every 1/16 of the horizon, so a fast device is not copying all day.
        # A stuck device clock never moves time on: bound the history by count as well.
        since_checkpoint = held - last_cp_len
        if since_checkpoint >= CHECKPOINT_EVERY and (
            reading.ts_us - last_cp_ts >= self.horizon_us // 16 or since_checkpoint >= CHECKPOINT_EVERY * 8
        ):
            self.checkpoints.append((reading.ts_us, reading.seq, held, self.judged.save()))
            self._trim(reading.ts_us, held)

    def _trim(self, newest: int, held: int) -> None:
        """Forget what the horizon no longer needs.

        ``newest``: the time of the reading remembered last (in a replay too); ``held``: the
        readings counted then.
        """
        stored = self.stored
        # Keep the newest checkpoint at or before the horizon, and everything after it.
        keep_from = 0
        for index, (ts, _, _, _) in enumerate(self.checkpoints):
            if ts <= newest - self.horizon_us:
                keep_from = index
        # Bounded by count too: a stuck or jumping device clock must not grow memory.
        keep_from = max(keep_from, len(self.checkpoints) - MAX_CHECKPOINTS)
        while keep_from < len(self.checkpoints) - 1 and held - self.checkpoints[keep_from][2] > MAX_HISTORY:
            keep_from += 1
        if keep_from == 0:
            return
        oldest = self.checkpoints[keep_from][3]
        if oldest is not None:
            self.judged.forget(oldest)
        first_ts, first_seq, drop, _ = self.checkpoints[keep_from]
        if stored is None:
            self.checkpoints = [(ts, seq, n - drop, st) for ts, seq, n, st in self.checkpoints[keep_from:]]
            self.history.drop_front(drop)
        else:  # the counts stay as they are: nothing is held to drop but pending readings
            self.checkpoints = self.checkpoints[keep_from:]
            stored.forget_before((first_ts, first_seq))
        self.emitted = [e for e in self.emitted if e.ts_us > first_ts]

    def _rewind(self, reading: EngineReading) -> list[AlarmEvent]:
        position = (reading.ts_us, reading.seq)
        index = self.history.bisect_left(*position)
        if index < len(self.history) and self.history.key(index) == position:
            self.copied = True
            return []  # the same reading again: already judged
        earlier = [i for i, cp in enumerate(self.checkpoints) if cp[:2] < position]
        if not earlier:
            self.too_late += 1  # older than the reorder horizon: stored, not re-judged
            return []
        base = earlier[-1]
        self.rewound = True
        cp_len = self.checkpoints[base][2]
        self.history.insert(index, reading)
        replay = self.history.readings(cp_len)
        # What each alarm was at the checkpoint: the severity a revocation falls back to.
        old, before = self._back_to(base)
        self.history.truncate(cp_len)
        return self._replay(replay, old, before)

    def stored_from(self, ts_us: int, seq: int) -> tuple[int, int] | None:
        """Where the readings read back must start for the reading at (``ts_us``, ``seq``).

        None when none are needed: the history is in memory, the reading goes after the
        newest, it is a pending reading again, or it is too late to be judged again.
        """
        stored = self.stored
        position = (ts_us, seq)
        if stored is None or stored.is_after_newest(ts_us, seq, self.floor) or stored.is_copy(position):
            return None
        earlier = [cp[:2] for cp in self.checkpoints if cp[:2] < position]
        return earlier[-1] if earlier else None

    def _rewind_stored(self, reading: EngineReading) -> list[AlarmEvent]:
        """:meth:`_rewind` with the history in the database (read back and given first)."""
        stored = self.stored
        assert stored is not None
        position = (reading.ts_us, reading.seq)
        if stored.is_copy(position):
            self.copied = True
            return []  # the same reading again, not yet committed (or judged at a restart)
        earlier = [i for i, cp in enumerate(self.checkpoints) if cp[:2] < position]
        if not earlier:
            self.too_late += 1  # older than the reorder horizon: stored, not re-judged
            return []
        base = earlier[-1]
        cp_ts, cp_seq, cp_count, _ = self.checkpoints[base]
        replay = stored.since((cp_ts, cp_seq))
        if any((r.ts_us, r.seq) == position for r in replay):
            self.copied = True
            return []  # the same reading again, committed: already judged
        self.rewound = True
        stored.pend(reading)
        bisect.insort(replay, reading, key=_position)
        old, before = self._back_to(base)
        stored.count = cp_count
        return self._replay(replay, old, before)

    def _back_to(self, base: int) -> tuple[list[AlarmEvent], dict[AlarmKey, Severity | None]]:
        """Return to checkpoint ``base``: the events since it, and each alarm's severity at it."""
        cp_ts, _, _, cp_state = self.checkpoints[base]
        old = [e for e in self.emitted if e.ts_us > cp_ts]
        self.checkpoints = self.checkpoints[: base + 1]
        if cp_state is None:
            assert self.fresh is not None
            self.judged = self.fresh()
        else:
            self.judged = self.judged.restore(cp_state)
        before: dict[AlarmKey, Severity | None] = {
            latch.key: latch.active
            for latch in self.judged.latches  # None in a fresh state
        }
        self.emitted = [e for e in self.emitted if e.ts_us <= cp_ts]
        return old, before

    def _replay(
        self, replay: list[EngineReading], old: list[AlarmEvent], before: dict[AlarmKey, Severity | None]
    ) -> list[AlarmEvent]:
        """Judge ``replay`` again from the checkpoint returned to; what changed since ``old``."""
        new: list[AlarmEvent] = []
        for again in replay:
            produced = self._judge(self.judged, again, late=True)
            new += produced
            self._remember(again, produced)
        return _difference(old, new, before)

    # --- communication loss ---------------------------------------------------------

    def _comm_on_reading(self, reading: EngineReading) -> list[AlarmEvent]:
        # Silence is timed by arrival (the collector's clock), not by the device's clock,
        # which may be slow or fast; a reading without a receipt time counts at its own.
        arrived = reading.received_us or reading.ts_us
        self.offline = False
        events: list[AlarmEvent] = []
        for comm in self.comm:
            metric = comm.spec.metric
            carried = metric is None or metric in reading.values
            # (A metric named "" is timed by every reading, as the device is, but never cleared.)
            if (carried or not metric) and (comm.arrived_us is None or arrived > comm.arrived_us):
                comm.arrived_us = arrived
            if comm.raised_us is not None and carried:
                cleared = max(arrived, comm.raised_us)
                events.append(AlarmEvent(EventKind.CLEARED, comm.key, cleared, None, late=reading.buffered))
                comm.raised_us = None
                comm.cleared_us = cleared
        return events

    def status(self, online: bool, at_us: int) -> list[AlarmEvent]:
        """A retained status: ``offline`` (or the device's last will) raises communication loss."""
        self.offline = not online
        events = []
        if not online:
            for comm in self.comm:
                if comm.raised_us is None and comm.spec.metric is None:
                    comm.raised_us = at_us
                    events.append(self._comm_event(comm, at_us, "device reported offline"))
        return events

    def advance(self, now_us: int) -> list[AlarmEvent]:
        """Raise communication loss for silence that has lasted its timeout by ``now_us``."""
        events = []
        for comm in self.comm:
            if comm.raised_us is not None:
                continue
            # Never before the collector started: after a restart its backlog arrives first.
            last = self.started_us if comm.arrived_us is None else max(comm.arrived_us, self.started_us)
            if comm.cleared_us is not None:
                last = max(last, comm.cleared_us)
            due = last + comm.timeout_us
            if now_us >= due:
                comm.raised_us = due
                events.append(self._comm_event(comm, due, f"no reading for {comm.spec.timeout_s:g} s"))
        return events

    def _comm_event(self, comm: _CommLoss, at_us: int, detail: str) -> AlarmEvent:
        return AlarmEvent(
            EventKind.RAISED,
            comm.key,
            at_us,
            Severity.ACTION if comm.spec.severity == "action" else Severity.ALERT,
            detail=detail,
        )

    def restore_at(self, judged: _Judged, position: tuple[int, int]) -> None:
        """Take ``judged`` as the state after every reading up to ``position`` (a snapshot).

        Nothing at or before ``position`` is judged again: such a reading is a duplicate
        or too late, as it would be to the rules that wrote the snapshot.
        """
        self.judged = judged
        self.history.truncate(0)
        if self.stored is not None:
            self.stored.reset(None)
        self.emitted = []
        self.floor = self.snapshot_at = position
        self.since_snapshot = 0
        self.rewound = False
        if self.horizon_us > 0:
            self.checkpoints = [(position[0], position[1], 0, judged.save())]
        else:
            self.newest = position

    def position(self) -> tuple[int, int] | None:
        """(ts, seq) of the newest reading judged (None: none yet)."""
        if self.horizon_us == 0:
            return self.newest
        if self.stored is not None:
            return self.stored.newest or self.floor
        return self.history.key(-1) if len(self.history) else self.floor

    def alarm_keys(self) -> list[AlarmKey]:
        """The alarm keys of this device's rules."""
        return [latch.key for latch in self.judged.latches] + [comm.key for comm in self.comm]

    def reconcile(self, active: list[Alarm]) -> None:
        """Take the stored active alarms as the truth, and checkpoint here (after a restart)."""
        stored = {alarm.key: alarm for alarm in active}
        self.judged.quiet = False  # latches change here: the next reading walks every rule
        for latch in self.judged.latches:
            alarm = stored.get(latch.key)
            if alarm is not None and self.floor is not None and latch.active == alarm.severity:
                continue  # restored exactly from a snapshot, and agreeing: pending runs kept
            if alarm is not None:
                latch.active = None
                latch.run_start = {sev: s for sev, s in latch.run_start.items() if sev > alarm.severity}
                latch.seed(alarm.severity, alarm.raised_ts_us)
            elif latch.active is not None:
                # Raised by the replay but never stored: judge afresh from the next reading.
                latch.active = None
                latch.run_start.clear()
        for comm in self.comm:
            alarm = stored.get(comm.key)
            comm.raised_us = alarm.raised_ts_us if alarm is not None else None
            comm.cleared_us = None
        self.emitted = []
        if self.horizon_us > 0:
            # Late readings older than this point are not judged again: the replay before
            # it could not know everything the live run knew.
            last = self.position() or (-(2**63), -1)
            if self.stored is not None:
                # Every reading judged so far came from the database (the restart's replay).
                self.stored.reconciled()
            held = len(self.history) if self.stored is None else self.stored.count
            self.checkpoints = [(last[0], last[1], held, self.judged.save())]
        elif len(self.history):
            self.newest = self.history.key(-1)
