"""What user actions on alarms leave in the record, and filters that cannot silently match nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.export import format_ts
from tests.conftest import Backend, db_query, raise_comm_loss, running_daemon, silent_incubator_config
from tests.test_api_robust import SHELVING, api_section, auth, config_for, olga, with_people


async def test_a_shelve_records_its_end_and_an_unshelve_needs_a_shelve(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """The audit entry of a shelve names its end; unshelving an alarm that is not shelved is a 409."""
    config = config_for(tmp_path, broker, prefix, backend)
    until = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
    ):
        await with_people(backend, config)
        await raise_comm_loss(broker, config, running)
        unshelve = olga("unshelved, responsible", reason="x")
        never = await client.post("/api/v1/alarms/1/unshelve", json=unshelve)
        assert never.status_code == 409, never.text
        assert "not shelved" in never.json()["detail"]
        shelved = await client.post(
            "/api/v1/alarms/1/shelve", json=olga(SHELVING, reason="logger swap", until=until.isoformat())
        )
        assert shelved.status_code == 200, shelved.text
        ended = await client.post(
            "/api/v1/alarms/1/unshelve", json=olga("unshelved, responsible", reason="done")
        )
        assert ended.status_code == 200, ended.text
        again = await client.post("/api/v1/alarms/1/unshelve", json=unshelve)
        assert again.status_code == 409, again.text
    rows = db_query(
        backend.location,
        "SELECT action, new_value, reason FROM audit_log WHERE action LIKE 'alarm.%shelved' ORDER BY seq",
    )
    expected_end = format_ts(int(until.timestamp()) * 1_000_000)
    assert [(r[0], r[2]) for r in rows] == [("alarm.shelved", "logger swap"), ("alarm.unshelved", "done")]
    assert rows[0][1].endswith(f"shelved until {expected_end}"), rows[0][1]
    raised = db_query(backend.location, "SELECT reason FROM audit_log WHERE action = 'alarm.raised'")
    assert "None" not in raised[0][0], raised[0][0]


async def test_an_unknown_state_or_severity_filter_is_refused(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A misspelt state or severity in the alarm list is a 422 naming the choices, not an empty list."""
    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    config = config_for(tmp_path, broker, prefix, backend)
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=10) as client,
    ):
        await raise_comm_loss(broker, config, running)
        for query, choice in (
            ("state=active_unacked", "active_unacknowledged"),
            ("severity=critical", "action"),
        ):
            refused = await client.get(f"/api/v1/alarms?{query}", headers=auth("viewer"))
            assert refused.status_code == 422, refused.text
            assert choice in refused.text
        found = await client.get(
            "/api/v1/alarms?state=active_unacknowledged&severity=action", headers=auth("viewer")
        )
        assert found.status_code == 200, found.text
        assert [a["id"] for a in found.json()] == [1]


async def test_a_user_without_a_token_is_named_at_start(
    broker: RunningBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A configured API user with neither a token hash nor a token variable is warned about at start-up."""
    api = api_section()
    api["users"]["qa.reader"] = {"role": "viewer"}  # type: ignore[index]
    config = silent_incubator_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, api=api, database=str(tmp_path / "c.db")
    )
    with caplog.at_level(logging.WARNING, logger="coldwatch.api"):
        async with running_daemon(config):
            pass
    named = [r.getMessage() for r in caplog.records if "qa.reader" in r.getMessage()]
    expected = (
        "api user 'qa.reader' has no token (neither token_sha256 nor COLDWATCH_TOKEN_QA_READER):"
        " it cannot log in"
    )
    assert named == [expected]
    assert not [r for r in caplog.records if "'olga'" in r.getMessage()]
