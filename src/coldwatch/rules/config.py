"""Rule configuration: typed rule specs, built-in profiles per device kind, overrides.

Every number here is a configurable default. Where it comes from regulation (EU GMP
Annex 1 particle limits) or from common practice (incubator bands, LN2 alarm points,
N-of-M particle rules), the comment says which; see the README's rules section.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ANNEX1_LIMITS_M3",
    "CommLossRule",
    "ConsecutiveRule",
    "EventsInWindowRule",
    "ForecastRule",
    "HeldRule",
    "MktRule",
    "ProbeDisagreementRule",
    "RateRule",
    "RuleSpec",
    "RulesConfig",
    "ThresholdRule",
    "TimeOutOfRangeRule",
]

SeverityName = Literal["alert", "action"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rule(_Model):
    id: str = ""  # the alarm's rule name; defaults per type (see each class)
    enabled: bool = True

    def rule_id(self) -> str:
        """The rule name alarms carry."""
        return self.id or self._default_id()

    def _default_id(self) -> str:
        raise NotImplementedError


class ThresholdLevel(_Model):
    """One level of a threshold: limit, on-delay and off-margin (hysteresis)."""

    limit: float
    delay_s: float = Field(0.0, ge=0)
    margin: float = Field(0.0, ge=0)


class ThresholdRule(_Rule):
    """High or low limit at one or more levels. A high alarm at 10 with margin 1 clears at <= 9."""

    type: Literal["threshold"] = "threshold"
    metric: str
    direction: Literal["high", "low"]
    levels: dict[SeverityName, ThresholdLevel]
    # Held during the recovery time after a door closes (incubator temperature and CO2).
    suppress_after_door: bool = False

    def _default_id(self) -> str:
        return f"{self.direction}"

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdRule:
        alert, action = self.levels.get("alert"), self.levels.get("action")
        if alert and action:
            worse = action.limit >= alert.limit if self.direction == "high" else action.limit <= alert.limit
            if not worse:
                raise ValueError("the action limit must be at or beyond the alert limit")
        return self


class RateLevel(_Model):
    """A rate-of-change level: change per minute over the window, in the metric's unit."""

    limit_per_min: float = Field(gt=0)
    delay_s: float = Field(0.0, ge=0)
    margin: float = Field(0.0, ge=0)


class RateRule(_Rule):
    """Rate of change over a window: (newest - oldest in window) per minute."""

    type: Literal["rate"] = "rate"
    metric: str
    window_s: float = Field(gt=0)
    direction: Literal["rise", "fall", "either"] = "either"
    levels: dict[SeverityName, RateLevel]

    def _default_id(self) -> str:
        return "rate"


class CommLossRule(_Rule):
    """No reading from the device (or one metric) for ``timeout_s``, or a retained ``offline``."""

    type: Literal["comm_loss"] = "comm_loss"
    metric: str | None = None
    timeout_s: float = Field(gt=0)
    severity: SeverityName = "action"

    def _default_id(self) -> str:
        return "comm_loss"


class ConsecutiveLevel(_Model):
    """N of the last M samples beyond ``limit``."""

    limit: float
    n: int = Field(ge=1)
    m: int = Field(ge=1)

    @model_validator(mode="after")
    def _n_le_m(self) -> ConsecutiveLevel:
        if self.n > self.m:
            raise ValueError("n must not exceed m")
        return self


class ConsecutiveRule(_Rule):
    """N of the last M samples above the level (particle 0.5 um: 2:2 alert, 3:3 action)."""

    type: Literal["consecutive"] = "consecutive"
    metric: str
    levels: dict[SeverityName, ConsecutiveLevel]

    def _default_id(self) -> str:
        return "consecutive"


class EventsLevel(_Model):
    """At least ``count`` samples above ``limit`` within the window."""

    limit: float
    count: int = Field(ge=1)


class EventsInWindowRule(_Rule):
    """At least K samples above the level within T seconds (5.0 um particle events)."""

    type: Literal["events_in_window"] = "events_in_window"
    metric: str
    window_s: float = Field(gt=0)
    levels: dict[SeverityName, EventsLevel]

    def _default_id(self) -> str:
        return "events_in_window"


class BudgetLevel(_Model):
    """Cumulative time out of range allowed within the window."""

    budget_s: float = Field(gt=0)


class TimeOutOfRangeRule(_Rule):
    """Cumulative time outside [low, high] within a rolling window (time-out-of-refrigeration)."""

    type: Literal["time_out_of_range"] = "time_out_of_range"
    metric: str
    low: float | None = None
    high: float | None = None
    window_s: float = Field(gt=0)
    levels: dict[SeverityName, BudgetLevel]

    def _default_id(self) -> str:
        return "time_out_of_range"

    @model_validator(mode="after")
    def _a_bound(self) -> TimeOutOfRangeRule:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        return self


class MktLevel(_Model):
    """An MKT limit, degrees C."""

    limit_c: float


class MktRule(_Rule):
    """Mean kinetic temperature (USP <1079>) over a rolling window above a limit."""

    type: Literal["mkt"] = "mkt"
    metric: str = "temp_c"
    window_s: float = Field(gt=0)
    # dH/R in kelvin: 83.144 kJ/mol / 8.3144 J/(mol K) = 10,000 K (USP <1079> default).
    activation_k: float = Field(10_000.0, gt=0)
    min_coverage: float = Field(0.5, gt=0, le=1)  # fraction of the window with data
    levels: dict[SeverityName, MktLevel]

    def _default_id(self) -> str:
        return "mkt"


class HeldLevel(_Model):
    """How long a boolean may stay true."""

    delay_s: float = Field(ge=0)


class HeldRule(_Rule):
    """A boolean state held too long: door open, lid open."""

    type: Literal["held"] = "held"
    metric: str
    levels: dict[SeverityName, HeldLevel]

    def _default_id(self) -> str:
        return "held_open"


class ProbeLevel(_Model):
    """Disagreement limit between two probes, with an on-delay."""

    limit: float = Field(gt=0)
    delay_s: float = Field(0.0, ge=0)
    margin: float = Field(0.0, ge=0)


class ProbeDisagreementRule(_Rule):
    """|metric - other| above the limit for the delay (probe A vs probe B)."""

    type: Literal["probe_disagreement"] = "probe_disagreement"
    metric: str = "temp_c"
    other: str = "temp_b_c"
    levels: dict[SeverityName, ProbeLevel]

    def _default_id(self) -> str:
        return "probe_disagreement"


class ForecastLevel(_Model):
    """Alarm when the predicted time to the limit falls below ``hours``."""

    hours: float = Field(gt=0)


class ForecastRule(_Rule):
    """Remaining hold time of an LN2 shipper, by a linear fit over a window (numpy)."""

    type: Literal["forecast"] = "forecast"
    metric: str = "ln2_level_pct"  # the alarm's metric label
    temp_metric: str = "temp_c"
    temp_limit_c: float = -150.0
    empty_level_pct: float = 0.0
    window_s: float = Field(6 * 3600, gt=0)
    min_points: int = Field(10, ge=3)
    # A fit over minutes extrapolates noise into a false alarm: each fit must span this long.
    min_span_s: float = Field(3600, ge=0)
    levels: dict[SeverityName, ForecastLevel]

    def _default_id(self) -> str:
        return "hold_time_forecast"


RuleSpec = Annotated[
    ThresholdRule
    | RateRule
    | CommLossRule
    | ConsecutiveRule
    | EventsInWindowRule
    | TimeOutOfRangeRule
    | MktRule
    | HeldRule
    | ProbeDisagreementRule
    | ForecastRule,
    Field(discriminator="type"),
]

# EU GMP Annex 1 (2022) maximum particles per m3 (>= size), by grade and room state.
# None: not predetermined (grade D in operation).
ANNEX1_LIMITS_M3: dict[str, dict[str, tuple[float | None, float | None]]] = {
    # grade: {state: (0.5 um, 5.0 um)}
    "A": {"at_rest": (3_520, 29), "in_operation": (3_520, 29)},
    "B": {"at_rest": (3_520, 29), "in_operation": (352_000, 2_930)},
    "C": {"at_rest": (352_000, 2_930), "in_operation": (3_520_000, 29_300)},
    "D": {"at_rest": (3_520_000, 29_300), "in_operation": (None, None)},
}


class ParticleProfile(_Model):
    """How particle counter rules are derived from the room's grade."""

    # Alert level as a fraction of the action (regulatory) limit: a stated default until
    # the site sets alert levels from its own trend data (mean + 2 sigma is common).
    alert_fraction: float = Field(0.5, gt=0, le=1)
    fine_alert_n_of_m: tuple[int, int] = (2, 2)  # practice (PMS application notes)
    fine_action_n_of_m: tuple[int, int] = (3, 3)
    coarse_window_s: float = Field(600, gt=0)  # 5.0 um events: 2 in 10 min alert, 3 action
    coarse_alert_count: int = Field(2, ge=1)
    coarse_action_count: int = Field(3, ge=1)
    comm_loss_s: float = Field(300, gt=0)


class RulesConfig(_Model):
    """The ``rules:`` section: built-in profiles, profile overrides and per-device rules."""

    particle: ParticleProfile = ParticleProfile()
    # Rules per device kind, merged over the built-in profile by rule id (same id
    # replaces; ``enabled: false`` removes a built-in rule).
    profiles: dict[Literal["particle_counter", "incubator", "cryoshipper"], list[RuleSpec]] = Field(
        default_factory=dict
    )
    devices: dict[str, list[RuleSpec]] = Field(default_factory=dict)
    door_recovery_s: float = Field(600, ge=0)  # incubator alarms held after the door closes
    # Late readings older than this (in device time) behind a device's newest are stored
    # but too late to re-evaluate; they are counted.
    reorder_horizon_s: float = Field(3600, ge=0)
    # Where the collector keeps the horizon's readings for judging late ones again:
    # ``database`` (read back on a rewind; only readings not yet committed stay in the
    # process) or ``memory`` (every reading of the horizon in the process: faster rewinds,
    # about 50 bytes a reading).
    late_history: Literal["database", "memory"] = "database"
