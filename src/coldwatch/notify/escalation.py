"""Escalation arithmetic: which tiers and repeats are due for an open alarm. Pure.

An escalation *episode* starts when an alarm becomes unacknowledged: when it is raised,
or when a severity increase makes an acknowledged alarm unacknowledged again (the
lifecycle does that). Within an episode, with the policy matched by the episode's
severity and the alarm's site:

- tier ``i`` is due at ``since + tiers[i].after_s``;
- with ``repeat_s``, the highest tier reached is notified again at
  ``its due time + k * repeat_s`` (k = 1, 2, ...) until acknowledged; repeats that were
  missed (the collector was down) collapse into one, tiers never do (each tier pages
  different people);
- nothing is due once the alarm is acknowledged, no longer active (cleared: the clear is
  news for those already notified, not a reason to page more), or shelved.

Everything is computed from stored facts (the episode's start, what was already
enqueued, now), so the timers survive a restart without any timer state of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from coldwatch.notify.config import EscalationPolicy
from coldwatch.rules.model import Severity

__all__ = ["Due", "EscalationAlarm", "due", "next_due_us", "select_policy"]

US = 1_000_000


@dataclass(frozen=True, slots=True)
class EscalationAlarm:
    """An open alarm as escalation sees it."""

    alarm_id: int
    severity: Severity  # the severity the current episode started with
    site: str
    since_us: int  # when the current episode started (collector time)
    acknowledged: bool
    active: bool = True
    shelved: bool = False


@dataclass(frozen=True, slots=True)
class Due:
    """One notification now due: tier ``tier``, its ``repeat``-th repeat (0 = the first)."""

    tier: int
    repeat: int
    due_us: int
    webhooks: tuple[str, ...]


def select_policy(
    policies: Sequence[EscalationPolicy], severity: Severity, site: str
) -> EscalationPolicy | None:
    """The first policy that matches, if any."""
    return next((p for p in policies if p.match.matches(severity.label, site)), None)


def _tier_times(policy: EscalationPolicy, since_us: int) -> list[int]:
    return [since_us + round(t.after_s * US) for t in policy.tiers]


def due(
    policies: Sequence[EscalationPolicy],
    alarm: EscalationAlarm,
    sent: AbstractSet[tuple[int, int]],
    now_us: int,
) -> list[Due]:
    """Notifications due at ``now_us`` that are not in ``sent`` ((tier, repeat) already enqueued)."""
    if alarm.acknowledged or not alarm.active or alarm.shelved:
        return []
    policy = select_policy(policies, alarm.severity, alarm.site)
    if policy is None:
        return []
    times = _tier_times(policy, alarm.since_us)
    reached = [i for i, at in enumerate(times) if at <= now_us]
    out = [Due(i, 0, times[i], tuple(policy.tiers[i].notify)) for i in reached if (i, 0) not in sent]
    if policy.repeat_s is not None and reached:
        top = reached[-1]
        # A repeat follows a notification that went out; a tier due right now is not repeated.
        if (top, 0) in sent:
            repeat_us = round(policy.repeat_s * US)
            k = (now_us - times[top]) // repeat_us
            if k >= 1 and (top, k) not in sent:
                out.append(Due(top, k, times[top] + k * repeat_us, tuple(policy.tiers[top].notify)))
    return out


def next_due_us(
    policies: Sequence[EscalationPolicy], alarm: EscalationAlarm, sent: AbstractSet[tuple[int, int]]
) -> int | None:
    """The earliest time at which :func:`due` will return something, if ever.

    Once tiers are enqueued as they fall due, this is the next tier's time or the next
    repeat of the highest tier sent, whichever comes first.
    """
    if alarm.acknowledged or not alarm.active or alarm.shelved:
        return None
    policy = select_policy(policies, alarm.severity, alarm.site)
    if policy is None:
        return None
    times = _tier_times(policy, alarm.since_us)
    candidates = [at for i, at in enumerate(times) if (i, 0) not in sent]
    sent_tiers = [i for i, _ in enumerate(times) if (i, 0) in sent]
    if policy.repeat_s is not None and sent_tiers:
        top = sent_tiers[-1]
        repeat_us = round(policy.repeat_s * US)
        last = max(k for tier, k in sent if tier == top)
        candidates.append(times[top] + (last + 1) * repeat_us)
    return min(candidates, default=None)
