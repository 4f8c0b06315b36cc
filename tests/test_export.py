"""CSV export of stored readings for QA, from a real SQLite file."""

from __future__ import annotations

import csv
import io
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import DeviceConfig
from coldwatch.export import CSV_HEADER, format_ts, write_csv
from coldwatch.payload import Telemetry
from coldwatch.storage import Batch, SqliteStorage, open_storage
from tests.conftest import Backend

US = 1_000_000
T0 = 1_714_564_800 * US  # 2024-05-01T12:00:00Z
INC = DeviceConfig(id="inc-01", kind=Kind.INCUBATOR, site="plant-1", area="culture-lab")
CRYO = DeviceConfig(id="shipper-07", kind=Kind.CRYOSHIPPER, site="plant-1", area="dispatch")


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    """An open storage holding one incubator reading and one buffered cryoshipper reading."""
    store = SqliteStorage(tmp_path / "coldwatch.db")
    await store.open()
    await store.register_devices([INC, CRYO])
    await store.write_batch(
        Batch(
            readings=[
                (
                    Telemetry("inc-01", 7, T0 + 123_456, False, (("temp_c", 37.1), ("door_open", 1.0))),
                    T0 + 1_500_000,
                ),
                (
                    Telemetry(
                        "shipper-07", 3, T0 - 3600 * US, True, (("temp_c", -185.25), ("lid_open", 0.0))
                    ),
                    T0 + 2 * US,
                ),
            ]
        )
    )
    yield store
    await store.close()


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_csv_header_and_rows(storage: SqliteStorage) -> None:
    """The CSV has the documented header, RFC 3339 UTC times and booleans as true/false."""
    out = io.StringIO()

    count = await write_csv(storage, out)

    text = out.getvalue()
    assert text.splitlines()[0] == "device,kind,metric,ts,seq,value,received_at,buffered,out_of_calibration"
    assert _rows(text) == [
        list(CSV_HEADER),
        [
            "inc-01",
            "incubator",
            "door_open",
            "2024-05-01T12:00:00.123456+00:00",
            "7",
            "true",
            "2024-05-01T12:00:01.500000+00:00",
            "false",
            "1",
        ],
        [
            "inc-01",
            "incubator",
            "temp_c",
            "2024-05-01T12:00:00.123456+00:00",
            "7",
            "37.1",
            "2024-05-01T12:00:01.500000+00:00",
            "false",
            "1",
        ],
        [
            "shipper-07",
            "cryoshipper",
            "lid_open",
            "2024-05-01T11:00:00.000000+00:00",
            "3",
            "false",
            "2024-05-01T12:00:02.000000+00:00",
            "true",
            "1",
        ],
        [
            "shipper-07",
            "cryoshipper",
            "temp_c",
            "2024-05-01T11:00:00.000000+00:00",
            "3",
            "-185.25",
            "2024-05-01T12:00:02.000000+00:00",
            "true",
            "1",
        ],
    ]
    assert count == 4
    assert "\r" not in text


async def test_csv_times_parse_back_to_the_stored_instant(storage: SqliteStorage) -> None:
    """Every exported time is timezone-aware UTC and parses back to the exact microsecond."""
    out = io.StringIO()
    await write_csv(storage, out, device_id="inc-01")

    row = _rows(out.getvalue())[1]
    ts = datetime.fromisoformat(row[3])
    offset = ts.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert int(ts.timestamp()) * US + ts.microsecond == T0 + 123_456


async def test_csv_filters_are_passed_to_the_storage(storage: SqliteStorage) -> None:
    """Device and time filters narrow the CSV; the header is always written."""
    by_device = io.StringIO()
    by_time = io.StringIO()
    nothing = io.StringIO()

    assert await write_csv(storage, by_device, device_id="shipper-07") == 2
    assert await write_csv(storage, by_time, since_us=T0, until_us=T0 + US) == 2
    assert await write_csv(storage, nothing, since_us=T0 + 3600 * US) == 0

    assert {r[0] for r in _rows(by_device.getvalue())[1:]} == {"shipper-07"}
    assert {r[0] for r in _rows(by_time.getvalue())[1:]} == {"inc-01"}
    assert _rows(nothing.getvalue()) == [list(CSV_HEADER)]


@pytest.mark.parametrize(
    ("ts_us", "text"),
    [
        (T0, "2024-05-01T12:00:00.000000+00:00"),
        (T0 + 1, "2024-05-01T12:00:00.000001+00:00"),
        (T0 + 999_999, "2024-05-01T12:00:00.999999+00:00"),
        (946_684_800 * US, "2000-01-01T00:00:00.000000+00:00"),
    ],
)
def test_format_ts_is_rfc3339_utc_with_microseconds(ts_us: int, text: str) -> None:
    """format_ts renders epoch microseconds as RFC 3339 UTC without losing a microsecond."""
    assert format_ts(ts_us) == text


async def test_export_into_a_closed_pipe_ends_quietly(storage: SqliteStorage, tmp_path: Path) -> None:
    """`coldwatch export ... | head -1`: the reader leaving early is no error and prints no traceback."""
    for seq in range(2, 3000):
        await storage.write_batch(
            Batch(readings=[(Telemetry("inc-01", seq, T0 + seq * US, False, (("temp_c", 37.0),)), T0)])
        )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"storage: {{path: '{storage.path}'}}\ndevices: [{{id: inc-01, kind: incubator, site: s, area: a}}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    command = (
        f"{shlex.quote(sys.executable)} -m coldwatch export --config {shlex.quote(str(config))} | head -1"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.stdout.splitlines() == [",".join(CSV_HEADER)]
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 0, done.stderr


async def test_readings_with_the_same_time_are_told_apart_by_seq(tmp_path: Path, backend: Backend) -> None:
    """Two readings of one device with the same timestamp export as two rows, each with its own seq."""
    store = open_storage(backend.location)
    await store.open()
    try:
        await store.register_devices([INC])
        await store.write_batch(
            Batch(
                readings=[
                    (Telemetry("inc-01", seq, T0, False, (("temp_c", value),)), T0 + US)
                    for seq, value in ((41, 37.0), (42, 37.4))
                ]
            )
        )
        out = io.StringIO()
        assert await write_csv(store, out) == 2
    finally:
        await store.close()
    rows = [dict(zip(CSV_HEADER, r, strict=True)) for r in _rows(out.getvalue())[1:]]
    assert [(r["ts"], r["seq"], r["value"]) for r in rows] == [
        (format_ts(T0), "41", "37.0"),
        (format_ts(T0), "42", "37.4"),
    ]
