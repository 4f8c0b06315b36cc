"""The server-rendered SVG chart: plain, escaped, labelled, accessible, and fast."""

from __future__ import annotations

import re
import statistics
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from coldwatch.console.chart import SPAN_FILL, AlarmSpan, Chart, LimitLine, render_svg, unit_of
from coldwatch.console.downsample import Series, mark_gaps

US = 1_000_000
T0 = 1_764_547_200 * US  # 2025-12-01 00:00 UTC
NS = "{http://www.w3.org/2000/svg}"
BERLIN = ZoneInfo("Europe/Berlin")


def sample_chart(title: str = "inc-01 temp_c", points: int = 2000) -> Chart:
    """Six hours of a temperature with an excursion, a 40-minute silence and backfilled readings."""
    ts = T0 + np.linspace(0, 6 * 3600 * US, points).astype(np.int64)
    values = 37 + 0.2 * np.sin(np.arange(points) / 50)
    values[points // 2 : points // 2 + 50] += 1.5
    buffered = np.zeros(points, dtype=bool)
    buffered[-30:] = True
    keep = (ts < T0 + 4 * 3600 * US) | (ts > T0 + 4 * 3600 * US + 40 * 60 * US)
    series = mark_gaps(Series.of(ts[keep], values[keep], buffered[keep]), 300 * US)
    return Chart(
        title=title,
        metric="temp_c",
        series=series,
        start_us=T0,
        end_us=T0 + 6 * 3600 * US,
        limits=[
            LimitLine(38.0, "action", "high"),
            LimitLine(37.5, "alert", "high"),
            LimitLine(36.0, "action", "low"),
            LimitLine(36.5, "alert", "low"),
        ],
        alarms=[
            AlarmSpan(T0 + 3 * 3600 * US, T0 + 3 * 3600 * US + 20 * 60 * US, "action", "action alarm #7")
        ],
        zone=BERLIN,
        readings=int(keep.sum()),
    )


def texts(root: ET.Element) -> list[str]:
    """Every text element's content."""
    return [t.text or "" for t in root.iter(f"{NS}text")]


def plot_frame(root: ET.Element) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the plot area (the framed rectangle)."""
    frame = next(r for r in root.iter(f"{NS}rect") if r.get("fill") == "none")
    return tuple(float(frame.get(k, "0")) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


def test_chart_is_plain_svg_with_escaped_text_and_a_text_alternative() -> None:
    """The markup parses as SVG, has no script or external reference, escapes all text, describes its data."""
    title = 'Fill <script>alert("x")</script> & "suite"'
    svg = render_svg(sample_chart(title))
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{NS}svg"
    assert "<script" not in svg
    assert not re.search(r"href|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", svg)
    assert root.findtext(f"{NS}title") == title
    labelled = root.get("aria-labelledby", "").split()
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    assert set(labelled) <= ids
    assert len(labelled) == 2
    desc = root.findtext(f"{NS}desc") or ""
    chart = sample_chart(title)
    real = chart.series.values[~np.isnan(chart.series.values)]
    assert f"{chart.readings:,} readings" in desc
    assert f"maximum {real.max():.1f}°C" in desc
    assert "Action limit (high): 38.0°C" in desc
    assert "No data from 2025-12-01 03:59" in desc
    assert "backfilled" in desc
    assert root.get("viewBox") == "0 0 720 360"


def test_limits_alarm_interval_gap_and_backfill_are_drawn_where_they_belong() -> None:
    """Each limit is a labelled line at its value; the alarm and the gap are shaded over their times."""
    chart = sample_chart()
    root = ET.fromstring(render_svg(chart))
    left, top, width, height = plot_frame(root)
    all_text = texts(root)
    real = chart.series.values[~np.isnan(chart.series.values)]
    lo = min(real.min(), *(lim.value for lim in chart.limits))
    hi = max(real.max(), *(lim.value for lim in chart.limits))
    for lim in chart.limits:
        assert f"{lim.severity} {lim.direction} {lim.value:.1f}°C" in all_text
        # The line's height is proportional to the value within the padded axis range.
        line = next(
            ln
            for ln in root.iter(f"{NS}line")
            if ln.get("stroke") != "#e5e7e9"
            and abs(float(ln.get("x1", 0)) - left) < 0.2
            and ln.get("y1") == ln.get("y2")
            and _near_value(ln, lim.value, lo, hi, top=top, height=height)
        )
        assert line is not None

    def x_of(ts_us: int) -> float:
        return left + (ts_us - chart.start_us) * width / (chart.end_us - chart.start_us)

    span = chart.alarms[0]
    shaded = [r for r in root.iter(f"{NS}rect") if r.get("fill") == SPAN_FILL["action"]]
    assert len(shaded) == 1
    assert float(shaded[0].get("x", 0)) == _approx(x_of(span.start_us))
    assert float(shaded[0].get("width", 0)) == _approx(x_of(span.end_us or 0) - x_of(span.start_us))
    gap_from, gap_to = chart.series.gaps()[0]
    grey = [r for r in root.iter(f"{NS}rect") if r.get("fill") == "#d5d8dc"]
    assert len(grey) == 1
    assert float(grey[0].get("x", 0)) == _approx(x_of(gap_from))
    assert float(grey[0].get("width", 0)) == _approx(x_of(gap_to) - x_of(gap_from))
    assert "no data" in all_text
    assert "backfilled" in all_text
    # The line breaks at the gap: two subpaths.
    series_path = next(p for p in root.iter(f"{NS}path") if p.get("stroke") == "#1f4e79")
    assert series_path.get("d", "").count("M") == 2


def _approx(value: float) -> object:
    return pytest.approx(value, abs=0.11)


def _near_value(line: ET.Element, value: float, lo: float, hi: float, *, top: float, height: float) -> bool:
    pad = (hi - lo) * 0.08
    y = top + (hi + pad - value) * height / ((hi + pad) - (lo - pad))
    return abs(float(line.get("y1", 0)) - y) < 0.11


def test_time_axis_in_utc_and_in_the_site_zone() -> None:
    """Ticks fall on whole hours; each is labelled in UTC and, beneath, in the site's local time."""
    root = ET.fromstring(render_svg(sample_chart()))
    all_text = texts(root)
    hours = [T0 + h * 3600 * US for h in range(1, 6)]  # 06:00 is the right edge: no label there
    utc = [datetime.fromtimestamp(t / US, UTC).strftime("%H:%M") for t in hours]
    local = [datetime.fromtimestamp(t / US, BERLIN).strftime("%H:%M") for t in hours]
    assert utc == ["01:00", "02:00", "03:00", "04:00", "05:00"]
    assert local[0] == "02:00"  # Berlin is UTC+1 in December
    for a, b in zip(utc, local, strict=True):
        assert a in all_text
        assert b in all_text
    assert "UTC" in all_text
    assert "CET" in all_text


@pytest.mark.parametrize("span_s", [40, 150, 600])
def test_a_short_range_still_has_labelled_time_ticks(span_s: int) -> None:
    """A range of seconds or minutes (a short transit, a brief excursion) gets ticks, in seconds if needed."""
    ts = T0 + np.linspace(0, span_s * US, 20).astype(np.int64)
    chart = Chart("short", "temp_c", Series.of(ts, np.full(20, -190.0)), T0, T0 + span_s * US, zone=BERLIN)
    labels = [t for t in texts(ET.fromstring(render_svg(chart))) if re.fullmatch(r"\d\d:\d\d(:\d\d)?", t)]
    assert len(labels) >= 4  # at least two ticks, each in UTC and in site time
    utc_labels = labels[::2]
    assert len(set(utc_labels)) == len(utc_labels)  # distinct labels: the step is never finer than the format


@pytest.mark.parametrize("title", ["ln2-dewar-01 ln2_level_pct: alarm #12345 (threshold)", "x " * 70])
def test_a_long_title_stays_inside_a_phone_sized_chart(title: str) -> None:
    """At 360 px a long title takes two lines inside the drawing, the plot and its legend below them."""
    chart = sample_chart(title=title)  # its backfilled readings put a legend at the plot's top right
    root = ET.fromstring(render_svg(chart, width=360, height=300))
    lines = [t for t in root.iter(f"{NS}text") if t.get("font-size") == "14"]
    _, top, _, _ = plot_frame(root)
    legend = next(t for t in root.iter(f"{NS}text") if t.text == "backfilled")
    assert len(lines) == 2
    for line in lines:  # each ends inside the drawing (0.6 em a character, DejaVu Sans)
        assert float(line.get("x", "0")) + 0.6 * 14 * len(line.text or "") <= 360
    descent, legend_cap = 0.25 * 14, 0.75 * 11  # below the last line's baseline; above the legend's
    assert float(lines[-1].get("y", "0")) + descent + 2 < float(legend.get("y", "0")) - legend_cap
    assert float(legend.get("y", "0")) < top
    shown = " ".join(t.text or "" for t in lines)
    assert (shown == title.strip()) == (len(title) < 100)
    assert shown.endswith("…") == (len(title) >= 100)
    assert next(root.iter(f"{NS}title")).text == title  # the whole title for assistive technology
    wide = ET.fromstring(render_svg(sample_chart(title=title[:40]), width=720, height=360))
    assert len([t for t in wide.iter(f"{NS}text") if t.get("font-size") == "14"]) == 1


def test_a_utc_site_gets_one_row_of_time_labels() -> None:
    """A site whose zone is UTC sees each tick once, not the same time twice in two rows."""
    root = ET.fromstring(render_svg(replace(sample_chart(), zone=ZoneInfo("UTC"))))
    all_text = texts(root)
    assert all_text.count("01:00") == 1
    assert all_text.count("UTC") == 1
    assert not any("UTC /" in t for t in all_text)
    berlin = texts(ET.fromstring(render_svg(sample_chart())))
    assert berlin.count("02:00") == 2  # 02:00 UTC, and 01:00 UTC shown as 02:00 CET


def test_limit_labels_are_drawn_over_the_data_and_limit_lines_under_it() -> None:
    """Dense data near a limit never hides the limit's label (the label comes after the series in the SVG)."""
    root = ET.fromstring(render_svg(sample_chart()))
    order = list(root)
    series = next(i for i, e in enumerate(order) if e.tag == f"{NS}path" and e.get("stroke-width") == "1.6")
    label = next(i for i, e in enumerate(order) if (e.text or "").startswith("action high"))
    line = next(i for i, e in enumerate(order) if e.tag == f"{NS}line" and e.get("stroke-width") == "1.5")
    assert line < series < label


def test_units_come_from_the_metric_name() -> None:
    """The unit shown is the catalogue's unit of the metric."""
    assert unit_of("temp_c") == "°C"
    assert unit_of("co2_pct") == "%"
    assert unit_of("particles_0_5um_m3") == "/m³"
    assert unit_of("flow_lpm") == "L/min"
    assert unit_of("no_such_metric") == ""
    root = ET.fromstring(render_svg(sample_chart()))
    assert "°C" in texts(root)


def test_an_empty_range_says_so() -> None:
    """A range without readings draws axes and a note, not an empty plot."""
    chart = Chart("empty", "co2_pct", Series.empty(), T0, T0 + 3600 * US)
    root = ET.fromstring(render_svg(chart, width=360, height=300))
    assert "No readings in this range" in texts(root)
    assert root.get("viewBox") == "0 0 360 300"


def test_two_thousand_points_render_in_a_few_milliseconds() -> None:
    """A 2,000-point chart renders in well under the page budget (median of 20 runs)."""
    chart = sample_chart(points=2250)  # 2,000 after the 40-minute silence
    assert 1990 <= len(chart.series) <= 2010
    runs = []
    for _ in range(20):
        started = time.perf_counter()
        render_svg(chart)
        runs.append(time.perf_counter() - started)
    median_ms = statistics.median(runs) * 1000
    print(f"render_svg, {len(chart.series)} points: {median_ms:.2f} ms")
    assert median_ms < 25  # measured about 2 ms; generous for a shared machine


def test_large_values_on_the_value_axis_fit_left_of_the_plot() -> None:
    """Grade C counts in millions label the axis 1M, 2M... instead of running off the drawing's left edge."""
    ts = T0 + np.arange(100, dtype=np.int64) * 60 * US
    values = np.linspace(0.0, 3_000_000.0, 100)
    chart = Chart(
        "pc-prep-c1 particles_0_5um_m3", "particles_0_5um_m3", Series.of(ts, values), T0, T0 + 6000 * US
    )
    root = ET.fromstring(render_svg(chart))
    left = plot_frame(root)[0]
    labels = [
        t for t in root.iter(f"{NS}text") if t.get("text-anchor") == "end" and t.get("font-size") == "11"
    ]
    assert "1M" in [t.text for t in labels]
    assert all(len(t.text or "") * 6.2 <= left - 8 for t in labels)


def label_boxes(root: ET.Element) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of every label's backing box (limit and alarm labels)."""
    return [
        (float(r.get("x", 0)), float(r.get("y", 0)),
         float(r.get("x", 0)) + float(r.get("width", 0)), float(r.get("y", 0)) + float(r.get("height", 0)))
        for r in root.iter(f"{NS}rect")
        if r.get("fill-opacity") == "0.85"
    ]  # fmt: skip


@pytest.mark.parametrize("at_end", [True, False], ids=["alarm-at-the-right-end", "alarm-mid-chart"])
@pytest.mark.parametrize(("width", "height"), [(360, 240), (480, 300), (720, 360)])
@pytest.mark.parametrize("value", [36.05, 36.3, 37.0])
def test_an_alarm_label_never_covers_a_limit_label(
    at_end: bool, width: int, height: int, value: float
) -> None:
    """Readings near the low limits, whose labels sit at the foot as an alarm's does: all labels apart."""
    chart = sample_chart()
    values = np.where(np.isnan(chart.series.values), np.nan, value)
    start = T0 + (5 * 3600 + 1800 if at_end else 3 * 3600) * US
    chart = replace(
        chart,
        series=Series(chart.series.ts_us, values, chart.series.buffered),
        alarms=[AlarmSpan(start, start + 25 * 60 * US, "alert", "alert alarm #12")],
    )
    root = ET.fromstring(render_svg(chart, width=width, height=height))
    boxes = label_boxes(root)
    assert len(boxes) == 5  # four limits, one alarm
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    _, top, _, plot_height = plot_frame(root)
    alarm = next(t for t in root.iter(f"{NS}text") if t.text == "alert alarm #12")
    assert top < float(alarm.get("y", 0)) <= top + plot_height  # still inside the plot
