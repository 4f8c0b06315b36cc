"""Whether the database takes writes, answered without disturbing the batch writer.

A readiness probe may come fifty times a second. While readings flow, the writer's own
outcome answers it: a batch committed moments ago proves the database takes writes, and
a failed one (being retried), or one still not committed after the freshness interval,
proves it does not. Only when the writer has been idle does the probe ask the database
itself, with a check the backend runs in one step of its own (never statements
interleaved with a batch), at most once per freshness interval, with concurrent probes
sharing that one answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from coldwatch.errors import StorageError

__all__ = ["WriteOutcome", "WriteProbe"]


class WriteOutcome(Protocol):
    """The writer's most recent outcome."""

    @property
    def last_write_ok(self) -> bool:
        """False while a failed batch is being retried."""

    @property
    def last_write_at(self) -> float | None:
        """Monotonic time of the last committed batch (None before the first)."""

    @property
    def writing_since(self) -> float | None:
        """Monotonic time at which the batch being written now was started (None: none is)."""


class Checkable(Protocol):
    """A storage that can prove it takes writes."""

    async def check_writable(self) -> None:
        """Raise StorageError if the database cannot take a write."""


class WriteProbe:
    """Answers "does the database take writes?" from the writer's outcome, or a check of its own."""

    def __init__(
        self,
        storage: Checkable,
        writer: WriteOutcome,
        *,
        fresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage
        self._writer = writer
        self._fresh_s = fresh_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checked: tuple[float, bool] | None = None  # (when, outcome) of the last own check
        self.checks = 0  # how many times the database itself was asked

    async def writable(self) -> bool:
        """True if the database takes writes now (as far as a probe can tell without writing)."""
        if not self._writer.last_write_ok:
            return False
        writing = self._writer.writing_since
        if writing is not None and self._clock() - writing >= self._fresh_s:
            # A batch that has not committed in that time (a lock held by someone else, a
            # connection that stopped answering): the database is not taking our writes,
            # whatever a check on another connection would say.
            return False
        committed = self._writer.last_write_at
        if committed is not None and self._clock() - committed < self._fresh_s:
            return True
        async with self._lock:  # concurrent probes wait for one check and share it
            if self._checked is not None and self._clock() - self._checked[0] < self._fresh_s:
                return self._checked[1]
            self.checks += 1
            try:
                await self._storage.check_writable()
                ok = True
            except StorageError:
                ok = False
            self._checked = (self._clock(), ok)
            return ok
