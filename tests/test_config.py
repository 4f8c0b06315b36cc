"""Configuration: YAML validation with locations, environment overrides and check-config."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coldwatch.catalogue import Kind
from coldwatch.cli import main
from coldwatch.config import Config, load_config, parse_broker_url, parse_config
from coldwatch.errors import ConfigError

VALID = """\
mqtt:
  url: mqtts://collector:s3cret@broker.example
  topic_prefix: plant
storage:
  path: /var/lib/coldwatch/readings.db
  batch_max: 200
http:
  listen: 0.0.0.0:9100
devices:
  - {id: pc-fill-a1, kind: particle_counter, site: plant-1, area: fill-suite, grade: A}
  - {id: inc-01, kind: incubator, site: plant-1, area: culture-lab}
"""


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    """Parse ``text`` expecting a ConfigError; return its problems as strings."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml", {} if environ is None else environ)
    assert caught.value.source == "cfg.yaml"
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Remove every COLDWATCH_* variable so the host environment cannot leak into a test."""
    for name in list(os.environ):
        if name.startswith("COLDWATCH_"):
            monkeypatch.delenv(name)
    return {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}


# --- a valid file ----------------------------------------------------------------------


def test_valid_file_loads_every_section(tmp_path: Path) -> None:
    """A valid file is loaded into typed sections, with its source path and content digest."""
    path = tmp_path / "coldwatch.yaml"
    path.write_text(VALID, encoding="utf-8")

    config = load_config(path, environ={})

    assert config.source == str(path)
    assert config.sha256 == hashlib.sha256(VALID.encode()).hexdigest()
    assert config.mqtt.topic_prefix == "plant"
    assert config.storage.path == Path("/var/lib/coldwatch/readings.db")
    assert config.storage.batch_max == 200
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9100)
    assert [d.id for d in config.devices] == ["pc-fill-a1", "inc-01"]
    assert config.device_map()["pc-fill-a1"].kind is Kind.PARTICLE_COUNTER
    assert config.device_map()["pc-fill-a1"].grade == "A"
    assert config.device_map()["inc-01"].grade is None


def test_empty_file_gives_defaults() -> None:
    """An empty file is valid and yields the documented defaults."""
    config = parse_config("", "empty.yaml", {})

    assert config == Config(source="empty.yaml", sha256=hashlib.sha256(b"").hexdigest())
    assert config.mqtt.broker.port == 1883
    assert config.devices == []


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is reported as a ConfigError naming the file."""
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert [p.where for p in caught.value.problems] == [str(path)]
    assert "cannot read" in caught.value.problems[0].message


# --- mistakes are located --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        pytest.param(
            "mqtt:\n  url: mqtt://h\n  bogus: 1\n",
            "cfg.yaml, line 3, column 3 (mqtt.bogus)",
            "unknown setting",
            id="unknown-key",
        ),
        pytest.param(
            "mqtt:\n  url: http://broker\n",
            "cfg.yaml, line 2, column 3 (mqtt.url)",
            "must start with mqtt:// or mqtts://",
            id="bad-url-scheme",
        ),
        pytest.param(
            "mqtt:\n  client_id: x\n  url: mqtt://broker:99999\n",
            "cfg.yaml, line 3, column 3 (mqtt.url)",
            "invalid port",
            id="bad-url-port",
        ),
        pytest.param(
            "http:\n  listen: localhost\n",
            "cfg.yaml, line 2, column 3 (http.listen)",
            "listen must be host:port",
            id="bad-listen",
        ),
        pytest.param(
            "devices:\n"
            "  - {id: inc-01, kind: incubator, site: s, area: a}\n"
            "  - {id: pc-1, kind: particle_counter, site: s, area: a}\n",
            "cfg.yaml, line 3, column 5 (devices.1)",
            "needs its cleanroom grade",
            id="particle-counter-without-grade",
        ),
        pytest.param(
            "devices:\n  - {id: inc-01, kind: incubator, site: s, area: a, grade: B}\n",
            "cfg.yaml, line 2, column 5 (devices.0)",
            "only a particle_counter has a cleanroom grade",
            id="grade-on-incubator",
        ),
        pytest.param(
            "devices:\n  - {id: inc-01, kind: incubator, site: s, area: a, ships: false}\n",
            "cfg.yaml, line 2, column 5 (devices.0)",
            "only a cryoshipper ships",
            id="ships-on-incubator",
        ),
        pytest.param(
            "devices:\n  - {id: x-1, kind: toaster, site: s, area: a}\n",
            "cfg.yaml, line 2, column 15 (devices.0.kind)",
            "'particle_counter', 'incubator' or 'cryoshipper'",
            id="unknown-kind",
        ),
        pytest.param(
            "storage:\n  path: a.db\n  batch_max: 0\n",
            "cfg.yaml, line 3, column 3 (storage.batch_max)",
            "greater than or equal to 1",
            id="out-of-range-number",
        ),
    ],
)
def test_mistake_is_reported_with_file_line_column_and_path(text: str, where: str, message: str) -> None:
    """Each kind of mistake is reported once, with file, line, column and dotted setting path."""
    problems = _problems(text)

    assert len(problems) == 1
    assert problems[0].startswith(f"{where}: ")
    assert message in problems[0]


def test_duplicate_device_id_points_at_the_duplicate() -> None:
    """A device id registered twice is reported at the second entry, not only at `devices:`."""
    text = (
        "devices:\n"
        "  - {id: inc-01, kind: incubator, site: s, area: a}\n"
        "  - {id: inc-02, kind: incubator, site: s, area: a}\n"
        "  - {id: inc-01, kind: incubator, site: s, area: b}\n"
    )

    problems = _problems(text)

    assert len(problems) == 1
    assert "registered twice" in problems[0]
    assert "'inc-01'" in problems[0]
    # The mistake is on line 4 (the second inc-01); pointing at line 1 leaves the reader
    # to search a list of possibly hundreds of devices.
    assert problems[0].startswith("cfg.yaml, line 4, column 5 (devices.2")


def test_every_mistake_in_a_file_is_reported_at_once() -> None:
    """Several mistakes in one file are all listed, each at its own location."""
    text = "mqtt:\n  bogus: 1\nhttp:\n  listen: nowhere\n"

    problems = _problems(text)

    assert len(problems) == 2
    assert any(p.startswith("cfg.yaml, line 2, column 3 (mqtt.bogus): ") for p in problems)
    assert any(p.startswith("cfg.yaml, line 4, column 3 (http.listen): ") for p in problems)


def test_yaml_syntax_error_is_located() -> None:
    """A YAML syntax error is reported with the file, line and column where parsing failed."""
    problems = _problems("mqtt:\n  url: mqtt://h\n   bad: 1\n")

    assert len(problems) == 1
    assert problems[0].startswith("cfg.yaml, line 3, column 7: not valid YAML")


def test_top_level_must_be_a_mapping() -> None:
    """A file whose top level is a list is refused with a clear message."""
    assert _problems("- mqtt\n- http\n") == ["cfg.yaml: the top level must be a mapping"]


# --- environment overrides -------------------------------------------------------------


def test_short_environment_names_win_over_the_file() -> None:
    """COLDWATCH_MQTT_URL, COLDWATCH_DB and COLDWATCH_HTTP_LISTEN replace the file's values."""
    environ = {
        "COLDWATCH_MQTT_URL": "mqtt://other-broker:1999",
        "COLDWATCH_DB": "/tmp/override.db",
        "COLDWATCH_HTTP_LISTEN": "127.0.0.1:0",
    }

    config = parse_config(VALID, "cfg.yaml", environ)

    assert config.mqtt.url == "mqtt://other-broker:1999"
    assert (config.mqtt.broker.host, config.mqtt.broker.port) == ("other-broker", 1999)
    assert config.storage.path == Path("/tmp/override.db")
    assert config.http.listen == "127.0.0.1:0"
    # Settings the environment did not touch keep the file's values.
    assert config.mqtt.topic_prefix == "plant"
    assert config.storage.batch_max == 200


@pytest.mark.parametrize(
    ("storage", "env", "location", "url"),
    [
        ("{url: 'postgresql://cw@db/cw'}", "/tmp/override.db", "/tmp/override.db", None),
        ("{path: /tmp/file.db}", "postgresql://cw@db/cw", "postgresql://cw@db/cw", "postgresql://cw@db/cw"),
        ("{path: 'postgresql://cw@db/cw'}", "/tmp/override.db", "/tmp/override.db", None),
    ],
    ids=["path-over-file-url", "url-over-file-path", "path-over-url-in-path"],
)
def test_coldwatch_db_chooses_the_backend_whatever_the_file_says(
    storage: str, env: str, location: str, url: str | None
) -> None:
    """COLDWATCH_DB wins over the file in both directions: a SQLite path is never ignored."""
    config = parse_config(f"storage: {storage}\n", "cfg.yaml", {"COLDWATCH_DB": env})

    assert config.storage.location == location
    assert config.storage.url == url


def test_section_key_environment_names_win_over_the_file() -> None:
    """COLDWATCH_<SECTION>__<KEY> overrides one setting, coerced to the setting's type."""
    environ = {
        "COLDWATCH_STORAGE__BATCH_MAX": "1000",
        "COLDWATCH_INGEST__MAX_FUTURE_SKEW_S": "12.5",
        "COLDWATCH_MQTT__RECONNECT__MAX_S": "5",
    }

    config = parse_config(VALID, "cfg.yaml", environ)

    assert config.storage.batch_max == 1000
    assert config.ingest.max_future_skew_s == 12.5
    assert config.mqtt.reconnect.max_s == 5.0
    assert config.storage.path == Path("/var/lib/coldwatch/readings.db")


def test_unrelated_environment_variables_are_ignored() -> None:
    """Variables without the COLDWATCH_ prefix or the __ separator do not change the config."""
    environ = {"COLDWATCH_VERBOSE": "1", "HOME": "/root", "STORAGE__BATCH_MAX": "0"}

    assert parse_config(VALID, "cfg.yaml", environ) == parse_config(VALID, "cfg.yaml", {})


def test_process_environment_is_used_by_default(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit mapping, load_config reads overrides from os.environ."""
    path = tmp_path / "coldwatch.yaml"
    path.write_text(VALID, encoding="utf-8")
    monkeypatch.setenv("COLDWATCH_DB", str(tmp_path / "env.db"))

    config = load_config(path)

    assert config.storage.path == tmp_path / "env.db"


@pytest.mark.parametrize(
    ("name", "value", "where", "message"),
    [
        (
            "COLDWATCH_HTTP_LISTEN",
            "nope",
            "environment variable COLDWATCH_HTTP_LISTEN (http.listen)",
            "host:port",
        ),
        ("COLDWATCH_MQTT_URL", "mqtt://h:abc", "environment variable COLDWATCH_MQTT_URL (mqtt.url)", "port"),
        (
            "COLDWATCH_STORAGE__BATCH_MAX",
            "zero",
            "environment variable COLDWATCH_STORAGE__BATCH_MAX (storage.batch_max)",
            "valid integer",
        ),
        (
            "COLDWATCH_STORAGE__BOGUS",
            "1",
            "environment variable COLDWATCH_STORAGE__BOGUS (storage.bogus)",
            "unknown setting",
        ),
    ],
)
def test_bad_environment_override_names_the_variable(name: str, value: str, where: str, message: str) -> None:
    """A bad override is reported against the environment variable, not the file's line."""
    problems = _problems(VALID, {name: value})

    assert len(problems) == 1
    assert problems[0].startswith(f"{where}: ")
    assert message in problems[0]


# --- broker URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.example", "broker.example", 1883, False),
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("mqtt://broker.example:1884", "broker.example", 1884, False),
        ("mqtts://10.0.0.5:9883", "10.0.0.5", 9883, True),
    ],
)
def test_broker_url_host_port_and_tls(url: str, host: str, port: int, tls: bool) -> None:
    """The scheme selects TLS and the default port (1883, or 8883 for mqtts)."""
    broker = parse_broker_url(url)

    assert (broker.host, broker.port, broker.tls) == (host, port, tls)
    assert broker.username is None
    assert broker.password is None


def test_broker_url_credentials_are_unquoted_and_secret() -> None:
    """User and password are percent-decoded, and the password is hidden from repr."""
    broker = parse_broker_url("mqtts://qa%40plant:p%3Ass%2Fw0rd@broker.example")

    assert broker.username == "qa@plant"
    assert broker.password is not None
    assert broker.password.get_secret_value() == "p:ss/w0rd"
    assert "p:ss/w0rd" not in repr(broker)
    assert broker.port == 8883


def test_config_exposes_parsed_broker() -> None:
    """MqttConfig.broker parses the configured URL, credentials included."""
    config = parse_config(VALID, "cfg.yaml", {})

    broker = config.mqtt.broker
    assert (broker.host, broker.port, broker.tls, broker.username) == (
        "broker.example",
        8883,
        True,
        "collector",
    )
    assert broker.password is not None
    assert broker.password.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://broker:99999", "invalid port"),
        ("mqtt://broker:port", "invalid port"),
        ("tcp://broker:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://:1883", "no host"),
    ],
)
def test_bad_broker_url_is_refused(url: str, message: str) -> None:
    """A broker URL with a bad port, scheme or no host raises ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        parse_broker_url(url)


# --- check-config ----------------------------------------------------------------------


def test_check_config_ok_exits_0(
    tmp_path: Path, clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints a summary of a valid file and exits 0."""
    path = tmp_path / "coldwatch.yaml"
    path.write_text(VALID, encoding="utf-8")

    code = main(["check-config", str(path)])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"{path}: OK (1 incubator, 1 particle_counter; sha256 ")
    assert hashlib.sha256(VALID.encode()).hexdigest()[:12] in out


def test_check_config_bad_file_prints_each_problem_and_exits_2(
    tmp_path: Path, clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints every problem with its file and line on stderr and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  bogus: 1\nhttp:\n  listen: nowhere\n", encoding="utf-8")

    code = main(["check-config", str(path)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any(line.startswith(f"error: {path}, line 2, column 3 (mqtt.bogus): ") for line in errors)
    assert any(line.startswith(f"error: {path}, line 4, column 3 (http.listen): ") for line in errors)
    assert f"{path}: 2 problem(s)" in captured.err


def test_check_config_as_a_subprocess(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """`python -m coldwatch check-config` exits 0 for a valid file and 2 for an invalid one."""
    good = tmp_path / "good.yaml"
    good.write_text(VALID, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  - {id: pc-1, kind: particle_counter, site: s, area: a}\n", encoding="utf-8")

    ok = subprocess.run(
        [sys.executable, "-m", "coldwatch", "check-config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
        check=False,
    )
    failed = subprocess.run(
        [sys.executable, "-m", "coldwatch", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
        check=False,
    )

    assert ok.returncode == 0, ok.stderr
    assert f"{good}: OK" in ok.stdout
    assert failed.returncode == 2, failed.stderr
    assert f"error: {bad}, line 2, column 5 (devices.0): " in failed.stderr
    assert "cleanroom grade" in failed.stderr
