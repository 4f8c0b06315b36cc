"""Rate-limited logging: one traceback per kind of fault per period, the rest counted."""

from __future__ import annotations

import logging

import pytest

from coldwatch.ratelog import RateLimitedLog


def _boom() -> None:
    message = "boom"
    raise ValueError(message)


def _fail(log: RateLimitedLog, key: str) -> bool:
    try:
        _boom()
    except ValueError:
        return log.exception(key, "failed on %s", key)
    return False


def test_one_traceback_per_key_per_period_and_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """Within the period a key logs once; the next record after it says how many were left out."""
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), 60.0, clock=lambda: now[0])
    caplog.set_level(logging.ERROR, "test.ratelog")

    logged = [_fail(log, "decode") for _ in range(1000)]
    other = _fail(log, "judge")  # another kind is not held back by the first
    now[0] = 59.9
    early = _fail(log, "decode")
    now[0] = 60.0
    late = _fail(log, "decode")

    assert logged == [True] + [False] * 999
    assert (other, early, late) == (True, False, True)
    records = caplog.records
    assert len(records) == 3
    assert all(r.exc_info is not None for r in records)
    assert (
        records[2].getMessage() == "failed on decode (1000 more like it since the last one logged, 60 s ago)"
    )
