"""The levels a periodic report measures time beyond, taken from each device's threshold rules. Pure.

A level is one (severity, limit) of a threshold rule as configured (built-in profile,
then kind overrides, then device rules: :func:`coldwatch.rules.profiles.rules_for`).
"Beyond" is strictly above a high limit or strictly below a low one; the rule's delay and
margin (hysteresis) are alarm behaviour and play no part in the time beyond.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coldwatch.catalogue import KINDS
from coldwatch.config import DeviceConfig
from coldwatch.rules.config import RulesConfig, ThresholdRule
from coldwatch.rules.profiles import rules_for

__all__ = ["HOLD_CAP_INTERVALS", "Level", "PointSpec", "is_temperature", "point_spec"]

# A reading holds its value for at most this many of the device's intervals (the contract
# of every report): a longer silence is no data.
HOLD_CAP_INTERVALS = 3.0


@dataclass(frozen=True, slots=True)
class Level:
    """One limit of one metric: ``name`` like ``"high action"``; beyond is ``> level`` when ``above``."""

    name: str
    level: float
    above: bool


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


def _levels(rule: ThresholdRule) -> list[Level]:
    above = rule.direction == "high"
    order = sorted(rule.levels.items(), key=lambda kv: kv[1].limit, reverse=not above)
    return [Level(f"{rule.direction} {severity}", level.limit, above) for severity, level in order]


def point_spec(device: DeviceConfig, rules: RulesConfig) -> PointSpec:
    """The point's metrics and threshold levels as configured."""
    metrics = tuple(name for name, spec in KINDS[device.kind].items() if not spec.boolean)
    levels: dict[str, list[Level]] = {}
    for rule in rules_for(device, rules):
        if isinstance(rule, ThresholdRule) and rule.metric in metrics:
            levels.setdefault(rule.metric, []).extend(_levels(rule))
    return PointSpec(
        device.id,
        device.kind.value,
        device.site,
        device.area,
        device.interval_s,
        metrics,
        {metric: tuple(found) for metric, found in levels.items()},
    )
