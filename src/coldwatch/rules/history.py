"""One device's recent readings, packed in arrays for rewinding: the memory of late data. Pure.

A reading kept as objects (a dict of floats in a frozen dataclass in a tuple) cost about
470 bytes; here it costs its numbers, about 30 bytes plus 8 a value, so a device reading
every 10 s holds an hour of history in some 20 KB instead of 170 KB. Values absent from a
reading are NaN (a reading never carries NaN: the payload contract rejects it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from coldwatch.rules.model import EngineReading

__all__ = ["History"]


class History:
    """Readings in (timestamp, seq) order, as :class:`EngineReading` on the way out."""

    __slots__ = ("_buffered", "_count", "_device_id", "_names", "_received", "_seq", "_ts", "_values")

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._count = 0
        self._names: list[str] = []
        self._ts: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._seq: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._received: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._buffered: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._values: npt.NDArray[np.float64] = np.zeros((0, 0))

    def __len__(self) -> int:
        return self._count

    def key(self, index: int) -> tuple[int, int]:
        """(timestamp, seq) of reading ``index`` (negative counts from the end)."""
        if index < 0:
            index += self._count
        return int(self._ts[index]), int(self._seq[index])

    def bisect_left(self, ts_us: int, seq: int) -> int:
        """Where a reading at (``ts_us``, ``seq``) goes, before any equal one."""
        n = self._count
        index = int(np.searchsorted(self._ts[:n], ts_us, side="left"))
        while index < n and self._ts[index] == ts_us and self._seq[index] < seq:
            index += 1
        return index

    def append(self, reading: EngineReading) -> None:
        """Add the newest reading."""
        self.insert(self._count, reading)

    def insert(self, index: int, reading: EngineReading) -> None:
        """Add a reading at ``index`` (its place in (timestamp, seq) order)."""
        for name in reading.values:
            if name not in self._names:
                self._names.append(name)
                self._values = np.hstack([self._values, np.full((len(self._ts), 1), np.nan)])
        if self._count == len(self._ts):
            self._resize(max(8, 2 * self._count))
        n = self._count
        if index < n:
            for array in (self._ts, self._seq, self._received, self._buffered, self._values):
                array[index + 1 : n + 1] = array[index:n]
        self._ts[index] = reading.ts_us
        self._seq[index] = reading.seq
        self._received[index] = reading.received_us
        self._buffered[index] = reading.buffered
        row = self._values[index]
        row[:] = np.nan
        for name, value in reading.values.items():
            row[self._names.index(name)] = value
        self._count = n + 1

    def _resize(self, capacity: int, first: int = 0) -> None:
        """New arrays of ``capacity`` rows holding the readings from ``first`` on."""
        kept = self._count - first
        for name in ("_ts", "_seq", "_received", "_buffered", "_values"):
            array = getattr(self, name)
            out = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
            out[:kept] = array[first : self._count]
            setattr(self, name, out)
        self._count = kept

    def reading(self, index: int) -> EngineReading:
        """Reading ``index``, as it was judged."""
        row = self._values[index]
        values = {name: float(row[i]) for i, name in enumerate(self._names) if not np.isnan(row[i])}
        return EngineReading(
            self._device_id,
            int(self._ts[index]),
            values,
            int(self._seq[index]),
            bool(self._buffered[index]),
            int(self._received[index]),
        )

    def readings(self, start: int) -> list[EngineReading]:
        """Readings from ``start`` to the newest."""
        return [self.reading(i) for i in range(start, self._count)]

    def truncate(self, length: int) -> None:
        """Forget every reading from ``length`` on."""
        self._count = min(self._count, length)

    def drop_front(self, count: int) -> None:
        """Forget the ``count`` oldest readings (the arrays shrink with the history)."""
        kept = self._count - count
        self._resize(max(8, kept + kept // 2), first=count)
