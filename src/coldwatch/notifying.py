"""Notification delivery for the daemon: the planner, its outbox connection, the deliverer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from coldwatch.config import Config
from coldwatch.metrics import Metrics
from coldwatch.notify import outbox
from coldwatch.notify.deliver import Deliverer
from coldwatch.notify.messages import alertmanager_resend
from coldwatch.notify.planner import Notifier
from coldwatch.rules.lifecycle import AlarmBook

__all__ = ["notifications"]


@contextlib.asynccontextmanager
async def notifications(
    config: Config, book: AlarmBook, metrics: Metrics
) -> AsyncIterator[tuple[Notifier, Deliverer]]:
    """The planner (restored from storage) and the deliverer, on a connection of their own."""
    devices = config.device_map()
    notifier = Notifier(config.notify, devices)
    # Its own connection: the deliverer's small transactions must not mix with batches.
    db = await outbox.connect(Path(config.storage.path))
    try:
        notifier.restore(await outbox.load_facts(db), book.open.values())
        am = config.notify.alertmanager

        def resend(now_us: int) -> list[dict[str, Any]]:
            return alertmanager_resend(book.open.values(), devices, now_us, am) if am else []

        deliverer = Deliverer(db, config.notify, resend=resend if am else None)
        metrics.notifications = lambda: (
            deliverer.delivered,
            deliverer.failed,
            deliverer.pending,
            deliverer.oldest_pending_us,
        )
        yield notifier, deliverer
    finally:
        await db.close()
