"""The tables of GMP records: instruments and calibration, batches, shipments, reports.

One migration script per backend (appended to ``MIGRATIONS`` and ``MIGRATIONS_PG``;
never edit it once released). The monitoring point (a device id, where readings belong)
is kept apart from the instrument that measures it: ``point_instruments`` says which
instrument measured which point when, so swapping an instrument for calibration keeps the
point's history and records the swap.

Records are append-only where a correction must leave the original visible:

- a calibration is never changed; a wrong entry is corrected by a new record that names
  the one it supersedes (``supersedes``), with its own signature;
- a batch's places and times are kept per registration version: an amendment adds a new
  version of the whole set (``batch_stays.version``) and never rewrites an earlier one;
- a generated report keeps the PDF and the figures it showed (``reports.pdf``,
  ``reports.data``) with their SHA-256, so a QA signature binds to exactly what was read.

Every creation and every signature is also an entry of the sealed audit trail, written in
the same transaction by the module that creates the record.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RECORDS_SCHEMA", "RECORDS_SCHEMA_PG"]

_RECORDS: Final = """
    CREATE TABLE instruments (
        id {id},
        serial TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        manufacturer TEXT NOT NULL,
        created_us {big} NOT NULL,
        created_by TEXT NOT NULL
    );
    -- Which instrument measured a monitoring point, from when until when (NULL: now).
    CREATE TABLE point_instruments (
        id {id},
        device_id TEXT NOT NULL,
        instrument_id {big} NOT NULL REFERENCES instruments(id),
        from_us {big} NOT NULL,
        until_us {big},
        installed_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        removed_by TEXT,
        removed_reason TEXT
    );
    CREATE UNIQUE INDEX point_instruments_current ON point_instruments(device_id) WHERE until_us IS NULL;
    CREATE UNIQUE INDEX instruments_in_one_place ON point_instruments(instrument_id) WHERE until_us IS NULL;
    CREATE INDEX point_instruments_by_point ON point_instruments(device_id, from_us);
    -- Calibration records of an instrument; signed; never changed (see supersedes).
    CREATE TABLE calibrations (
        id {id},
        instrument_id {big} NOT NULL REFERENCES instruments(id),
        performed_us {big} NOT NULL,
        due_us {big} NOT NULL,
        certificate TEXT NOT NULL,
        as_found TEXT NOT NULL,
        as_left TEXT NOT NULL,
        performed_by TEXT NOT NULL,
        passed {bool} NOT NULL,
        supersedes {big} REFERENCES calibrations(id),
        recorded_us {big} NOT NULL,
        recorded_by TEXT NOT NULL
    );
    CREATE INDEX calibrations_by_instrument ON calibrations(instrument_id, performed_us);
    -- Production batches: lot id, product and the chain-of-identity id, stored as given.
    CREATE TABLE batches (
        id {id},
        lot TEXT NOT NULL UNIQUE,
        product TEXT NOT NULL,
        coi TEXT NOT NULL,
        version INTEGER NOT NULL,
        registered_us {big} NOT NULL,
        registered_by TEXT NOT NULL
    );
    -- The places a batch used (an area: site and area; or a device: an incubator, a dewar)
    -- and when, per registration version; the batch's current version is batches.version.
    CREATE TABLE batch_stays (
        id {id},
        batch_id {big} NOT NULL REFERENCES batches(id),
        version INTEGER NOT NULL,
        site TEXT NOT NULL,
        area TEXT,
        device_id TEXT,
        from_us {big} NOT NULL,
        until_us {big} NOT NULL,
        CHECK (until_us > from_us),
        CHECK (area IS NOT NULL OR device_id IS NOT NULL)
    );
    CREATE INDEX batch_stays_by_batch ON batch_stays(batch_id, version);
    -- Shipments on a cryoshipper, from dispatch to receipt; each end is signed.
    CREATE TABLE shipments (
        id {id},
        device_id TEXT NOT NULL,
        coi TEXT NOT NULL,
        origin TEXT NOT NULL,
        destination TEXT NOT NULL,
        required_hold_s {big} NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('in_transit', 'received')),
        dispatched_us {big} NOT NULL,
        dispatched_by TEXT NOT NULL,
        dispatch_forecast_s DOUBLE PRECISION,
        received_us {big},
        received_by TEXT
    );
    CREATE UNIQUE INDEX shipments_one_open ON shipments(device_id) WHERE state = 'in_transit';
    CREATE INDEX shipments_by_device ON shipments(device_id, dispatched_us);
    -- Every generated report, with exactly what it showed (PDF and figures) and where the
    -- audit chain stood when it was generated.
    CREATE TABLE reports (
        id {id},
        kind TEXT NOT NULL CHECK (kind IN ('excursion', 'periodic', 'batch', 'shipment')),
        subject TEXT NOT NULL,
        query TEXT NOT NULL,
        generated_us {big} NOT NULL,
        generated_by TEXT NOT NULL,
        audit_head_seq {big} NOT NULL,
        audit_head_hash TEXT NOT NULL,
        pdf {blob} NOT NULL,
        pdf_sha256 TEXT NOT NULL,
        data TEXT NOT NULL,
        data_sha256 TEXT NOT NULL,
        path TEXT
    );
    CREATE INDEX reports_by_kind ON reports(kind, generated_us);
"""

RECORDS_SCHEMA: Final = (
    _RECORDS.format(id="INTEGER PRIMARY KEY", big="INTEGER", bool="INTEGER", blob="BLOB")
    + """
    CREATE TRIGGER calibrations_no_update BEFORE UPDATE ON calibrations
    BEGIN
        SELECT RAISE(ABORT, 'calibration records are append-only: UPDATE refused');
    END;
    CREATE TRIGGER calibrations_no_delete BEFORE DELETE ON calibrations
    BEGIN
        SELECT RAISE(ABORT, 'calibration records are append-only: DELETE refused');
    END;
    CREATE TRIGGER reports_no_update BEFORE UPDATE ON reports
    BEGIN
        SELECT RAISE(ABORT, 'generated reports are append-only: UPDATE refused');
    END;
    CREATE TRIGGER reports_no_delete BEFORE DELETE ON reports
    BEGIN
        SELECT RAISE(ABORT, 'generated reports are append-only: DELETE refused');
    END;
    CREATE TRIGGER batch_stays_no_update BEFORE UPDATE ON batch_stays
    BEGIN
        SELECT RAISE(ABORT, 'batch stays are kept per version: UPDATE refused');
    END;
    """
)

RECORDS_SCHEMA_PG: Final = (
    _RECORDS.format(
        id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", big="BIGINT", bool="BOOLEAN", blob="BYTEA"
    )
    + """
    CREATE TRIGGER calibrations_append_only BEFORE UPDATE OR DELETE ON calibrations FOR EACH ROW
        EXECUTE FUNCTION coldwatch_refuse('calibration records are append-only');
    CREATE TRIGGER reports_append_only BEFORE UPDATE OR DELETE ON reports FOR EACH ROW
        EXECUTE FUNCTION coldwatch_refuse('generated reports are append-only');
    CREATE TRIGGER batch_stays_no_update BEFORE UPDATE ON batch_stays FOR EACH ROW
        EXECUTE FUNCTION coldwatch_refuse('batch stays are kept per version');
    """
)
