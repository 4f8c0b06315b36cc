"""CSV export of stored readings for QA."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Final, TextIO

from coldwatch.catalogue import KINDS, Kind
from coldwatch.errors import StorageError
from coldwatch.storage.base import Storage

__all__ = ["CSV_HEADER", "csv_chunks", "format_ts", "write_csv"]

CSV_HEADER = (
    "device",
    "kind",
    "metric",
    "ts",
    "seq",
    "value",
    "received_at",
    "buffered",
    "out_of_calibration",
)
_ALL_TIME: Final = (0, 2**62)  # the span of the uncalibrated intervals when the export has no bound


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_ts(ts_us: int) -> str:
    """RFC 3339 UTC with microseconds, exact; any stored value renders, never raises.

    A value outside years 1 to 9999 (only a damaged or hand-edited row holds one) is
    written as ``out of range: <n> us since 1970-01-01T00:00:00Z``.
    """
    try:
        return (_EPOCH + timedelta(microseconds=ts_us)).isoformat(timespec="microseconds")
    except OverflowError:
        return f"out of range: {ts_us} us since 1970-01-01T00:00:00Z"


def _format_value(kind: str, metric: str, value: float) -> str:
    spec = KINDS[Kind(kind)].get(metric)
    if spec is not None and spec.boolean:
        return "true" if value else "false"
    return repr(value)


async def write_csv(
    storage: Storage,
    out: TextIO,
    *,
    device_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
) -> int:
    """Write readings as CSV to ``out``; return the number of rows written.

    ``out_of_calibration`` is 1 when the reading was taken while its point had no instrument
    in calibration installed (coldwatch.records.calibration), else 0: each point's
    intervals are read once, before the readings stream.
    """
    counted = [0]
    async with contextlib.aclosing(
        csv_chunks(storage, device_id=device_id, since_us=since_us, until_us=until_us, counted=counted)
    ) as chunks:
        async for chunk in chunks:
            out.write(chunk)
    return counted[0]


async def csv_chunks(
    storage: Storage,
    *,
    device_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    counted: list[int] | None = None,
    rows_per_chunk: int = 2000,
) -> AsyncGenerator[str, None]:
    """The CSV of :func:`write_csv` in pieces of ``rows_per_chunk`` rows (an HTTP answer streams them).

    ``counted``: its first item is set to the rows written so far.
    """
    from coldwatch.records.calibration import flagged  # noqa: PLC0415 - NumPy only when exporting

    uncalibrated = await _uncalibrated(storage, since_us, until_us)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    rows = 0
    # Closed even when writing fails (the reader went away), before the storage is closed.
    async with contextlib.aclosing(storage.export(device_id, since_us, until_us)) as exported:
        async for row in exported:
            spans = uncalibrated.get(row.device_id)
            writer.writerow(
                (
                    row.device_id,
                    row.kind,
                    row.metric,
                    format_ts(row.ts_us),
                    row.seq,
                    _format_value(row.kind, row.metric, row.value),
                    format_ts(row.received_us),
                    "true" if row.buffered else "false",
                    1 if spans is None else int(flagged(row.ts_us, spans)),
                )
            )
            rows += 1
            if counted is not None:
                counted[0] = rows
            if rows % rows_per_chunk == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


async def _uncalibrated(
    storage: Storage, since_us: int | None, until_us: int | None
) -> dict[str, list[tuple[int, int]]]:
    """Each point ever measured by an instrument: its uncalibrated intervals (others: always uncalibrated)."""
    from coldwatch.records.instruments import calibration_states  # noqa: PLC0415
    from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

    store = identity_store(storage)
    try:
        points = [str(r[0]) for r in await store.fetch("SELECT DISTINCT device_id FROM point_instruments")]
    except StorageError:
        return {}  # a database from before instruments were tracked (not upgraded yet): none on record
    start = _ALL_TIME[0] if since_us is None else since_us
    end = _ALL_TIME[1] if until_us is None else max(until_us, start)
    states = await calibration_states(store, points, start, end, end)
    return {device: state.uncalibrated for device, state in states.items()}
