"""The periodic report end to end: stored, audited, its PDF shows figures recomputed from the export."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date

import numpy as np
import pypdfium2 as pdfium
import pytest

from coldwatch.catalogue import Kind
from coldwatch.config import Config, DeviceConfig
from coldwatch.identity_config import SiteConfig
from coldwatch.payload import Telemetry
from coldwatch.records.pdf import duration_text
from coldwatch.records.periodic import Scope, ScopeError, generate_periodic, scope_devices
from coldwatch.records.periods import period_containing
from coldwatch.records.store import ReportStore
from coldwatch.records.twins import twins
from coldwatch.storage import Batch, Storage, open_storage
from coldwatch.storage.identity_store import identity_store
from tests.conftest import Backend
from tests.records_reference import reference

US = 1_000_000
ZONE = "Europe/Berlin"
DAY = date(2026, 11, 3)


def config() -> Config:
    """Two points in area a1 of site s1, one in area a2, one at another site."""
    return Config(
        site=SiteConfig(timezone=ZONE),
        devices=[
            DeviceConfig(id="inc-1", kind=Kind.INCUBATOR, site="s1", area="a1"),
            DeviceConfig(id="ln2-1", kind=Kind.CRYOSHIPPER, site="s1", area="a1", interval_s=20),
            DeviceConfig(id="inc-2", kind=Kind.INCUBATOR, site="s1", area="a2"),
            DeviceConfig(id="inc-9", kind=Kind.INCUBATOR, site="s9", area="a1"),
        ],
    )


async def fill(store: Storage, start: int, end: int) -> None:
    """A day of readings: an incubator warm for 40 minutes, a shipper with an hour of silence."""
    rng = random.Random(3)
    batch = Batch()
    t, seq = start - 600 * US, 1
    while t < end + 600 * US:
        warm = start + 6 * 3600 * US <= t < start + 6 * 3600 * US + 2400 * US
        temp = 38.3 if warm else 37.0 + rng.uniform(-0.2, 0.2)
        values = (("temp_c", temp), ("co2_pct", 5.0 + rng.uniform(-0.1, 0.1)), ("rh_pct", 94.0))
        batch.readings.append((Telemetry("inc-1", seq, t, False, values), t + US))
        silent = start + 10 * 3600 * US <= t < start + 11 * 3600 * US
        if seq % 2 == 0 and not silent:
            shipper = (("temp_c", -190.0 + rng.uniform(-1, 1)), ("ln2_level_pct", 60.0), ("tilt_deg", 1.0))
            batch.readings.append((Telemetry("ln2-1", seq // 2, t, False, shipper), t + US))
        t += 10 * US
        seq += 1
    await store.write_batch(batch)


def test_scope_checks_the_devices() -> None:
    """A scope picks the site's devices, narrows by area and names; unknown names are refused."""
    cfg = config()
    assert [d.id for d in scope_devices(cfg.devices, Scope("s1"))] == ["inc-1", "ln2-1", "inc-2"]
    assert [d.id for d in scope_devices(cfg.devices, Scope("s1", "a1", ("ln2-1",)))] == ["ln2-1"]
    with pytest.raises(ScopeError, match="inc-9"):
        scope_devices(cfg.devices, Scope("s1", devices=("inc-9",)))
    with pytest.raises(ScopeError, match="site 'nowhere'"):
        scope_devices(cfg.devices, Scope("nowhere"))


def pdf_text(pdf: bytes) -> str:
    """Every page's text."""
    doc = pdfium.PdfDocument(pdf)
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


async def test_periodic_report_end_to_end(backend: Backend) -> None:
    """A day's report of area a1: stored and audited; PDF, CSV and JSON carry the recomputed figures."""
    cfg = config()
    period = period_containing("daily", DAY, ZONE)
    store = open_storage(backend.location)
    await store.open()
    try:
        await store.register_devices(cfg.devices)
        await fill(store, period.start_us, period.end_us)
        report = await generate_periodic(store, cfg, Scope("s1", "a1"), period, "olga", period.end_us + US)
        assert report.report_id is not None
        stored = await ReportStore(identity_store(store), ZONE).get(report.report_id)
        rows = {
            m: [(r.ts_us, r.value) async for r in store.export("inc-1", period.start_us, period.end_us)
                if r.metric == m]
            for m in ("temp_c",)
        }  # fmt: skip
        ship = [(r.ts_us, r.value) async for r in store.export("ln2-1", period.start_us, period.end_us)
                if r.metric == "temp_c"]  # fmt: skip
        audit = [e async for e in store.audit_entries()]
    finally:
        await store.close()
    assert stored is not None
    assert stored.summary.subject == "site=s1 area=a1 2026-11-03"
    assert stored.data == report.data
    assert stored.pdf == report.pdf
    assert any(e.action == "report.generated" and e.object_id == str(report.report_id) for e in audit)
    # Figures recomputed from the export, found in the PDF, the CSV and the JSON.
    inc = reference(rows["temp_c"], period.end_us, 30.0, [(37.5, True), (38.0, True), (36.5, False),
                                                          (36.0, False)], temperature=True)  # fmt: skip
    shp = reference(ship, period.end_us, 60.0, [(-150.0, True), (-135.0, True)], temperature=True)
    text = pdf_text(report.pdf)
    assert period.label in text
    assert f"{inc.mkt_c:.2f}" in text
    assert f"{inc.mean:.2f}" in text
    assert duration_text(inc.beyond_s[0]) in text
    assert f"{shp.mkt_c:.2f}" in text
    assert "page 1 of" in text
    assert "inc-2" not in text  # another area
    expected_ship = (period.end_us - period.start_us) // (20 * US)
    assert f"{len(ship)} of {expected_ship} expected" in text
    data = json.loads(twins(report.data)[1])
    inc_point = next(p for p in data["points"] if p["device_id"] == "inc-1")
    temp = next(m for m in inc_point["metrics"] if m["metric"] == "temp_c")
    assert temp["mkt_c"] == pytest.approx(inc.mkt_c, abs=1e-3)
    assert temp["beyond"][0]["seconds"] == pytest.approx(inc.beyond_s[0]) == 2400
    assert temp["n"] == inc.n
    ship_point = next(p for p in data["points"] if p["device_id"] == "ln2-1")
    assert ship_point["completeness"] == pytest.approx(len(ship) / expected_ship, abs=1e-5)
    assert ship_point["calibration"]["state"] == "no_instrument"
    csv_text = twins(report.data)[0]
    header = csv_text.splitlines()[0].split(",")
    # The README's order, not the stored JSON's sorted keys.
    assert header[:12] == ["device_id", "kind", "area", "metric", "unit", "n", "min", "max", "mean_tw",
                           "mkt_c", "covered_s", "completeness_pct"]  # fmt: skip
    assert header[12:14] == ["beyond_alert_high_s", "beyond_action_high_s"]
    assert header[-3:] == ["calibration_state", "calibration_alarms", "out_of_calibration"]
    lines = list(csv.DictReader(io.StringIO(csv_text)))
    line = next(r for r in lines if r["device_id"] == "ln2-1" and r["metric"] == "temp_c")
    assert float(line["completeness_pct"]) == pytest.approx(100 * len(ship) / expected_ship, abs=1e-3)
    assert float(line["point_completeness_pct"]) == pytest.approx(100 * len(ship) / expected_ship, abs=1e-3)
    assert float(line["mkt_c"]) == pytest.approx(shp.mkt_c, abs=1e-3)
    assert int(line["out_of_calibration"]) == shp.n  # no instrument: every reading is out of calibration


async def test_pdf_page_renders(tmp_path: object) -> None:
    """The first page of a report renders to a picture that is not blank."""
    cfg = config()
    period = period_containing("daily", DAY, ZONE)
    from pathlib import Path  # noqa: PLC0415

    store = open_storage(Path(str(tmp_path)) / "c.db")
    await store.open()
    try:
        await store.register_devices(cfg.devices)
        await fill(store, period.start_us, period.end_us)
        report = await generate_periodic(store, cfg, Scope("s1", "a1"), period, "olga", period.end_us + US)
    finally:
        await store.close()
    doc = pdfium.PdfDocument(report.pdf)
    image = doc[1].render(scale=0.8).to_pil().convert("L")
    dark = int((np.asarray(image) < 200).sum())
    assert dark > 2000
    image.save(Path(str(tmp_path)) / "page.png")
