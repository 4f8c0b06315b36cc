"""Readings taken out of calibration are flagged in the excursion, batch and shipment records (both backends).

A real daemon stores the readings and raises the incubator's alarms; then the instruments
are installed and calibrated (back-dated), and the three records are generated on the
stored data. Every count is recomputed here from the raw readings' timestamps:

- the incubator's instrument is calibrated until a due date in the middle of its readings:
  exactly the readings after it are flagged (excursion and batch records);
- a particle counter's instrument is calibrated and in date: 0 flagged, no warning;
- the shipper has no instrument at all: every reading is flagged, and the PDF says so.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.identity import Identity
from coldwatch.identity_model import Principal
from coldwatch.records.batch import generate_batch_report
from coldwatch.records.batch_model import Stay
from coldwatch.records.batches import Batches
from coldwatch.records.calflag import count_in_spans
from coldwatch.records.calibration import DAY_US
from coldwatch.records.excursion_source import generate_excursion_report
from coldwatch.records.instruments import Instruments
from coldwatch.records.shipment import generate_shipment_report
from coldwatch.records.shipments import Shipments
from coldwatch.records.store import ReportStore
from coldwatch.records.twins import twins
from coldwatch.roles import Permission
from coldwatch.signatures import SignatureDraft
from coldwatch.storage.base import Storage
from coldwatch.storage.identity_store import identity_store
from tests.batch_helpers import SIGN_MEANING
from tests.conftest import (
    Backend,
    db_query,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
)
from tests.identity_helpers import OPERATOR_PW, QA_PW, opened, people
from tests.test_batch_report_e2e import incubator_trace, pdf_text, site

US = 1_000_000
WARNING = "readings were taken while the point's instrument was out of calibration"


def test_count_in_spans_matches_plain_python() -> None:
    """Half-open spans, unsorted timestamps, spans outside the data: the same count as a plain loop."""
    ts = [50, 10, 20, 30, 30, 40, 60, 70, 100]
    spans = [(0, 10), (20, 31), (55, 70), (200, 300)]
    plain = sum(1 for t in ts if any(a <= t < b for a, b in spans))
    assert count_in_spans(ts, spans) == plain == 4
    assert count_in_spans([], spans) == 0
    assert count_in_spans(ts, []) == 0


def flat(pdf: bytes) -> str:
    """The PDF's text on one line (lines broken anywhere join with one space)."""
    return " ".join(pdf_text(pdf).split())


def after_due(ts_s: list[int], start_s: float, end_s: float, due_us: int) -> int:
    """Readings in [start, end) taken after the due date: plain Python over the raw timestamps."""
    return sum(1 for t in ts_s if start_s <= t < end_s and t * US > due_us)


async def ingest(broker: RunningBroker, config: Config, backend: Backend, t0: int) -> dict[str, list[int]]:
    """Incubator (with two excursions), one particle counter and the shipper, every 10 s; their timestamps."""
    trace = incubator_trace(t0)
    counter = [t0 + 10 * i for i in range(60)]
    shipper = [t0 + 10 * i for i in range(720)]
    counts: dict[str, float | bool] = {"particles_0_5um_m3": 900.0, "particles_5_0um_m3": 5.0}
    messages = [
        *(
            (telemetry_topic(config, "inc-1"), reading(i, {"temp_c": v, "co2_pct": 5.0}, ts=t))
            for i, (t, v) in enumerate(trace)
        ),
        *(
            (telemetry_topic(config, "pc-a1"), reading(i, counts, ts=t)) for i, t in enumerate(counter)
        ),
        *(
            (telemetry_topic(config, "ln2-1"), reading(i, {"temp_c": -190.0, "temp_b_c": -191.0}, ts=t))
            for i, t in enumerate(shipper)
        ),
    ]  # fmt: skip
    async with running_daemon(config):
        await publish_all(broker, messages, clients=1)

        def done() -> bool:
            stored = int(db_query(backend.location, "SELECT COUNT(*) FROM readings")[0][0])
            cleared = int(
                db_query(
                    backend.location,
                    "SELECT COUNT(*) FROM alarms WHERE device_id = 'inc-1' AND metric = 'temp_c' "
                    "AND cleared_ts_us IS NOT NULL",
                )[0][0]
            )
            return stored >= 2 * (len(trace) + len(counter) + len(shipper)) and cleared >= 2

        await eventually(done, timeout_s=90, what="every reading stored and both excursions cleared")
    return {"inc-1": [t for t, _ in trace], "pc-a1": counter, "ln2-1": shipper}


async def instruments_for(storage: Storage, identity: Identity, config: Config, t0: int, now_us: int) -> int:
    """SN-INC on inc-1 (due amid its readings), SN-PC on pc-a1 (in date); SN-INC's due date."""
    olga: Principal = (await identity.sign_in("olga", OPERATOR_PW, "test")).principal
    quinn = await identity.verify_signer(
        action="calibrate", permission=Permission.CALIBRATE, meaning="responsibility",
        user="quinn", password=QA_PW, client="test",
    )  # fmt: skip
    instruments = Instruments(identity_store(storage), config.site.timezone, [d.id for d in config.devices])
    due_inc = (t0 + 3605) * US  # between two readings: no reading falls on it
    for serial, point, due in (("SN-INC", "inc-1", due_inc), ("SN-PC", "pc-a1", now_us + 200 * DAY_US)):
        await instruments.register(
            olga, serial=serial, model="m", manufacturer="a", reason="new", now_us=now_us
        )
        await instruments.install(olga, point, serial, reason="commissioning", now_us=now_us,
                                  at_us=(t0 - 3600) * US)  # fmt: skip
        await instruments.calibrate(
            quinn, serial, performed_us=(t0 - 3600) * US - 100 * DAY_US, due_us=due, certificate="C-1",
            as_found="ok", as_left="ok", performed_by="Metro Lab", passed=True, meaning="responsibility",
            reason="annual", now_us=now_us,
        )  # fmt: skip
    return due_inc


async def test_readings_out_of_calibration_are_flagged_in_the_records(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Expired mid-window: the readings after the due date; in date: 0; no instrument: all, with a warning."""
    config = site(tmp_path, broker, prefix, backend)
    t0 = int(time.time()) - 3 * 3600
    ts = await ingest(broker, config, backend, t0)
    now_us = int(time.time() * US)
    async with opened(backend.location, config) as (storage, identity, _):
        await people(identity)
        await storage.register_devices(config.devices)  # as the collector does: the storage knows them
        due = await instruments_for(storage, identity, config, t0, now_us)
        reports = ReportStore(identity_store(storage), "UTC")
        [(alarm_id,)] = db_query(
            backend.location,
            "SELECT min(id) FROM alarms WHERE device_id = 'inc-1' AND metric = 'temp_c' "
            f"AND cleared_ts_us IS NOT NULL AND raised_ts_us < {(t0 + 3600) * US}",
        )
        excursion = await reports.get(
            await generate_excursion_report(storage, config, alarm_id, "olga", now_us)
        )
        signed = SignatureDraft("olga", "Olga Operator", SIGN_MEANING, "batch made")
        stays = [
            Stay("s1", "room-a", None, t0 * US, (t0 + 600) * US),
            Stay("s1", None, "inc-1", (t0 + 600) * US, (t0 + 7200) * US),
        ]
        await Batches(identity_store(storage), config.devices, config.site.timezone).register(
            "LOT-CAL", "CAR-T", "coi-1", stays, signed, now_us
        )
        batch_id, batch = await generate_batch_report(storage, config, "LOT-CAL", "olga", now_us)
        batch_pdf = await reports.get(batch_id)
        shipments = Shipments(identity_store(storage), config)
        record = await shipments.start("ln2-1", "coi-2", "Site 1", "Hospital 9", 3600, None, signed,
                                       (t0 + 600) * US)  # fmt: skip
        received = SignatureDraft("quinn", "Quinn Quality", SIGN_MEANING, "received")
        await shipments.receive(record.id, received, (t0 + 6600) * US)
        ship_id, shipment = await generate_shipment_report(storage, config, record.id, "olga", now_us)
        ship_pdf = await reports.get(ship_id)
    assert excursion is not None
    assert batch_pdf is not None
    assert ship_pdf is not None
    for name, pdf in (("excursion", excursion.pdf), ("batch", batch_pdf.pdf), ("shipment", ship_pdf.pdf)):
        (tmp_path / f"{name}.pdf").write_bytes(pdf)  # to look at
    the_excursion_flags_readings_after_the_due_date(excursion.data, excursion.pdf, ts["inc-1"], due)
    the_batch_flags_the_incubator_only(batch, batch_pdf.pdf, ts, due, t0)
    the_shipment_flags_every_reading(shipment, ship_pdf.pdf, ts["ln2-1"], t0)


def the_excursion_flags_readings_after_the_due_date(
    data: dict[str, Any], pdf: bytes, ts: list[int], due: int
) -> None:
    """Chart window: the readings after the due date; the alarm interval (before it): none."""
    window = data["window"]
    start, end = window["start_us"] / US, window["end_us"] / US
    raised, alarm_end = data["alarm"]["raised_ts_us"] / US, window["alarm_end_us"] / US
    during, whole = data["rows"]
    expected = after_due(ts, start, end, due)
    assert expected > 0
    assert whole["out_of_calibration"] == expected, (data["calibration"], window, due)
    assert during["out_of_calibration"] == after_due(ts, raised, alarm_end, due) == 0
    total = sum(1 for t in ts if start <= t < end)
    cal = data["calibration"]
    assert (cal["instrument"], cal["state"], cal["readings"]) == ("SN-INC", "overdue", total)
    assert cal["out_of_calibration"] == expected
    table = list(csv.DictReader(io.StringIO(twins(data)[0])))
    assert [r["out_of_calibration"] for r in table] == ["0", str(expected)]
    assert f"{expected} of {total} {WARNING}" in flat(pdf)
    assert "instrument SN-INC" in flat(pdf)


def the_batch_flags_the_incubator_only(
    data: dict[str, Any], pdf: bytes, ts: dict[str, list[int]], due: int, t0: int
) -> None:
    """The incubator's stay: the readings after the due date; the counter in date: 0 and no warning."""
    rows = {(r["device"], r["metric"]): r for r in data["rows"]}
    expected = after_due(ts["inc-1"], t0 + 600, t0 + 7200, due)
    assert 0 < expected < sum(1 for t in ts["inc-1"] if t0 + 600 <= t < t0 + 7200)
    assert rows["inc-1", "temp_c"]["out_of_calibration"] == expected
    assert rows["inc-1", "co2_pct"]["out_of_calibration"] == expected
    assert rows["pc-a1", "particles_0_5um_m3"]["out_of_calibration"] == 0
    assert rows["pc-a1", "particles_0_5um_m3"]["n"] == sum(1 for t in ts["pc-a1"] if t0 <= t < t0 + 600) > 0
    cal = {c["device"]: c for c in data["calibration"]}
    assert (cal["pc-a1"]["state"], cal["pc-a1"]["instrument"], cal["pc-a1"]["warning"]) == (
        "in_calibration", "SN-PC", None,
    )  # fmt: skip
    assert cal["inc-1"]["out_of_calibration"] == 2 * expected
    text = flat(pdf)
    assert f"inc-1: {2 * expected} of {cal['inc-1']['readings']} {WARNING}" in text
    assert text.count(WARNING) == 1  # the counter in date and pc-a2 (no readings) carry none
    assert "Calibration of pc-a1: in calibration · instrument SN-PC" in text


def the_shipment_flags_every_reading(data: dict[str, Any], pdf: bytes, ts: list[int], t0: int) -> None:
    """No instrument on the shipper: every reading of both probes in transit is flagged."""
    in_transit = sum(1 for t in ts if t0 + 600 <= t < t0 + 6600)
    assert [(r["probe"], r["n"], r["out_of_calibration"]) for r in data["rows"]] == [
        ("temp_c", in_transit, in_transit),
        ("temp_b_c", in_transit, in_transit),
    ]
    assert data["calibration"]["state"] == "no_instrument"
    table = list(csv.DictReader(io.StringIO(twins(data)[0])))  # the CSV twin carries the column
    assert [r["out_of_calibration"] for r in table] == [str(in_transit)] * 2
    text = flat(pdf)
    assert f"{2 * in_transit} of {2 * in_transit} {WARNING} (or none was installed)" in text
    assert "not GMP-valid measurements" in text
