"""Work on an aiosqlite connection's own thread: one trip per transaction.

Each await on aiosqlite is a round trip through the event loop; with a busy loop, a
transaction of several statements cost many times its SQL time. These helpers run a
whole transaction on the connection's thread in one trip.
"""

from __future__ import annotations

import contextvars
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

import aiosqlite

__all__ = ["in_transaction", "on_thread"]

A = ParamSpec("A")
R = TypeVar("R")


def on_thread(
    db: aiosqlite.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, A], R],
    *args: A.args,
    **kwargs: A.kwargs,
) -> Awaitable[R]:
    """Run ``fn(connection, ...)`` on ``db``'s own thread, in one trip.

    (aiosqlite's ``_execute`` is what its own methods use; it has no public equivalent.)
    ``fn`` runs in a copy of the caller's context: context variables (the audit signer)
    reach the thread as they would an awaited coroutine.
    """
    ctx = contextvars.copy_context()
    result: Awaitable[R] = db._execute(ctx.run, fn, db._connection, *args, **kwargs)  # type: ignore[no-untyped-call]  # noqa: SLF001
    return result


def in_transaction(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, A], R],
    *args: A.args,
    **kwargs: A.kwargs,
) -> R:
    """``fn(conn, ...)`` in a write transaction of its own: committed, or rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
