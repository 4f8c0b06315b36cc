"""Logging that cannot flood: at most one traceback per kind of fault per period.

A stream of bad messages must be counted exactly, but logged sparingly: 12,000 failures
once wrote 20 MB of identical tracebacks. Each kind (a bounded key, such as a rejection
reason) logs its first failure with its traceback, then stays quiet for the period; the
next one logged says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs at most one record per key per ``period_s``; counts the records it leaves out."""

    def __init__(
        self,
        logger: logging.Logger,
        period_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}  # key -> when it was last logged
        self._left_out: dict[str, int] = {}  # key -> records not logged since

    def exception(self, key: str, message: str, *args: object) -> bool:
        """Log ``message`` with the current exception's traceback unless ``key`` was logged lately.

        Returns whether it was logged. Call it from an ``except`` block.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._period_s:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return False
        left_out = self._left_out.pop(key, 0)
        if left_out and last is not None:
            message += " (%d more like it since the last one logged, %.0f s ago)"
            args = (*args, left_out, now - last)
        self._last[key] = now
        self._logger.error(message, *args, exc_info=True)  # noqa: LOG014 - called in except blocks
        return True
