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

__all__ = ["History"]

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
