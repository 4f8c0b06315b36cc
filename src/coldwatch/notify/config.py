"""The ``notify`` configuration section: Alertmanager, webhooks and escalation chains.

Validated once, at start-up: every tier must name a configured webhook, tiers are in
time order, and unknown keys are errors. Secrets in webhook headers are ``SecretStr`` so
they never appear in a repr or a log line.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AlertmanagerConfig",
    "EscalationMatch",
    "EscalationPolicy",
    "NotifyConfig",
    "Tier",
    "WebhookConfig",
]

# Webhook names end up in notification ids ("esc/<alarm>/<since>/<tier>/<repeat>/<name>"),
# so they must not contain a slash.
WebhookName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


class AlertmanagerConfig(_Model):
    """Where firing and resolved alarms are posted (Alertmanager API v2)."""

    url: str  # the Alertmanager base URL; alerts go to {url}/api/v2/alerts
    # Firing alerts are re-sent this often; keep it well below Alertmanager's
    # resolve_timeout (5 min by default) or it resolves them on its own.
    resend_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    runbook_base_url: str | None = None  # adds runbook_url = {base}/{rule} to every alert

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value).rstrip("/")

    @property
    def alerts_url(self) -> str:
        """The endpoint alerts are posted to."""
        return f"{self.url}/api/v2/alerts"


class WebhookConfig(_Model):
    """One webhook receiver (a pager gateway, a chat bridge, an SMS/voice service)."""

    url: str
    timeout_s: float = Field(10.0, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)


class EscalationMatch(_Model):
    """Which alarms a policy covers; an absent field matches everything."""

    severity: Literal["alert", "action"] | None = None
    site: str | None = None

    def matches(self, severity: str, site: str) -> bool:
        """Whether an alarm of ``severity`` at ``site`` is covered."""
        return (self.severity is None or self.severity == severity) and (
            self.site is None or self.site == site
        )


class Tier(_Model):
    """Who is notified once an alarm has been unacknowledged for ``after_s``."""

    after_s: float = Field(ge=0)
    notify: list[WebhookName] = Field(min_length=1)


class EscalationPolicy(_Model):
    """A notification chain: tiers in time order, then repeats of the last tier reached."""

    match: EscalationMatch = EscalationMatch()
    tiers: list[Tier] = Field(min_length=1)
    # The highest tier reached is notified again every repeat_s until acknowledged.
    repeat_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _tiers_in_time_order(self) -> Self:
        times = [t.after_s for t in self.tiers]
        if times != sorted(times):
            raise ValueError(f"tiers must be in time order (after_s not decreasing), got {times}")
        return self


class NotifyConfig(_Model):
    """The whole ``notify`` section."""

    alertmanager: AlertmanagerConfig | None = None
    webhooks: dict[WebhookName, WebhookConfig] = Field(default_factory=dict)
    # The first policy whose match fits an alarm applies to it.
    escalation: list[EscalationPolicy] = Field(default_factory=list)
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    # A notification its receiver rejects permanently (4xx other than 408 and 429) this
    # many times is dead-lettered: no longer retried, counted, audited and reported
    # through the other channels. Outages (5xx, timeouts, refused connections) are
    # retried for as long as they last.
    dead_letter_after_rejections: int = Field(3, ge=1)
    # A Retry-After longer than this is cut to it (a receiver must not mute on-call).
    retry_after_max_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _known_webhooks(self) -> Self:
        problems = [
            f"escalation.{p}.tiers.{t}.notify: unknown webhook {name!r}"
            for p, policy in enumerate(self.escalation)
            for t, tier in enumerate(policy.tiers)
            for name in tier.notify
            if name not in self.webhooks
        ]
        if problems:
            known = ", ".join(sorted(self.webhooks)) or "none configured"
            raise ValueError(f"{'; '.join(problems)} (webhooks: {known})")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self

    def policy_for(self, severity: str, site: str) -> EscalationPolicy | None:
        """The escalation policy of an alarm (first match wins), if any."""
        return next((p for p in self.escalation if p.match.matches(severity, site)), None)
