"""The levels every report measures time beyond, taken from each device's rules. Pure.

A level is one (severity, limit) of a rule as configured (built-in profile, then kind
overrides, then device rules: :func:`coldwatch.rules.profiles.rules_for`): threshold
rules (high or low), and the particle counters' consecutive and events-in-window rules
(always an upper limit). "Beyond" is strictly above a high limit or strictly below a low
one; a rule's delay, margin (hysteresis), n-of-m or event count are alarm behaviour and
play no part in the time beyond. :func:`metric_levels` is the one derivation the
periodic, batch and shipment records share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from coldwatch.catalogue import KINDS
from coldwatch.config import DeviceConfig
from coldwatch.records.stats import Level
from coldwatch.rules.config import ConsecutiveRule, EventsInWindowRule, RulesConfig, ThresholdRule
from coldwatch.rules.profiles import rules_for

__all__ = ["HOLD_CAP_INTERVALS", "Level", "PointSpec", "is_temperature", "metric_levels", "point_spec"]

# A reading holds its value for at most this many of the device's intervals (the contract
# of every report): a longer silence is no data.
HOLD_CAP_INTERVALS = 3.0


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What the report needs to know of a monitoring point besides its readings."""

    device_id: str
    kind: str
    site: str
    area: str
    interval_s: float
    metrics: tuple[str, ...]  # the numeric metrics its kind reports, in catalogue order
    levels: Mapping[str, tuple[Level, ...]] = field(default_factory=dict)

    @property
    def hold_cap_s(self) -> float:
        """The longest a reading holds its value."""
        return HOLD_CAP_INTERVALS * self.interval_s


def is_temperature(metric: str, kind: str) -> bool:
    """Whether MKT applies: a metric in degrees Celsius."""
    specs = {name: spec for k, s in KINDS.items() if k.value == kind for name, spec in s.items()}
    spec = specs.get(metric)
    return spec is not None and spec.unit == "degC"


_LEVELLED = ThresholdRule | ConsecutiveRule | EventsInWindowRule


def _levels(rule: _LEVELLED) -> list[Level]:
    direction = rule.direction if isinstance(rule, ThresholdRule) else "high"  # particle counts: upper limits
    above = direction == "high"
    limits = [(severity, float(level.limit)) for severity, level in rule.levels.items()]
    # The level first reached first: alert before action.
    order = sorted(limits, key=lambda kv: kv[1], reverse=not above)
    return [
        Level(f"{severity} {direction}", limit, above) for severity, limit in order if math.isfinite(limit)
    ]


def metric_levels(device: DeviceConfig, rules: RulesConfig, metric: str) -> list[Level]:
    """The levels of a device's metric (name like ``"alert high"``), each once, in rule order.

    Threshold rules give their high or low limits; a particle counter's consecutive (0.5 um)
    and events-in-window (5.0 um) rules give their Annex 1 alert and action limits.
    """
    out: list[Level] = []
    for rule in rules_for(device, rules):
        if isinstance(rule, _LEVELLED) and rule.metric == metric:
            out += [lv for lv in _levels(rule) if lv not in out]
    return out


def point_spec(device: DeviceConfig, rules: RulesConfig) -> PointSpec:
    """The point's metrics and levels as configured (:func:`metric_levels`)."""
    metrics = tuple(name for name, spec in KINDS[device.kind].items() if not spec.boolean)
    levels = {metric: tuple(found) for metric in metrics if (found := metric_levels(device, rules, metric))}
    return PointSpec(
        device.id, device.kind.value, device.site, device.area, device.interval_s, metrics, levels
    )
