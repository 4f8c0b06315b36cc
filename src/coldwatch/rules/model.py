"""Values that flow through the rules engine. Pure data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "AlarmEvent",
    "AlarmKey",
    "EngineReading",
    "EventKind",
    "RuleEvaluator",
    "Severity",
    "Signal",
]

US = 1_000_000


class Severity(enum.IntEnum):
    """How bad an excursion is. Action is the regulatory limit; alert warns before it."""

    ALERT = 1
    ACTION = 2

    @property
    def label(self) -> str:
        """Lower-case name, as used in metrics and storage."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class EngineReading:
    """One device reading as the engine sees it: validated values at a device timestamp."""

    device_id: str
    ts_us: int
    values: Mapping[str, float]
    seq: int = 0
    buffered: bool = False
    received_us: int = 0


class Signal(NamedTuple):
    """A rule's verdict at one instant: which severity its condition meets, if any.

    A named tuple, not a frozen dataclass: every rule builds one at nearly every reading,
    and a tuple is built several times faster (immutable all the same).
    """

    level: Severity | None
    value: float | None = None  # the quantity judged (the reading, a rate, an MKT, ...)
    limit: float | None = None  # the limit it was judged against
    # The highest severity an alarm that is already raised keeps (hysteresis: within the
    # off-margin). None: the same as ``level``. Never applies to a pending condition.
    hold: Severity | None = None
    hold_given: bool = False

    @staticmethod
    def with_hold(
        level: Severity | None, hold: Severity | None, value: float | None, limit: float | None
    ) -> Signal:
        """A signal whose raised alarm clears only at ``hold`` (off-margin)."""
        return Signal(level, value, limit, hold, hold_given=True)

    def keeps(self) -> Severity | None:
        """The severity a raised alarm keeps at this instant."""
        return self.hold if self.hold_given else self.level


@dataclass(frozen=True, slots=True, order=True)
class AlarmKey:
    """One alarm slot: at most one open alarm per device, metric and rule."""

    device_id: str
    metric: str
    rule: str

    def __str__(self) -> str:
        return f"{self.device_id}/{self.metric}/{self.rule}"


class EventKind(enum.StrEnum):
    """What happened to an alarm."""

    RAISED = "raised"
    SEVERITY_CHANGED = "severity_changed"
    CLEARED = "cleared"
    # Late data showed that an event reported earlier did not happen as reported.
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A change of an alarm, stamped in device (event) time."""

    kind: EventKind
    key: AlarmKey
    ts_us: int
    severity: Severity | None
    value: float | None = None
    limit: float | None = None
    late: bool = False  # found in backfilled or late-arriving data
    detail: str = ""
    revokes: AlarmEvent | None = field(default=None, compare=False)

    def identity(self) -> tuple[str, AlarmKey, int, int]:
        """What makes two events the same event (ignoring lateness and detail)."""
        return (self.kind.value, self.key, self.ts_us, int(self.severity or 0))


class RuleEvaluator(Protocol):
    """One rule on one device. Sees the device's readings in timestamp order.

    ``update`` returns the rule's signal at that reading's time, or None when the
    reading carries nothing this rule judges (for example another metric). State must be
    plain data so that ``copy.deepcopy`` can checkpoint it, unless the evaluator has
    ``checkpoint``/``rollback``/``forget`` (:class:`coldwatch.rules.tape.Checkpointed`):
    then a checkpoint is the small token it returns (the windowed rules do this).

    Optionally, an evaluator whose ``update`` changes nothing has ``stateless = True``
    (one instance serves every device; checkpoints share it), and then may have
    ``calm(values) -> bool``: True only when ``update`` would return None or a signal
    without a level. The device skips both ``update`` and the latch for such a reading
    while the rule's alarm is idle (the common case): no signal is built for it.
    """

    rule: str
    metric: str
    delays_us: dict[Severity, int]
    suppressible: bool  # held during the recovery time after a door closes

    def update(self, ts_us: int, values: Mapping[str, float]) -> Signal | None:
        """Judge the reading at ``ts_us``."""
        ...
