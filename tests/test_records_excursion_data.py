"""The excursion report's figures from hand-made inputs (pure), and the PDF they print."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pypdfium2 as pdfium

from coldwatch.console.chart import LimitLine
from coldwatch.records.excursion import MARGIN_MIN_S, ExcursionInputs, Notification, excursion_data, window
from coldwatch.records.pdf import render_pdf, svg_chart
from coldwatch.records.provenance import Provenance

US = 1_000_000
T0 = 1_800_000_000 * US
LN2_LIMITS = [LimitLine(-150.0, "alert", "high", "high"), LimitLine(-135.0, "action", "high", "high")]


def ln2_inputs(
    readings: list[tuple[int, float, int, bool]], cleared: int | None, now: int
) -> ExcursionInputs:
    """A dewar warming above -150 C (alert) and -135 C (action), readings every 60 s."""
    start, end, alarm_end = window(T0 + 600 * US, cleared, now)
    alarm: dict[str, Any] = {
        "id": 7, "device": "ln2-1", "metric": "temp_c", "rule": "high", "severity": "action",
        "state": "active_unacknowledged" if cleared is None else "cleared_unacknowledged",
        "raised_ts_us": T0 + 600 * US, "raised_received_us": T0 + 601 * US, "cleared_ts_us": cleared,
        "value": -130.0, "limit": -135.0, "late": True, "detail": "", "acknowledged_by": None,
        "shelved_by": None,
    }  # fmt: skip
    return ExcursionInputs(
        alarm=alarm,
        device={"id": "ln2-1", "kind": "cryoshipper", "site": "s1", "area": "vault", "interval_s": 60.0},
        unit="°C",
        temperature=True,
        limits=LN2_LIMITS,
        readings=[r for r in readings if start <= r[0] < end],
        history=[
            {
                "event": "raised",
                "ts_us": T0 + 600 * US,
                "received_us": T0 + 601 * US,
                "from_state": None,
                "to_state": "active_unacknowledged",
                "severity": "action",
                "value": -130.0,
                "limit_value": -135.0,
                "late": True,
                "actor": None,
                "reason": None,
            },
        ],
        notifications=[Notification("webhook", "pager", T0 + 601 * US, None, 3, "HTTP 503", [])],
        signatures=[],
        review=None,
        zone="Europe/Berlin",
        window=(start, end),
        alarm_end_us=alarm_end,
    )


def test_window_is_at_least_an_hour_each_side_and_never_past_now() -> None:
    """max(1 h, duration) before and after; an active alarm ends at now, and the chart too."""
    raised = T0
    assert window(raised, raised + 600 * US, raised + 10 * 3600 * US) == (
        raised - int(MARGIN_MIN_S * US), raised + 600 * US + int(MARGIN_MIN_S * US), raised + 600 * US
    )  # fmt: skip
    long = 5 * 3600 * US
    assert window(raised, raised + long, raised + 20 * 3600 * US) == (
        raised - long, raised + 2 * long, raised + long
    )  # fmt: skip
    hour = int(MARGIN_MIN_S * US)
    assert window(raised, None, raised + 120 * US) == (raised - hour, raised + 120 * US, raised + 120 * US)


def test_active_alarm_figures_backfill_and_undelivered_notification() -> None:
    """Figures of an active high alarm; backfilled readings counted; the PDF says not delivered and late."""
    temps = [-180.0] * 10 + [-140.0, -130.0, -128.0, -131.0]
    readings = [(T0 + i * 60 * US, t, T0 + i * 60 * US + (3600 * US if i in {11, 12} else US), i in {11, 12})
                for i, t in enumerate(temps)]  # fmt: skip
    now = T0 + 14 * 60 * US
    data = excursion_data(ln2_inputs(readings, None, now))
    during = data["rows"][0]
    # During [600 s, 840 s): readings at 600, 660, 720, 780 s hold 60 s each.
    assert during["readings"] == 4
    assert during["peak"] == -128.0
    assert during["peak_ts_us"] == T0 + 720 * US
    assert during["beyond action high -135 s"] == 180.0  # -130, -128, -131 are above -135
    assert during["beyond alert high -150 s"] == 240.0
    assert during["mean_tw"] == sum([-140.0, -130.0, -128.0, -131.0]) / 4
    assert data["high"] is True
    assert data["backfill"]["buffered"] == 2
    assert [r["ts_us"] for r in data["backfill"]["listed"]] == [T0 + 660 * US, T0 + 720 * US]
    assert data["rows"][1]["no_data_s"] == MARGIN_MIN_S - 600  # the hour before raise, less 600 s of data
    prov = Provenance("1.0", "SQLite x.db", "excursion alarm=7", now, 3, "ab" * 32)
    points = [(ts, v, buf) for ts, v, _, buf in readings]
    start, end = data["window"]["start_us"], data["window"]["end_us"]
    chart = svg_chart("t", "temp_c", points, start, end, zone="Europe/Berlin")
    pdf = render_pdf(
        "excursion.html",
        {
            "title": "Excursion report: alarm 7",
            "site": "s1",
            "zone": "Europe/Berlin",
            "data": data,
            "chart": chart,
            "generated_by": "olga",
            "worst": "action",
        },
        prov,
    )
    doc = pdfium.PdfDocument(pdf)
    text = " ".join(" ".join(doc[i].get_textpage().get_text_range() for i in range(len(doc))).split())
    assert "not delivered" in text
    assert "not cleared when this report was generated" in text
    assert "Raised late" in text
    assert "2 reading(s) in the chart window were backfilled" in text
    assert "-128.00°C" in text
    assert "Peak (highest)" in text
    assert "audit head #3 abababababab" in text
    assert "CET" in text


def test_a_utc_site_reads_each_time_once_and_other_sites_twice() -> None:
    """Times print in UTC and the site's zone, except for a UTC site, which would read the same time twice."""
    temps = [-180.0] * 10 + [-130.0] * 4
    readings = [(T0 + i * 60 * US, t, T0 + i * 60 * US + US, False) for i, t in enumerate(temps)]
    now = T0 + 14 * 60 * US
    texts = {}
    for zone in ("UTC", "Europe/Berlin"):
        data = excursion_data(replace(ln2_inputs(readings, None, now), zone=zone))
        start, end = data["window"]["start_us"], data["window"]["end_us"]
        points = [(ts, v, buf) for ts, v, _, buf in readings]
        pdf = render_pdf(
            "excursion.html",
            {"title": "Excursion report: alarm 7", "site": "s1", "zone": zone, "data": data,
             "generated_by": "olga", "worst": "action",
             "chart": svg_chart("t", "temp_c", points, start, end, zone=zone)},
            Provenance("1.0", "SQLite x.db", "excursion alarm=7", now, 3, "ab" * 32),
        )  # fmt: skip
        doc = pdfium.PdfDocument(pdf)
        texts[zone] = " ".join(
            " ".join(doc[i].get_textpage().get_text_range() for i in range(len(doc))).split()
        )
    raised = "2027-01-15 08:10:00 UTC"  # T0 + 600 s
    assert f"Raised {raised}, at -130.00°C against limit -135°C" in texts["UTC"]  # the level as written
    assert "UTC / " not in texts["UTC"]
    assert "times in UTC and" not in texts["UTC"]
    assert texts["UTC"].count(raised) == texts["UTC"].count("08:10:00")  # never again as a "site time"
    assert f"Raised {raised} / 2027-01-15 09:10:00 CET," in texts["Europe/Berlin"]
    assert "times in UTC and Europe/Berlin" in texts["Europe/Berlin"]


def test_levels_are_written_as_configured_never_in_exponent_form() -> None:
    """Grade D's 3,520,000 particles/m³ reads as such in names, CSV columns and the PDF, never 3.52e+06."""
    from coldwatch.records.excursion import _levels  # noqa: PLC0415 - the names it gives
    from coldwatch.records.pdf import level  # noqa: PLC0415

    names = [
        lv.name
        for lv in _levels([LimitLine(3_520_000.0, "action", "high"), LimitLine(14.5, "alert", "high")])
    ]
    assert names == ["action high 3520000", "alert high 14.5"]
    shown = [level(v) for v in (3_520_000.0, 29_000.0, 14.5, -150.0, 0.5)]
    assert shown == ["3,520,000", "29,000", "14.5", "-150", "0.5"]


def test_the_periodic_report_prints_levels_as_written() -> None:
    """The periodic report's time beyond each level names grade D's 3,520,000, never 3520000.0."""
    from coldwatch.records.periodic_layout import metrics_block  # noqa: PLC0415

    metric = {
        "metric": "particles_0_5um_m3", "unit": "/m³", "n": 10, "min": 1.0, "max": 2.0, "mean_tw": 1.5,
        "mkt_c": None, "completeness": 1.0, "out_of_calibration": 0,
        "beyond": [{"name": "action high", "level": 3_520_000.0, "above": True, "seconds": 12.0}],
    }  # fmt: skip
    text = metrics_block({"metrics": [metric]})
    assert "particles_0_5um_m3 action high (> 3,520,000): 12 s" in text


def test_the_periodic_report_s_alarm_lines_fit_the_page() -> None:
    """Each alarm is one line of the periodic report, its clearing time short on the day it was raised."""
    from coldwatch.records.periodic_layout import alarm_block  # noqa: PLC0415

    alarm = {
        "id": 12345, "device_id": "pc-corridor-d1", "metric": "particles_0_5um_m3",
        "rule": "events_in_window", "severity": "action", "state": "cleared_unacknowledged",
        "raised_utc": "2026-12-07 13:52:10 UTC", "cleared_utc": "2026-12-07 13:53:51 UTC",
    }  # fmt: skip
    later = {**alarm, "cleared_utc": "2026-12-08 00:00:01 UTC"}
    lines = alarm_block([alarm, later]).splitlines()
    assert lines[2].endswith("2026-12-07 13:52:10  13:53:51")
    assert lines[3].endswith("2026-12-07 13:52:10  2026-12-08 00:00:01")
    assert "cleared, unack." in lines[2]
    # 6.6 pt DejaVu Sans Mono is 0.6 em a character: 180 mm of A4 between the margins holds 128.
    assert max(len(line) for line in lines) <= 128
