"""Append-only window storage: a checkpoint of a windowed rule is a few numbers. Pure.

A windowed rule keeps the readings (or spans) of its window. Copying them at every
checkpoint made a checkpoint cost the window's length: a 24-hour window at 10 s is 8,640
points, copied every 64 readings for every device. Here a rule appends its points to a
:class:`Tape`, never changes one in place, and marks where its window starts with an
index. Judging in timestamp order only appends and moves the start forward, so the
points between a checkpoint's start and its end are still on the tape, unchanged,
whatever was judged after it. A checkpoint is therefore (end, start, running sums):
a small tuple whatever the window length. A rewind cuts the tape back to the
checkpoint's end (``truncate``) and restores its numbers; judging again appends anew.

Indices are absolute (counted from the first point ever appended): ``forget`` drops the
points before a given index (the start of the oldest checkpoint still kept) without
changing any index, so memory follows the window plus the reorder horizon.
"""

from __future__ import annotations

import copy
from array import array
from typing import Any, Protocol, Self

__all__ = ["Checkpointed", "Renewable", "Snapshotted", "Tape", "tapes_restore", "tapes_snapshot"]


class Checkpointed(Protocol):
    """A rule evaluator whose state is saved and restored as a small token.

    ``checkpoint`` returns an immutable token of the current state; ``rollback`` puts
    the evaluator back in the state of a token taken earlier (on the same evaluator,
    not since rolled back past); ``forget`` lets it drop what no token at or after the
    given one can need.
    """

    def checkpoint(self) -> object:
        """The state now, as a small immutable token."""
        ...

    def rollback(self, token: object) -> None:
        """Return to the state of ``token``."""
        ...

    def forget(self, token: object) -> None:
        """Drop what only states before ``token`` needed."""
        ...


class Snapshotted(Checkpointed, Protocol):
    """A checkpointed evaluator whose whole state can be written out and read back.

    ``snapshot`` returns plain data (ints, floats, None, strings, bytes, lists) from
    which ``restore_snapshot`` on a fresh evaluator of the same rule rebuilds the state
    exactly: the windows' points (raw bytes of their tapes) and the running sums.
    """

    def snapshot(self) -> list[object]:
        """The whole state as plain data."""
        ...

    def restore_snapshot(self, state: list[object]) -> None:
        """Take the state of a :meth:`snapshot` (on a fresh evaluator)."""
        ...


class Renewable:
    """A windowed evaluator whose settings are shared by every device of a rule.

    The engine builds one per rule of a profile and makes each device's by ``fresh``: a
    shallow copy (levels, delays and limits shared, never changed after ``__init__``)
    given state of its own by ``_reset`` (tapes, heads, running sums), as ``__init__``
    left it. Ten thousand devices then hold one copy of each rule's settings, and a
    reading touches fewer objects of its device. Subclasses have slots, no instance
    dictionary, for the same reason.
    """

    __slots__ = ()

    def _reset(self) -> None:
        """Give this evaluator the state of no readings (its own tapes and numbers)."""
        raise NotImplementedError

    def fresh(self) -> Self:
        """An evaluator of the same rule in the state of no readings, sharing this one's settings."""
        other = copy.copy(self)
        other._reset()  # noqa: SLF001 - the same class
        return other


def tapes_snapshot(token: object, kept: list[tuple[Tape, int]], extra: object = None) -> list[object]:
    """A snapshot of an evaluator: its checkpoint token, each tape from its kept index, extra data."""
    return [token, [list(tape.export(start)) for tape, start in kept], extra]


def tapes_restore(tapes: list[Tape], state: list[object]) -> tuple[object, object]:
    """Load the tapes of a :func:`tapes_snapshot`; its (token, extra)."""
    token, exported, extra = state
    assert isinstance(exported, list)
    for tape, (start, blobs) in zip(tapes, exported, strict=True):
        tape.load(start, blobs)
    return token, extra


class Tape:
    """Columns of equal length (typed arrays), appended to and cut back, with absolute indices."""

    __slots__ = ("base", "columns")

    def __init__(self, *columns: array[Any]) -> None:
        self.columns = columns  # empty typed arrays, kept by their owner too (never replaced)
        self.base = 0  # absolute index of the first point still held

    @property
    def end(self) -> int:
        """Absolute index after the newest point."""
        return self.base + len(self.columns[0])

    def truncate(self, end: int) -> None:
        """Cut back to the first ``end`` points (absolute)."""
        cut = end - self.base
        for column in self.columns:
            del column[cut:]

    def forget(self, before: int) -> None:
        """Drop the points before absolute index ``before`` (no index changes)."""
        drop = before - self.base
        if drop <= 0:
            return
        for column in self.columns:
            del column[:drop]
        self.base = before

    def export(self, start: int) -> tuple[int, list[bytes]]:
        """The points from absolute index ``start`` on, as raw bytes per column (a snapshot)."""
        start = max(start, self.base)
        cut = start - self.base
        return start, [column[cut:].tobytes() for column in self.columns]

    def load(self, start: int, blobs: list[bytes]) -> None:
        """Hold exactly the points of an :meth:`export` (this tape's columns, same types)."""
        for column, blob in zip(self.columns, blobs, strict=True):
            del column[:]
            column.frombytes(blob)
        self.base = start
