"""A trigger (or rule) slipped onto the trail's tables that makes entries vanish is reported and removed."""

from __future__ import annotations

from pathlib import Path

from coldwatch.broker import RunningBroker
from coldwatch.config import load_config
from tests.conftest import Backend, db_query, running_daemon
from tests.test_api import api_users
from tests.test_audit_trail_e2e import attack, audited, coldwatch, export_public_key, verdict

__all__ = ["api_users", "audited"]


def silencers(backend: Backend) -> list[str]:
    """Statements that, with every guard in place, make acknowledgements and seals vanish on insert."""
    if backend.postgres:
        return [
            "CREATE FUNCTION zz_quiet() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
            (
                "CREATE TRIGGER zz_quiet BEFORE INSERT ON audit_log FOR EACH ROW"
                " WHEN (NEW.action = 'alarm.acknowledged') EXECUTE FUNCTION zz_quiet()"
            ),
            (
                "CREATE RULE zz_rule AS ON INSERT TO audit_seals"
                " WHERE NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq) DO INSTEAD NOTHING"
            ),
        ]
    return [
        (
            "CREATE TRIGGER zz_quiet BEFORE INSERT ON audit_log WHEN NEW.action = 'alarm.acknowledged'"
            " BEGIN SELECT RAISE(IGNORE); END"
        ),
        (
            "CREATE TRIGGER zz_seals BEFORE INSERT ON audit_seals"
            " WHEN NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq) BEGIN SELECT RAISE(IGNORE); END"
        ),
    ]


async def test_a_foreign_trigger_on_the_trail_is_reported_and_removed_at_start(
    audited: Path, backend: Backend, broker: RunningBroker
) -> None:
    """verify names a trigger or rule it did not create on the trail's tables; the next start removes it."""
    key = export_public_key(audited)
    attack(backend.location, *silencers(backend))
    result = coldwatch(audited, "audit", "verify", "--public-key", str(key))
    assert result.returncode == 1, result.stdout
    assert verdict(result) == ("guards", None), result.stdout
    assert "zz_quiet foreign" in result.stdout
    async with running_daemon(load_config(audited, environ={})):
        pass
    again = coldwatch(audited, "audit", "verify", "--public-key", str(key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "append-only guards: all in place" in again.stdout
    assert "zz_quiet (foreign" in again.stdout
    if backend.postgres:
        left = db_query(
            backend.location,
            "SELECT tgname FROM pg_trigger WHERE tgname = 'zz_quiet'"
            " UNION ALL SELECT rulename FROM pg_rules WHERE rulename = 'zz_rule'",
        )
    else:
        left = db_query(backend.location, "SELECT name FROM sqlite_master WHERE name LIKE 'zz_%'")
    assert left == []
