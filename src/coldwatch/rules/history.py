"""One device's recent readings, packed in arrays for rewinding: the memory of late data. Pure.

A reading kept as objects (a dict of floats in a frozen dataclass in a tuple) cost about
470 bytes. Here it costs its numbers: the timestamp (8 bytes), the sequence number (4,
or 8 once one needs it) and 8 a value, in typed arrays that grow by about 1/16, with no
object kept per reading: an incubator's (four values) takes about 47 bytes. A reading is
kept only to be judged again, so what judging does not read is not kept: its arrival
time (communication loss is never replayed) and its buffered flag (a reading judged
again is late whatever it was). Values absent from a reading are NaN (a reading never
carries NaN: the payload contract rejects it).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Mapping

from coldwatch.rules.model import EngineReading

__all__ = ["History", "StoredHistory"]

_ABSENT = math.nan


class History:
    """Readings in (timestamp, seq) order, as :class:`EngineReading` on the way out."""

    __slots__ = ("_device_id", "_names", "_seq", "_ts", "_values")

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._ts = array("q")
        # 32-bit until a sequence number does not fit (then 64-bit for good).
        self._seq = array("i")
        # The metrics in the order first seen, and each reading's values in that order, one
        # row after another (a row is appended by one C call).
        self._names: tuple[str, ...] = ()
        self._values = array("d")

    def __len__(self) -> int:
        return len(self._ts)

    def key(self, index: int) -> tuple[int, int]:
        """(timestamp, seq) of reading ``index`` (negative counts from the end)."""
        return self._ts[index], self._seq[index]

    def is_after_newest(self, ts_us: int, seq: int, floor: tuple[int, int] | None = None) -> bool:
        """Whether a reading at (``ts_us``, ``seq``) goes after every reading kept.

        With none kept: whether it goes after ``floor`` (None: there is no floor).
        """
        ts = self._ts
        if not ts:
            return floor is None or (ts_us, seq) > floor
        newest = ts[-1]
        return ts_us > newest or (ts_us == newest and seq > self._seq[-1])

    def bisect_left(self, ts_us: int, seq: int) -> int:
        """Where a reading at (``ts_us``, ``seq``) goes, before any equal one."""
        ts = self._ts
        n = len(ts)
        index = bisect_left(ts, ts_us)
        while index < n and ts[index] == ts_us and self._seq[index] < seq:
            index += 1
        return index

    def append(self, reading: EngineReading) -> int:
        """Add the newest reading; the number of readings held."""
        values = reading.values
        names = self._names
        # Usually the reading carries every metric seen so far and no other: its row is
        # then appended by one C call (inline: this runs for every reading judged).
        known = len(values) == len(names)
        if known:
            end = len(self._values)
            try:
                self._values.extend(map(values.__getitem__, names))
            except KeyError:  # one missing, so another is new
                del self._values[end:]
                known = False
        if not known:
            row = self._row(values)  # first: it may widen the rows
            self._values.extend(row)
        ts = self._ts
        ts.append(reading.ts_us)
        try:
            self._seq.append(reading.seq)
        except OverflowError:
            self._seq = array("q", self._seq)
            self._seq.append(reading.seq)
        return len(ts)

    def insert(self, index: int, reading: EngineReading) -> None:
        """Add a reading at ``index`` (its place in (timestamp, seq) order)."""
        try:
            self._seq.insert(index, reading.seq)
        except OverflowError:
            self._seq = array("q", self._seq)
            self._seq.insert(index, reading.seq)
        row = self._row(reading.values)  # first: it may widen the rows
        self._ts.insert(index, reading.ts_us)
        width = len(self._names)
        self._values[index * width : index * width] = row

    def _row(self, values: Mapping[str, float]) -> array[float]:
        """The row of ``values``, NaN where absent; first a column for each new metric."""
        new = tuple(name for name in values if name not in self._names)
        if new:
            width = len(self._names)
            old = self._values
            self._values = array("d")
            padding = array("d", [_ABSENT]) * len(new)
            for index in range(len(self._ts)):
                self._values += old[index * width : index * width + width]
                self._values += padding
            self._names += new
        return array("d", [values.get(name, _ABSENT) for name in self._names])

    def reading(self, index: int) -> EngineReading:
        """Reading ``index``, as judged again (neither buffered nor with an arrival time)."""
        width = len(self._names)
        row = self._values[index * width : index * width + width]
        values = {name: value for name, value in zip(self._names, row, strict=True) if not math.isnan(value)}
        return EngineReading(self._device_id, self._ts[index], values, self._seq[index])

    def readings(self, start: int) -> list[EngineReading]:
        """Readings from ``start`` to the newest."""
        return [self.reading(i) for i in range(start, len(self._ts))]

    def truncate(self, length: int) -> None:
        """Forget every reading from ``length`` on."""
        del self._ts[length:]
        del self._seq[length:]
        del self._values[length * len(self._names) :]

    def drop_front(self, count: int) -> None:
        """Forget the ``count`` oldest readings."""
        del self._ts[:count]
        del self._seq[:count]
        del self._values[: count * len(self._names)]


class StoredHistory:
    """A device's history for late data kept in the database, with only what is in flight here.

    The collector stores every reading it judges, so the readings of the reorder horizon
    need not stay in the process (4 million readings, 180 MB, for 10,000 devices reporting
    every 10 s over an hour). What stays is what the database cannot give yet: the readings
    judged and not yet committed (*pending*: at most the two batches between judging and
    commit), the newest position judged, and a count of readings judged (for the bound on
    a checkpoint's span). A rewind needs the readings after its checkpoint: the caller
    reads them from the database (:meth:`Engine.stored_wanted`, then
    :meth:`Engine.give_stored`) and they are merged here with the pending ones.

    No reading too late to be judged is ever among them: such a reading is older than
    every checkpoint kept at its arrival, and checkpoints only move forward.
    """

    __slots__ = ("count", "failed", "given", "newest", "pending", "restored")

    def __init__(self) -> None:
        self.count = 0  # readings judged (the length a checkpoint records)
        self.newest: tuple[int, int] | None = None
        # (ts, seq) -> reading, judged and not yet committed.
        self.pending: dict[tuple[int, int], EngineReading] = {}
        # Readings read back for the next rewind: (after, readings); None when none given.
        self.given: tuple[tuple[int, int], list[EngineReading]] | None = None
        # Readings a rule failed on: stored all the same, never judged, so never replayed
        # (a history in memory never held them either).
        self.failed: set[tuple[int, int]] = set()
        # The positions judged again at a restart, in order: a copy of one (a message
        # redelivered after a crash) is a copy, not a reading too late, as long as a
        # history in memory would still hold it (until the first checkpoint after them
        # is forgotten).
        self.restored: tuple[array[int], array[int]] = (array("q"), array("q"))

    def __len__(self) -> int:
        return self.count

    def is_after_newest(self, ts_us: int, seq: int, floor: tuple[int, int] | None = None) -> bool:
        """Whether a reading at (``ts_us``, ``seq``) goes after every reading judged."""
        last = self.newest if self.newest is not None else floor
        return last is None or (ts_us, seq) > last

    def judged(self, reading: EngineReading) -> int:
        """Count a reading judged (live or again); the count."""
        position = (reading.ts_us, reading.seq)
        if self.newest is None or position > self.newest:
            self.newest = position
        self.count += 1
        return self.count

    def pend(self, reading: EngineReading) -> None:
        """Keep a newly arrived reading until its batch is committed.

        As it came (a replay reads only its time and values: never its arrival time, and
        judges it as late whatever its buffered flag says).
        """
        position = (reading.ts_us, reading.seq)
        self.pending[position] = reading
        if self.failed:
            self.failed.discard(position)  # judged now, sent again

    def is_copy(self, position: tuple[int, int]) -> bool:
        """Whether ``position`` is a reading held here: pending, or judged again at a restart."""
        if position in self.pending:
            return True
        times, seqs = self.restored
        if not times:
            return False
        index = bisect_left(times, position[0])
        while index < len(times) and times[index] == position[0]:
            if seqs[index] == position[1]:
                return True
            index += 1
        return False

    def reconciled(self) -> None:
        """After a restart's replay: what it judged came from the database, and is kept as positions."""
        positions = sorted(self.pending)
        self.restored = (array("q", [p[0] for p in positions]), array("q", [p[1] for p in positions]))
        self.pending.clear()

    def fail(self, position: tuple[int, int]) -> None:
        """A rule failed on the reading at ``position``: stored, not judged."""
        self.pending.pop(position, None)
        self.failed.add(position)

    def since(self, after: tuple[int, int]) -> list[EngineReading]:
        """Every reading judged after ``after``, in (ts, seq) order, from what was given.

        The readings given are those read back and those pending when the read began
        (:meth:`Engine.give_stored`): nothing is judged while the database is read, so
        nothing has become pending since. Raises RuntimeError when nothing was read back
        from ``after`` on (the caller must ask :meth:`Engine.stored_wanted` first).
        """
        given = self.given
        self.given = None
        if given is None or given[0] > after:
            msg = f"no stored readings read back from {after} for a rewind"
            raise RuntimeError(msg)
        failed = self.failed
        merged = {(r.ts_us, r.seq): r for r in given[1] if (r.ts_us, r.seq) > after}
        if failed:
            merged = {position: r for position, r in merged.items() if position not in failed}
        return [merged[position] for position in sorted(merged)]

    def forget_before(self, oldest: tuple[int, int]) -> None:
        """Drop pending readings at or before ``oldest`` (the oldest checkpoint): never replayed."""
        if self.pending and min(self.pending) <= oldest:
            self.pending = {p: r for p, r in self.pending.items() if p > oldest}
        if self.failed:
            self.failed = {p for p in self.failed if p > oldest}
        if self.restored[0]:
            self.restored = (array("q"), array("q"))  # all at or before the restart's checkpoint

    def reset(self, newest: tuple[int, int] | None) -> None:
        """Forget everything: judged up to ``newest`` (a snapshot or a restart), nothing pending."""
        self.count = 0
        self.newest = newest
        self.pending.clear()
        self.failed.clear()
        self.restored = (array("q"), array("q"))
        self.given = None
