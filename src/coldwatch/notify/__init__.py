"""On-call notifications: Alertmanager and webhook chains with escalation, through an outbox.

Modules (import them directly; this package imports nothing so that ``coldwatch.config``
can import :mod:`coldwatch.notify.config` without a cycle):

- ``config``: the ``notify`` configuration section (pydantic, validated once).
- ``messages``: pure builders of Alertmanager alerts and webhook bodies.
- ``escalation``: pure due-time arithmetic of escalation tiers and repeats.
- ``planner``: pure, stateful ``Notifier``: alarm transitions and open alarms in,
  outbox items out (enqueued in the batch transaction that stores the transitions).
- ``outbox``: the outbox protocol the deliverer reads through, and its SQLite form
  (aiosqlite); the PostgreSQL form is in ``coldwatch.storage.postgres``.
- ``failures``: pure verdicts on receivers' answers (outage or permanent rejection),
  Retry-After, and the notices of a dead-lettered notification to the other channels.
- ``deliver``: the shell that posts outbox rows over HTTP with persisted backoff.
"""
