"""Validation scenario files: devices, a timeline of readings, actions and expectations.

A scenario is YAML, validated once with the same line-numbered errors as the collector's
configuration. Times inside a scenario are offsets from its ``start`` (``90s``, ``2h30m``,
``30d`` or a number of seconds).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from coldwatch.config import DeviceConfig, Identifier, load_config
from coldwatch.errors import ConfigError, ConfigProblem
from coldwatch.rules.config import RulesConfig
from coldwatch.rules.model import US

__all__ = ["Expectation", "Scenario", "SignalSegment", "load_scenario", "parse_duration_s"]

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_s(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"1h30m"``, ``"2d"`` or ``"250ms"``."""
    if isinstance(value, bool):
        raise TypeError("a duration is a number of seconds or text such as 90s, 15m, 2h30m, 30d")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise TypeError("a duration is a number of seconds or text such as 90s, 15m, 2h30m, 30d")
    text = value.strip().replace(" ", "")
    negative = text.startswith("-")
    text = text.removeprefix("-")
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        msg = f"{value!r} is not a duration (examples: 90s, 15m, 2h30m, 30d, 250ms)"
        raise ValueError(msg)
    return -total if negative else total


Duration = Annotated[float, BeforeValidator(parse_duration_s)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- signal segments ----------------------------------------------------------------


class Hold(_Model):
    """Hold a value (the previous segment's end value if omitted)."""

    value: float | None = None
    duration: Duration = Field(alias="for", gt=0)


class Ramp(_Model):
    """Move linearly from the previous value (or ``start``) to ``to``."""

    to: float
    start: float | None = Field(None, alias="from")
    duration: Duration = Field(alias="over", gt=0)


class Step(_Model):
    """Jump to ``to`` and hold it."""

    to: float
    duration: Duration = Field(alias="for", gt=0)


class Noise(_Model):
    """Gaussian noise around ``mean`` (the previous value if omitted), seeded: deterministic."""

    mean: float | None = None
    sd: float = Field(gt=0)
    seed: int = 0
    duration: Duration = Field(alias="for", gt=0)


class SignalSegment(_Model):
    """One segment of a metric's signal: exactly one of hold, ramp, step or noise."""

    hold: Hold | None = None
    ramp: Ramp | None = None
    step: Step | None = None
    noise: Noise | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("hold", "ramp", "step", "noise") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("each segment is exactly one of: hold, ramp, step, noise")
        return self

    @property
    def kind(self) -> Literal["hold", "ramp", "step", "noise"]:
        """Which segment this is."""
        for name in ("hold", "ramp", "step", "noise"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError  # pragma: no cover - validated

    @property
    def duration_s(self) -> float:
        """How long the segment lasts."""
        part = getattr(self, self.kind)
        return float(part.duration)


class Window(_Model):
    """A stretch of scenario time: ``at`` and ``for``."""

    at: Duration = Field(ge=0)
    duration: Duration = Field(alias="for", gt=0)


class Outage(Window):
    """The network is down: the device buffers, then backfills when it comes back."""

    backfill: bool = True  # False: the readings are lost (the device could not buffer)


class Point(_Model):
    """One explicit reading (added to, or replacing, the generated one at that instant)."""

    at: Duration = Field(ge=0)
    values: dict[str, float]
    buffered: bool = False
    arrives: Duration | None = None  # arrival time, if later than ``at`` (late data)


class DeviceTimeline(_Model):
    """The readings of one device."""

    interval: Duration = Field(10.0, gt=0)
    metrics: dict[str, list[SignalSegment]] = Field(default_factory=dict)
    gaps: list[Window] = Field(default_factory=list)  # no readings at all (device silent)
    outages: list[Outage] = Field(default_factory=list)
    door: list[Window] = Field(default_factory=list)  # door_open = 1 within each window
    lid: list[Window] = Field(default_factory=list)  # lid_open = 1 within each window
    points: list[Point] = Field(default_factory=list)
    end: Duration | None = None  # last reading before this offset (default: the scenario end)


# --- actions and expectations -----------------------------------------------------------


class Target(_Model):
    """An alarm slot: device and rule, as ``metric/rule`` (``temp_c/high``) or rule and metric."""

    device: Identifier
    rule: str
    metric: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("rule"), str) and "/" in data["rule"]:
            metric, _, rule = data["rule"].partition("/")
            if data.get("metric") not in {None, metric}:
                raise ValueError(f"rule {data['rule']!r} and metric {data['metric']!r} disagree")
            return {**data, "metric": metric, "rule": rule}
        return data

    @property
    def label(self) -> str:
        """``device metric/rule``."""
        return f"{self.device} {self.metric + '/' if self.metric else ''}{self.rule}"


class UserStep(Target):
    """A named user acting on the open alarm of a rule, with a reason."""

    user: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class Action(_Model):
    """Something a user does at an instant."""

    at: Duration = Field(ge=0)
    acknowledge: UserStep


EndState = Literal["active_unacknowledged", "active_acknowledged", "cleared_unacknowledged", "closed"]


class Expectation(Target):
    """What must (or must not) happen to the alarms of one rule, traced to a requirement."""

    id: str = Field(min_length=1, description="requirement ID, for the traceability matrix")
    title: str = ""
    severity: Literal["alert", "action"] | None = None
    raised_within: tuple[Duration, Duration] | None = None
    cleared_within: tuple[Duration, Duration] | None = None
    acknowledged: bool | None = None  # the matched alarm's acknowledgement at the end
    # The alarm's state at the end, as the API and the store name it.
    state: EndState | None = None
    late: bool | None = None  # raised from backfilled (late) data
    count: int | None = Field(None, ge=0)  # alarms of this rule (and severity) in the whole run
    never: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.never and any(
            v is not None
            for v in (self.raised_within, self.cleared_within, self.acknowledged, self.state, self.count)
        ):
            raise ValueError("'never' cannot be combined with raise, clear, state or count expectations")
        if not self.never and self.raised_within is None and self.count is None:
            raise ValueError("give raised_within (or count), or never: true")
        if self.count == 0 and any(
            v is not None
            for v in (self.raised_within, self.cleared_within, self.acknowledged, self.state, self.late)
        ):
            raise ValueError("count: 0 leaves no alarm to check the other clauses on (write never: true)")
        for name in ("raised_within", "cleared_within"):
            window = getattr(self, name)
            if window is not None and window[0] > window[1]:
                raise ValueError(f"{name}: the window starts after it ends")
        return self


class Scenario(_Model):
    """One validation scenario."""

    name: str = ""
    title: str = ""
    description: str = ""
    requirements: dict[str, str] = Field(default_factory=dict)  # requirement ID -> text
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    duration: Duration = Field(gt=0)
    config: str | None = None  # a collector configuration file whose devices and rules apply
    devices: list[DeviceConfig] = Field(default_factory=list)
    rules: RulesConfig | None = None
    timeline: dict[str, DeviceTimeline]
    actions: list[Action] = Field(default_factory=list)
    expect: list[Expectation] = Field(min_length=1)

    @model_validator(mode="after")
    def _aware_start(self) -> Self:
        if self.start.tzinfo is None:
            raise ValueError("start needs a time zone (write it in UTC, ending in Z)")
        return self

    @property
    def start_us(self) -> int:
        """The scenario's start, epoch microseconds."""
        return int(self.start.timestamp()) * US + self.start.microsecond

    @property
    def duration_us(self) -> int:
        """The scenario's length, microseconds."""
        return round(self.duration * US)


class LoadedScenario(BaseModel):
    """A scenario with the devices and rules it runs against, and the hashes that pin them."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: str
    scenario: Scenario
    devices: list[DeviceConfig]
    rules: RulesConfig
    scenario_sha256: str
    config_sha256: str  # of the devices and rules as run (inline, or the referenced file's)

    @property
    def name(self) -> str:
        """The scenario's name (its file name without .yaml when not given)."""
        return self.scenario.name or Path(self.path).stem


def _problem_location(node: yaml.Node, loc: tuple[str | int, ...]) -> str:
    """Line and column of the deepest part of ``loc`` found in the YAML node tree."""
    current = node
    for part in loc:
        child = None
        if isinstance(current, yaml.MappingNode):
            child = next((v for k, v in current.value if k.value == part), None)
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            child = current.value[part]
        if child is None:
            break
        current = child
    mark = current.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def load_scenario(path: str | Path) -> LoadedScenario:
    """Read and validate a scenario file; every problem is reported with its line."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigProblem(source, f"cannot read: {exc.strerror}")]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {exc}")]) from exc
    if not isinstance(raw, dict) or node is None:
        raise ConfigError(source, [ConfigProblem(source, "a scenario is a mapping")])
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
            where = f"{source}, {_problem_location(node, loc)}"
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(ConfigProblem(where, f"{field}: {err['msg']}"))
        raise ConfigError(source, problems) from exc
    return _resolve(path, scenario, text)


def _resolve(path: Path, scenario: Scenario, text: str) -> LoadedScenario:
    source = str(path)
    devices = list(scenario.devices)
    rules = scenario.rules
    if scenario.config is not None:
        config_path = (path.parent / scenario.config).resolve()
        config = load_config(config_path, environ={})
        wanted = set(scenario.timeline)
        devices = [d for d in config.devices if d.id in wanted] + devices
        rules = rules or config.rules
    rules = rules or RulesConfig()
    known = {d.id for d in devices}
    problems = [
        ConfigProblem(source, f"timeline device {device_id!r} is not among the scenario's devices")
        for device_id in scenario.timeline
        if device_id not in known
    ]
    targets = [*(a.acknowledge for a in scenario.actions), *scenario.expect]
    problems += [
        ConfigProblem(source, f"{t.label}: device {t.device!r} is not among the scenario's devices")
        for t in targets
        if t.device not in known
    ]
    if len(known) != len(devices):
        problems.append(ConfigProblem(source, "a device id appears twice"))
    if not problems:
        # A target that names no rule of its device would make "never" pass by a typo.
        from coldwatch.rules.engine import Engine  # noqa: PLC0415 - the engine imports the config

        keys = Engine(devices, rules, started_us=0).keys()
        for target in targets:
            if not any(
                k.device_id == target.device
                and k.rule == target.rule
                and (target.metric is None or k.metric == target.metric)
                for k in keys
            ):
                offered = sorted(f"{k.metric}/{k.rule}" for k in keys if k.device_id == target.device)
                what = f"expectation {target.id}" if isinstance(target, Expectation) else "an action"
                problems.append(
                    ConfigProblem(
                        source,
                        f"{what} names {target.label}, which is no rule of {target.device} "
                        f"(it has: {', '.join(offered)})",
                    )
                )
    if problems:
        raise ConfigError(source, problems)
    pinned = {
        "devices": [d.model_dump(mode="json") for d in devices],
        "rules": rules.model_dump(mode="json"),
    }
    config_sha = hashlib.sha256(yaml.safe_dump(pinned, sort_keys=True).encode()).hexdigest()
    return LoadedScenario(
        path=source,
        scenario=scenario,
        devices=devices,
        rules=rules,
        scenario_sha256=hashlib.sha256(text.encode()).hexdigest(),
        config_sha256=config_sha,
    )
