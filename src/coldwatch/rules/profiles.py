"""Built-in rule profiles per device kind, merged with the site's overrides. Pure.

Numbers are defaults, each overridable in the ``rules:`` section of the configuration:
- particle counters: EU GMP Annex 1 (2022) limits for the room's grade and state
  (regulation); alert at a stated fraction of the action limit; 0.5 um on 2:2 / 3:3
  consecutive samples and 5.0 um on 2 / 3 events in 10 minutes (vendor practice);
- incubators: 37.0 +/- 1.0 C and 5.0 +/- 1.0 % CO2 action bands (vendor manuals), alert
  at +/- 0.5, held for the door-recovery time; door open alarms after 3 minutes;
- cryoshippers: alert above -150 C, action above -135 C (practice; check each product's
  label); LN2 level low alert 20 %, action 10 %; tilt over 45 degrees for 10 minutes.
"""

from __future__ import annotations

from collections.abc import Sequence

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.rules.config import (
    ANNEX1_LIMITS_M3,
    BudgetLevel,
    CommLossRule,
    ConsecutiveLevel,
    ConsecutiveRule,
    EventsInWindowRule,
    EventsLevel,
    ForecastLevel,
    ForecastRule,
    HeldLevel,
    HeldRule,
    ProbeDisagreementRule,
    ProbeLevel,
    RulesConfig,
    RuleSpec,
    ThresholdLevel,
    ThresholdRule,
    TimeOutOfRangeRule,
)

__all__ = ["builtin_rules", "rules_for"]


def _band(
    metric: str, setpoint: float, *, alert: float, action: float, delay_s: float, margin: float
) -> list[RuleSpec]:
    return [
        ThresholdRule(
            metric=metric,
            direction="high",
            levels={
                "alert": ThresholdLevel(limit=setpoint + alert, delay_s=delay_s, margin=margin),
                "action": ThresholdLevel(limit=setpoint + action, delay_s=delay_s, margin=margin),
            },
            suppress_after_door=True,
        ),
        ThresholdRule(
            metric=metric,
            direction="low",
            levels={
                "alert": ThresholdLevel(limit=setpoint - alert, delay_s=delay_s, margin=margin),
                "action": ThresholdLevel(limit=setpoint - action, delay_s=delay_s, margin=margin),
            },
            suppress_after_door=True,
        ),
    ]


def _particle_rules(device: DeviceConfig, cfg: RulesConfig) -> list[RuleSpec]:
    profile = cfg.particle
    grade = device.grade or "D"
    fine, coarse = ANNEX1_LIMITS_M3[grade][device.room_state or "in_operation"]
    rules: list[RuleSpec] = [CommLossRule(timeout_s=profile.comm_loss_s)]
    if fine is not None:
        rules.append(
            ConsecutiveRule(
                metric="particles_0_5um_m3",
                levels={
                    "alert": ConsecutiveLevel(
                        limit=fine * profile.alert_fraction,
                        n=profile.fine_alert_n_of_m[0],
                        m=profile.fine_alert_n_of_m[1],
                    ),
                    "action": ConsecutiveLevel(
                        limit=fine, n=profile.fine_action_n_of_m[0], m=profile.fine_action_n_of_m[1]
                    ),
                },
            )
        )
    if coarse is not None:
        rules.append(
            EventsInWindowRule(
                metric="particles_5_0um_m3",
                window_s=profile.coarse_window_s,
                levels={
                    "alert": EventsLevel(
                        limit=coarse * profile.alert_fraction, count=profile.coarse_alert_count
                    ),
                    "action": EventsLevel(limit=coarse, count=profile.coarse_action_count),
                },
            )
        )
    return rules


def builtin_rules(device: DeviceConfig, cfg: RulesConfig) -> list[RuleSpec]:
    """The built-in profile of ``device``'s kind."""
    if device.kind is Kind.PARTICLE_COUNTER:
        return _particle_rules(device, cfg)
    if device.kind is Kind.INCUBATOR:
        return [
            *_band("temp_c", 37.0, alert=0.5, action=1.0, delay_s=120, margin=0.2),
            *_band("co2_pct", 5.0, alert=0.5, action=1.0, delay_s=120, margin=0.2),
            HeldRule(
                metric="door_open", levels={"alert": HeldLevel(delay_s=180), "action": HeldLevel(delay_s=600)}
            ),
            CommLossRule(timeout_s=300),
        ]
    probes: list[RuleSpec] = [
        ThresholdRule(
            metric=metric,
            direction="high",
            levels={
                "alert": ThresholdLevel(limit=-150.0, delay_s=60, margin=2.0),
                "action": ThresholdLevel(limit=-135.0, delay_s=0, margin=2.0),
            },
        )
        for metric in ("temp_c", "temp_b_c")
    ]
    return [
        *probes,
        ThresholdRule(
            metric="ln2_level_pct",
            direction="low",
            levels={
                "alert": ThresholdLevel(limit=20.0, margin=2.0),
                "action": ThresholdLevel(limit=10.0, margin=2.0),
            },
        ),
        ThresholdRule(
            metric="tilt_deg",
            direction="high",
            levels={"alert": ThresholdLevel(limit=45.0, delay_s=600, margin=5.0)},
        ),
        HeldRule(metric="lid_open", levels={"alert": HeldLevel(delay_s=300)}),
        ProbeDisagreementRule(levels={"alert": ProbeLevel(limit=5.0, delay_s=600, margin=1.0)}),
        TimeOutOfRangeRule(
            metric="temp_c", high=-150.0, window_s=24 * 3600, levels={"alert": BudgetLevel(budget_s=1800)}
        ),
        ForecastRule(levels={"alert": ForecastLevel(hours=48), "action": ForecastLevel(hours=24)}),
        ThresholdRule(
            metric="battery_pct", direction="low", levels={"alert": ThresholdLevel(limit=20.0, margin=5.0)}
        ),
        CommLossRule(timeout_s=600),
    ]


def _identity(spec: RuleSpec) -> tuple[str, str]:
    return (spec.metric or "device", spec.rule_id())


def _merge(base: Sequence[RuleSpec], overrides: Sequence[RuleSpec]) -> list[RuleSpec]:
    merged = {_identity(spec): spec for spec in base}
    for spec in overrides:
        merged[_identity(spec)] = spec
    return [spec for spec in merged.values() if spec.enabled]


def rules_for(device: DeviceConfig, cfg: RulesConfig) -> list[RuleSpec]:
    """The rules that apply to ``device``: built-in profile, then kind overrides, then device ones."""
    rules = _merge(builtin_rules(device, cfg), cfg.profiles.get(device.kind.value, []))
    return _merge(rules, cfg.devices.get(device.id, []))
