"""Configuration of people's accounts and signatures: passwords, lockout, sessions, meanings, site time.

Validated once at start-up like the rest of the configuration (:mod:`coldwatch.config`).
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["UTC_ZONES", "IdentityConfig", "PasswordPolicy", "SiteConfig"]


#: Zone names that are UTC itself: a site in one of them is shown each time once (in UTC),
#: not the same time twice as "UTC / site time".
UTC_ZONES: Final = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from exc
    return name


class SiteConfig(_Model):
    """Facts about the site that records show to people."""

    # Signatures show their time in UTC and in this zone (21 CFR 11.50: date and time of signing).
    timezone: Annotated[str, AfterValidator(_zone)] = "UTC"
    # A notice shown on every console page and every report page, e.g. that the readings
    # are simulated (the demo sets one). None: no notice.
    notice: Annotated[str, Field(min_length=1, max_length=300, pattern=r"^\S(.*\S)?$")] | None = None


class PasswordPolicy(_Model):
    """What a password must be, and how it is hashed (Argon2id)."""

    min_length: int = Field(12, ge=8, le=256)
    # A new password may not be any of the user's last N (the current one included).
    history: int = Field(5, ge=0, le=50)
    # Argon2id cost (RFC 9106's second recommended option by default: 64 MiB, 3 passes).
    time_cost: int = Field(3, ge=1, le=20)
    memory_kib: int = Field(65_536, ge=1024, le=4 * 1024 * 1024)
    parallelism: int = Field(4, ge=1, le=64)


def _meanings(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("signature meanings must be distinct")
    return values


Meaning = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^\S(.*\S)?$")]


class IdentityConfig(_Model):
    """People's accounts, sign-in, sessions and electronic signatures."""

    passwords: PasswordPolicy = PasswordPolicy()
    # Lockout (21 CFR 11.300(d)): this many failed sign-ins or signings in a row lock the account.
    lockout_attempts: int = Field(5, ge=1, le=100)
    lockout_s: float = Field(900.0, ge=1.0, le=30 * 86_400.0)
    # Sessions end after this long without a request, and this long after sign-in at the latest.
    session_idle_s: float = Field(900.0, ge=1.0, le=86_400.0)
    session_absolute_s: float = Field(12 * 3600.0, ge=1.0, le=7 * 86_400.0)
    # Sign-in attempts allowed per user name and per client address within the window.
    sign_in_rate_max: int = Field(10, ge=1, le=10_000)
    sign_in_rate_window_s: float = Field(60.0, ge=1.0, le=86_400.0)
    # The meanings a signer chooses from, per signed action (21 CFR 11.50(a)(3)).
    meanings_acknowledge: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["acknowledged, investigating", "acknowledged, no action needed"],
        min_length=1,
    )
    meanings_shelve: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["shelved, responsible for the suppression"], min_length=1
    )
    meanings_unshelve: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["unshelved, responsible"], min_length=1
    )
    meanings_review: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["reviewed", "approved"], min_length=1
    )
    # Batch registrations and amendments, shipment dispatch and receipt (coldwatch.records).
    meanings_records: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["authored, responsible for its accuracy", "verified"], min_length=1
    )

    meanings_calibrate: Annotated[list[Meaning], AfterValidator(_meanings)] = Field(
        default_factory=lambda: ["responsibility", "performed", "verified"], min_length=1
    )

    def meanings(self, action: str) -> list[str]:
        """The meanings allowed for a signed action (acknowledge, shelve, unshelve, review)."""
        return {
            "acknowledge": self.meanings_acknowledge,
            "shelve": self.meanings_shelve,
            "unshelve": self.meanings_unshelve,
            "review": self.meanings_review,
            "batch": self.meanings_records,
            "shipment": self.meanings_records,
            "calibrate": self.meanings_calibrate,
        }[action]
