"""The tables of people's accounts, sessions, service tokens, signatures and reviews.

One migration script per backend (appended to ``MIGRATIONS`` and ``MIGRATIONS_PG``;
never edit it once released). Names of accounts and service tokens are primary keys and
rows are never deleted, so a name is never reused (21 CFR 11.100(a)); signatures and
reviews refuse UPDATE and DELETE (defence in depth: their binding to the audit chain is
what proves them, coldwatch.signatures).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["IDENTITY_SCHEMA", "IDENTITY_SCHEMA_PG", "INSERT_SIGNATURE", "pg_placeholders"]

INSERT_SIGNATURE: Final = (
    "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
    "signed_us, record_hash, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MARK = re.compile(r"\?")


def pg_placeholders(sql: str) -> str:
    """SQL written with ``?`` placeholders (SQLite's), numbered for PostgreSQL (``$1``, ``$2``, ...).

    Only for this project's own statements, which hold no ``?`` inside literals.
    """
    count = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(count)}", sql)


_ROLES = "('viewer', 'operator', 'qa', 'admin')"
_IMPACTS = "('no_impact', 'under_investigation', 'deviation_opened')"

IDENTITY_SCHEMA: Final = f"""
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        full_name TEXT NOT NULL CHECK (length(trim(full_name)) > 0),
        role TEXT NOT NULL CHECK (role IN {_ROLES}),
        source TEXT NOT NULL DEFAULT 'local',
        password_hash TEXT,
        must_change INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked_until_us INTEGER,
        created_us INTEGER NOT NULL
    );
    CREATE TRIGGER users_never_deleted BEFORE DELETE ON users
    BEGIN
        SELECT RAISE(ABORT, 'accounts are never deleted (names are never reused): disable instead');
    END;
    CREATE TABLE password_history (
        user_name TEXT NOT NULL REFERENCES users(name),
        password_hash TEXT NOT NULL,
        set_us INTEGER NOT NULL
    );
    CREATE INDEX password_history_by_user ON password_history(user_name, set_us);
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        client TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        last_seen_us INTEGER NOT NULL,
        signed_us INTEGER,
        ended_us INTEGER,
        end_reason TEXT
    );
    CREATE INDEX sessions_by_user ON sessions(user_name);
    CREATE TABLE service_tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN {_ROLES}),
        token_hash TEXT NOT NULL UNIQUE,
        created_us INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked_us INTEGER,
        revoked_by TEXT
    );
    CREATE TRIGGER service_tokens_never_deleted BEFORE DELETE ON service_tokens
    BEGIN
        SELECT RAISE(ABORT, 'service tokens are never deleted (names are never reused): revoke instead');
    END;
    CREATE TABLE signatures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        action TEXT NOT NULL,
        signer TEXT NOT NULL,
        full_name TEXT NOT NULL,
        meaning TEXT NOT NULL,
        reason TEXT NOT NULL,
        signed_us INTEGER NOT NULL,
        record_hash TEXT NOT NULL CHECK (length(record_hash) = 64),
        content TEXT NOT NULL
    );
    CREATE INDEX signatures_by_object ON signatures(object_type, object_id);
    CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
    BEGIN
        SELECT RAISE(ABORT, 'signatures are append-only: UPDATE refused');
    END;
    CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
    BEGIN
        SELECT RAISE(ABORT, 'signatures are append-only: DELETE refused');
    END;
    CREATE TABLE alarm_reviews (
        alarm_id INTEGER PRIMARY KEY,
        impact TEXT NOT NULL CHECK (impact IN {_IMPACTS}),
        deviation_ref TEXT,
        root_cause TEXT NOT NULL,
        comment TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        reviewed_us INTEGER NOT NULL,
        CHECK (impact <> 'deviation_opened' OR length(trim(coalesce(deviation_ref, ''))) > 0)
    );
    CREATE TRIGGER alarm_reviews_no_update BEFORE UPDATE ON alarm_reviews
    BEGIN
        SELECT RAISE(ABORT, 'reviews are append-only: UPDATE refused');
    END;
    CREATE TRIGGER alarm_reviews_no_delete BEFORE DELETE ON alarm_reviews
    BEGIN
        SELECT RAISE(ABORT, 'reviews are append-only: DELETE refused');
    END;
"""

IDENTITY_SCHEMA_PG: Final = f"""
    CREATE FUNCTION coldwatch_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '%', TG_ARGV[0];
    END $$;
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        full_name TEXT NOT NULL CHECK (length(trim(full_name)) > 0),
        role TEXT NOT NULL CHECK (role IN {_ROLES}),
        source TEXT NOT NULL DEFAULT 'local',
        password_hash TEXT,
        must_change INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked_until_us BIGINT,
        created_us BIGINT NOT NULL
    );
    CREATE TRIGGER users_never_deleted BEFORE DELETE ON users FOR EACH ROW EXECUTE FUNCTION
        coldwatch_refuse('accounts are never deleted (names are never reused): disable instead');
    CREATE TABLE password_history (
        user_name TEXT NOT NULL REFERENCES users(name),
        password_hash TEXT NOT NULL,
        set_us BIGINT NOT NULL
    );
    CREATE INDEX password_history_by_user ON password_history(user_name, set_us);
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        client TEXT NOT NULL,
        created_us BIGINT NOT NULL,
        last_seen_us BIGINT NOT NULL,
        signed_us BIGINT,
        ended_us BIGINT,
        end_reason TEXT
    );
    CREATE INDEX sessions_by_user ON sessions(user_name);
    CREATE TABLE service_tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN {_ROLES}),
        token_hash TEXT NOT NULL UNIQUE,
        created_us BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        revoked_us BIGINT,
        revoked_by TEXT
    );
    CREATE TRIGGER service_tokens_never_deleted BEFORE DELETE ON service_tokens FOR EACH ROW
        EXECUTE FUNCTION
        coldwatch_refuse('service tokens are never deleted (names are never reused): revoke instead');
    CREATE TABLE signatures (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        action TEXT NOT NULL,
        signer TEXT NOT NULL,
        full_name TEXT NOT NULL,
        meaning TEXT NOT NULL,
        reason TEXT NOT NULL,
        signed_us BIGINT NOT NULL,
        record_hash TEXT NOT NULL CHECK (length(record_hash) = 64),
        content TEXT NOT NULL
    );
    CREATE INDEX signatures_by_object ON signatures(object_type, object_id);
    CREATE TRIGGER signatures_append_only BEFORE UPDATE OR DELETE ON signatures FOR EACH ROW
        EXECUTE FUNCTION coldwatch_refuse('signatures are append-only');
    CREATE TABLE alarm_reviews (
        alarm_id BIGINT PRIMARY KEY,
        impact TEXT NOT NULL CHECK (impact IN {_IMPACTS}),
        deviation_ref TEXT,
        root_cause TEXT NOT NULL,
        comment TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        reviewed_us BIGINT NOT NULL,
        CHECK (impact <> 'deviation_opened' OR length(trim(coalesce(deviation_ref, ''))) > 0)
    );
    CREATE TRIGGER alarm_reviews_append_only BEFORE UPDATE OR DELETE ON alarm_reviews FOR EACH ROW
        EXECUTE FUNCTION coldwatch_refuse('reviews are append-only');
"""
