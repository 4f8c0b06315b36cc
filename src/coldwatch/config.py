"""Typed configuration: YAML files validated once, at start-up, with environment overrides.

Every setting can be overridden from the environment with ``COLDWATCH_<SECTION>__<KEY>``
(for example ``COLDWATCH_STORAGE__BATCH_MAX=1000``). Three short names exist for the
settings changed most often: ``COLDWATCH_MQTT_URL``, ``COLDWATCH_DB`` and
``COLDWATCH_HTTP_LISTEN``. A mistake is reported with the file, line and column.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from coldwatch.catalogue import DEFAULT_RANGES, Kind
from coldwatch.errors import ConfigError, ConfigProblem
from coldwatch.identity_config import IdentityConfig, SiteConfig
from coldwatch.notify.config import NotifyConfig
from coldwatch.records.schedule_config import ReportsConfig
from coldwatch.rules.config import RulesConfig

__all__ = [
    "AuditConfig",
    "CalibrationConfig",
    "ClusterConfig",
    "Config",
    "DeviceConfig",
    "HttpConfig",
    "IngestConfig",
    "MqttConfig",
    "PlausibleRange",
    "StorageConfig",
    "load_config",
    "parse_config",
]

ENV_PREFIX = "COLDWATCH_"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


SHORT_ENV: dict[str, tuple[str, ...]] = {
    "COLDWATCH_MQTT_URL": ("mqtt", "url"),
    "COLDWATCH_DB": ("storage", "path"),
    "COLDWATCH_HTTP_LISTEN": ("http", "listen"),
}
_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Identifier = Annotated[str, Field(pattern=_ID_RE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerAddress(_Model):
    """An MQTT broker address parsed from ``mqtt://user:pass@host:port`` or ``mqtts://``."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: SecretStr | None


class ReconnectConfig(_Model):
    """Jittered exponential backoff between connection attempts."""

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)


class MqttConfig(_Model):
    """How the collector connects and subscribes to the broker."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: Identifier = "coldwatch-collector"
    topic_prefix: Identifier = "coldwatch"
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(7 * 24 * 3600, gt=0)
    # How many unacknowledged QoS 1 messages the broker may have in flight to us. Messages
    # are acknowledged only after they are committed, so this bounds what we hold in memory;
    # it must hold two batches (one committing, one being judged) for the writer to keep up.
    receive_maximum: int = Field(4000, ge=1, le=65535)
    keepalive_s: int = Field(30, ge=5)
    reconnect: ReconnectConfig = ReconnectConfig()
    ca_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @property
    def broker(self) -> BrokerAddress:
        """The broker address this configuration names."""
        return parse_broker_url(self.url)


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts"}:
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"broker URL has an invalid port: {url!r}") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password else None,
    )


class StorageConfig(_Model):
    """Where and how readings are stored: a SQLite file (``path``) or PostgreSQL (``url``).

    ``COLDWATCH_DB`` (or ``path``) holding a ``postgresql://`` URL selects PostgreSQL.
    """

    path: Path = Path("data/coldwatch.db")
    url: str | None = None
    # Under a backlog, larger transactions amortise the fsync and the write-ahead log's page
    # writes: 500 -> 2,000 messages gave 17,100-17,900 -> 21,900-23,300 msg/s draining a
    # 200,000-message backlog with the 0.5 ms switch interval (benchmarks/ingest.py).
    batch_max: int = Field(2000, ge=1, le=100_000)
    batch_max_delay_s: float = Field(0.01, ge=0, le=10)
    quarantine_max_rows: int = Field(10_000, ge=10)
    # The quarantine is bounded in bytes too: each rejected payload is kept up to this many
    # bytes (with its full size and SHA-256), and the oldest entries go once the kept
    # payloads exceed quarantine_max_bytes.
    quarantine_payload_bytes: int = Field(4096, ge=0, le=1024 * 1024)
    quarantine_max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_payload_fits(self) -> Self:
        if self.quarantine_payload_bytes > self.quarantine_max_bytes:
            raise ValueError("quarantine_payload_bytes must not exceed quarantine_max_bytes")
        return self

    @model_validator(mode="before")
    @classmethod
    def _url_in_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and str(data.get("path", "")).startswith(POSTGRES_SCHEMES):
            data = {**data, "url": str(data["path"])}
            del data["path"]
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("url must be a postgresql:// URL")
        return value

    @property
    def location(self) -> str:
        """The database: the PostgreSQL URL when set, else the SQLite path."""
        return self.url or str(self.path)

    @property
    def postgres(self) -> bool:
        """True when readings go to PostgreSQL."""
        return self.url is not None


class HttpConfig(_Model):
    """The HTTP endpoint for /metrics, /healthz and /readyz."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be host:port, got {value!r}")
        return value

    @property
    def host(self) -> str:
        """The listen host."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The listen port (0 picks a free one)."""
        return int(self.listen.rpartition(":")[2])


class UserConfig(_Model):
    """A read-only service token defined in the file: a role and the SHA-256 of the token.

    The token may instead come from the environment as ``COLDWATCH_TOKEN_<USER>`` (user
    name upper-cased, ``-`` and ``.`` as ``_``). Such a token reads; it never signs or
    manages accounts (people sign with their own account: coldwatch.identity).
    """

    role: Literal["viewer", "operator", "admin"]
    full_name: str = ""  # the printed name shown on what this user signs
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class ApiConfig(_Model):
    """Who may use the HTTP API, and how."""

    users: dict[Identifier, UserConfig] = Field(default_factory=dict)
    # The longest shelve a user may ask for: a shelve hides an alarm, so it must end.
    shelve_max_s: float = Field(30 * 86_400.0, gt=0, le=366 * 86_400.0)


class PlausibleRange(_Model):
    """A metric's physically plausible values, inclusive; a side left out keeps its default."""

    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)


class IngestConfig(_Model):
    """Limits applied to every incoming message."""

    max_payload_bytes: int = Field(64 * 1024, ge=256)
    max_future_skew_s: float = Field(300.0, ge=0)
    queue_max: int = Field(20_000, ge=10)
    # Readings missing upstream (seq gaps, a lost broker session) are asked for again on
    # the device's resend topic; a gap not filled within this time is recorded as lost.
    gap_recovery_timeout_s: float = Field(3600.0, gt=0)
    resend_retry_s: float = Field(30.0, gt=0)  # a request not yet answered is repeated after this
    resend_max_attempts: int = Field(5, ge=1)  # requests per gap (or per device after a session loss)
    resend_max_per_s: float = Field(20.0, gt=0)  # re-send requests published per second at most
    max_open_gaps_per_device: int = Field(100, ge=1)  # beyond, a device's oldest open gap is lost
    # Overrides of the default plausible ranges (coldwatch.catalogue.DEFAULT_RANGES), by metric.
    plausible_ranges: dict[str, PlausibleRange] = Field(default_factory=dict)
    # Messages held unacknowledged longer than this make /readyz fail (a batch takes
    # milliseconds; a database retrying for longer, or a stuck message, shows here).
    max_unacked_age_s: float = Field(30.0, gt=0)

    @field_validator("plausible_ranges")
    @classmethod
    def _known_metrics(cls, ranges: dict[str, PlausibleRange]) -> dict[str, PlausibleRange]:
        for name, given in ranges.items():
            if name not in DEFAULT_RANGES:
                known = ", ".join(sorted(DEFAULT_RANGES))
                raise ValueError(f"{name!r} is not a numeric metric (one of {known})")
            low, high = _merged(name, given)
            if low > high:
                raise ValueError(f"{name}: min {low:g} is above max {high:g}")
        return ranges

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The plausible range of every numeric metric: the defaults with the overrides applied."""
        return {name: _merged(name, self.plausible_ranges.get(name)) for name in DEFAULT_RANGES}


def _merged(name: str, given: PlausibleRange | None) -> tuple[float, float]:
    low, high = DEFAULT_RANGES[name]
    if given is None:
        return low, high
    return (low if given.min is None else given.min, high if given.max is None else given.max)


class DeviceConfig(_Model):
    """A registered, qualified instrument. Only registered devices are accepted."""

    id: Identifier
    kind: Kind
    site: Identifier
    area: Identifier
    grade: Literal["A", "B", "C", "D"] | None = None
    # The room state whose Annex 1 limits apply (particle counters; default in operation).
    room_state: Literal["at_rest", "in_operation"] | None = None
    description: str = ""
    # A cryoshipper that carries shipments (the default); false for a static LN2 dewar, which
    # is watched the same way but never dispatched.
    ships: bool | None = None
    # Simulation hints, used only by the simulators.
    interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _grade_for_particle_counters(self) -> Self:
        if self.kind is Kind.PARTICLE_COUNTER and self.grade is None:
            raise ValueError("a particle_counter needs its cleanroom grade (A, B, C or D)")
        if self.kind is not Kind.PARTICLE_COUNTER and (self.grade is not None or self.room_state is not None):
            raise ValueError("only a particle_counter has a cleanroom grade and room state")
        if self.kind is not Kind.CRYOSHIPPER and self.ships is not None:
            raise ValueError("only a cryoshipper ships (ships: false marks a static LN2 dewar)")
        return self

    @property
    def shipper(self) -> bool:
        """Whether shipments may be dispatched on this device (a cryoshipper not marked ships: false)."""
        return self.kind is Kind.CRYOSHIPPER and self.ships is not False


class ClusterConfig(_Model):
    """Several collectors sharing the devices through leases on partitions (PostgreSQL only).

    Every member must have the same devices, ``partitions`` and ``mqtt.client_id``.
    """

    enabled: bool = False
    # This member's name (unique in the cluster); default: host name and process id.
    name: Identifier | None = None
    partitions: int = Field(16, ge=1, le=4096)
    # A dead or stalled member's partitions are taken over within lease_s plus one renewal period.
    lease_s: float = Field(15.0, ge=1.0, le=3600.0)
    # Alarm ids are reserved from the shared sequence in blocks of this size.
    alarm_id_block: int = Field(10_000, ge=100)

    @property
    def renew_s(self) -> float:
        """How often leases are renewed and the cluster looked at."""
        return self.lease_s / 3


class AuditConfig(_Model):
    """The audit trail's signing key and its anchors outside the database (coldwatch.audit_keys).

    Unset paths lie beside the SQLite database (``<db>.audit-key``, ``<db>.audit-anchors.jsonl``),
    or beside the configuration file with PostgreSQL. ``signing_key`` (PEM, or base64 of the 32-byte Ed25519
    seed), usually from ``COLDWATCH_AUDIT__SIGNING_KEY``, takes precedence over the file.
    """

    signing_key_file: Path | None = None
    signing_key: SecretStr | None = None
    anchor_file: Path | None = None
    # The chain head is also anchored at every clean shutdown.
    anchor_interval_s: float = Field(300.0, ge=1.0, le=86_400.0)


class RecordsConfig(_Model):
    """GMP records (coldwatch.records): what the shipment record measures."""

    # Shipment record: time each probe spent above each of these temperatures (practice:
    # -150 C alert, -135 C near the glass transition; check each product's label).
    shipment_levels_c: Annotated[list[float], Field(min_length=1, max_length=6)] = Field(
        default_factory=lambda: [-150.0, -135.0]
    )


class ConsoleConfig(_Model):
    """The web console, served by the daemon under /console."""

    # The address people open the console at (e.g. https://coldwatch.site.example): notifications
    # then carry each alarm's page, <base_url>/console/alarms/<id>. None: notifications carry none.
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=500)] | None = None

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value is not None else None


class CalibrationConfig(_Model):
    """Instrument calibration (coldwatch.records.calibration): when to warn, how often to check."""

    alert_before_days: float = Field(30.0, gt=0, le=3650)  # alert this long before the due date
    check_interval_s: float = Field(60.0, ge=0.1, le=86_400.0)  # the collector checks due dates this often


class Config(_Model):
    """The whole configuration of one collector."""

    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    ingest: IngestConfig = IngestConfig()
    rules: RulesConfig = RulesConfig()
    api: ApiConfig = ApiConfig()
    notify: NotifyConfig = NotifyConfig()
    cluster: ClusterConfig = ClusterConfig()
    audit: AuditConfig = AuditConfig()
    identity: IdentityConfig = IdentityConfig()
    site: SiteConfig = SiteConfig()
    console: ConsoleConfig = ConsoleConfig()
    records: RecordsConfig = RecordsConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    reports: ReportsConfig = ReportsConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)
    source: str = Field("<defaults>", exclude=True)
    sha256: str = Field("", exclude=True)

    @field_validator("devices")
    @classmethod
    def _unique_ids(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        # parse_config reports duplicates with their line; this guards direct construction.
        if _duplicate_indexes([d.id for d in devices]):
            raise ValueError("device ids must be unique")
        return devices

    @model_validator(mode="after")
    def _queue_holds_the_window(self) -> Self:
        # Every unacknowledged message must fit in the ingest queue: the MQTT callback
        # queues without waiting, and flow control keeps the broker from sending more.
        if self.ingest.queue_max <= self.mqtt.receive_maximum:
            raise ValueError(
                f"ingest.queue_max ({self.ingest.queue_max}) must exceed mqtt.receive_maximum "
                f"({self.mqtt.receive_maximum}), the messages the broker may send unacknowledged"
            )
        return self

    @model_validator(mode="after")
    def _cluster_needs_postgres(self) -> Self:
        if self.cluster.enabled and not self.storage.postgres:
            raise ValueError(
                "cluster.enabled needs PostgreSQL storage (storage.url or COLDWATCH_DB=postgresql://...): "
                "the members share their readings, alarms and leases there"
            )
        return self

    def device_map(self) -> dict[str, DeviceConfig]:
        """Registered devices by id."""
        return {d.id: d for d in self.devices}


# --- loading -------------------------------------------------------------------------


def _duplicate_indexes(ids: list[object]) -> list[int]:
    """Indexes of entries whose id appeared earlier in the list."""
    seen: set[object] = set()
    duplicates = []
    for index, device_id in enumerate(ids):
        if device_id in seen:
            duplicates.append(index)
        seen.add(device_id)
    return duplicates


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers where every mapping key and sequence item starts."""


def _marks(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], str]) -> None:
    out[path] = f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = (
                f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
            )
            _marks(value_node, (*path, key), out)
            out[(*path, key)] = (
                f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
            )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _marks(item, (*path, index), out)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Collect ``COLDWATCH_*`` overrides as a nested dict, remembering which variable set what."""
    data: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for name, value in sorted(environ.items()):
        if name in SHORT_ENV:
            path = SHORT_ENV[name]
        elif name.startswith(ENV_PREFIX) and "__" in name:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        else:
            continue
        parsed: Any = value
        if path == ("devices",):
            parsed = yaml.safe_load(value)
        if name == "COLDWATCH_DB":
            # It chooses the backend whatever the file says: a path clears the file's URL, and
            # a URL in the path is moved to the URL by StorageConfig.
            data.setdefault("storage", {})["url"] = None
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parsed
        origin[path] = f"environment variable {name}"
    return data, origin


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate YAML ``text`` (plus environment overrides) into a :class:`Config`.

    Raises :class:`ConfigError` listing every problem with its location.
    """
    env = os.environ if environ is None else environ
    try:
        # libyaml where installed: a registry of 10,000 devices loads in a fraction of the
        # time and memory. Line numbers are only looked up when there is a problem.
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loaders
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {exc}")]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem(source, "the top level must be a mapping")])
    overrides, env_origin = _env_overrides(env)
    data = _merge(raw, overrides)
    digest = hashlib.sha256(text.encode()).hexdigest()
    marks = _LazyMarks(text)
    problems = _duplicate_problems(data, source, marks)
    try:
        config = Config.model_validate({**data, "source": source, "sha256": digest})
    except ValidationError as exc:
        problems += [
            _problem(err, source, marks, env_origin)
            for err in exc.errors()
            if not (problems and tuple(err["loc"]) == ("devices",))
        ]
    if problems:
        raise ConfigError(source, problems)
    return config


class _LazyMarks(Mapping[tuple[str | int, ...], str]):
    """Where each key and item of the YAML text starts, worked out on first use."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._marks: dict[tuple[str | int, ...], str] | None = None

    def _all(self) -> dict[tuple[str | int, ...], str]:
        if self._marks is None:
            self._marks = {}
            node = yaml.compose(self._text, Loader=_LineLoader)
            if node is not None:
                _marks(node, (), self._marks)
        return self._marks

    def __getitem__(self, key: tuple[str | int, ...]) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[tuple[str | int, ...]]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _duplicate_problems(
    data: dict[str, Any], source: str, marks: Mapping[tuple[str | int, ...], str]
) -> list[ConfigProblem]:
    devices = data.get("devices")
    if not isinstance(devices, list):
        return []
    ids = [d.get("id") if isinstance(d, dict) else None for d in devices]
    return [
        ConfigProblem(
            f"{source}, {marks.get(('devices', i), '?')} (devices.{i}.id)",
            f"device id {ids[i]!r} is registered twice",
        )
        for i in _duplicate_indexes(ids)
        if ids[i] is not None
    ]


def _problem(
    err: Any,
    source: str,
    marks: Mapping[tuple[str | int, ...], str],
    env_origin: dict[tuple[str, ...], str],
) -> ConfigProblem:
    loc: tuple[str | int, ...] = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and re.fullmatch(r"[a-z_]+\[.*\]|function-.*", p))
    )
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    where = source
    for end in range(len(loc), -1, -1):
        prefix = loc[:end]
        str_prefix = tuple(str(p) for p in prefix)
        if str_prefix in env_origin:
            where = env_origin[str_prefix]
            break
        if prefix in marks:
            where = f"{source}, {marks[prefix]}"
            break
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown setting (not allowed here)"
    return ConfigProblem(f"{where} ({dotted})", message)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [ConfigProblem(str(file), f"cannot read: {exc.strerror}")]) from exc
    return parse_config(text, str(file), environ)
