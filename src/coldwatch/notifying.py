"""Notification delivery for the daemon: the planner, its outbox connection, the deliverer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from coldwatch.config import Config
from coldwatch.metrics import Metrics
from coldwatch.notify import outbox
from coldwatch.notify.deliver import Deliverer
from coldwatch.notify.messages import alertmanager_resend
from coldwatch.notify.planner import Notifier
from coldwatch.rules.lifecycle import Alarm, AlarmBook
from coldwatch.storage import Storage
from coldwatch.storage.postgres import PostgresStorage

__all__ = ["notifications"]


@contextlib.asynccontextmanager
async def notifications(
    config: Config,
    book: AlarmBook,
    metrics: Metrics,
    storage: Storage,
    *,
    resend_alarms: Callable[[], Iterable[Alarm]] | None = None,
) -> AsyncIterator[tuple[Notifier, Deliverer]]:
    """The planner (restored from storage) and the deliverer, on a connection of their own."""
    devices = config.device_map()
    notifier = Notifier(config.notify, devices, console_base_url=config.console.base_url)
    # Its own connection: the deliverer's small transactions must not mix with batches.
    db: outbox.OutboxStore
    if isinstance(storage, PostgresStorage):
        db = storage.outbox()
    else:
        db = outbox.SqliteOutbox(await outbox.connect(Path(config.storage.path)), owned=True)
    try:
        # Only this collector's open alarms: a cluster partition restores its own.
        notifier.restore(await db.load_facts([a.id for a in book.open.values()]), book.open.values())
        am = config.notify.alertmanager

        def resend(now_us: int) -> list[dict[str, Any]]:
            alarms = resend_alarms() if resend_alarms is not None else book.open.values()
            return alertmanager_resend(alarms, devices, now_us, am, config.console.base_url) if am else []

        deliverer = Deliverer(db, config.notify, resend=resend if am else None)
        metrics.notifications = lambda: (
            deliverer.delivered,
            deliverer.failed,
            deliverer.pending,
            deliverer.oldest_pending_us,
        )
        metrics.notification_dead_letters = lambda: (deliverer.dead_lettered, deliverer.dead_letters)
        yield notifier, deliverer
    finally:
        await db.close()
