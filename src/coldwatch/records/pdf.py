"""Reports as PDF: Jinja2 HTML with print CSS, laid out by WeasyPrint.

Why WeasyPrint: it implements CSS paged media (``@page`` margin boxes, ``counter(pages)``
for "page X of Y", running elements for a footer on every page), renders inline SVG (the
console's own charts), needs no browser at run time and is maintained; the same Jinja2
and the same chart markup serve the console and the printout.

Every report template extends ``report_base.html``: A4, a header with the report's title
and site on every page, and a footer on every page with "page X of Y" and the
provenance line (:class:`coldwatch.records.provenance.Provenance`). Times are shown in
UTC and in the site's time zone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Final
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup

from coldwatch.console.chart import AlarmSpan, Chart, LimitLine, render_svg
from coldwatch.console.downsample import Series
from coldwatch.identity_config import UTC_ZONES
from coldwatch.records.provenance import Provenance

__all__ = [
    "duration_text",
    "environment",
    "number",
    "render_html",
    "render_pdf",
    "site_time",
    "svg_chart",
    "utc",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# One layout at a time: reports are laid out on worker threads, and Pango and fontconfig are
# not documented as safe to use from several threads at once.
_LAYOUT = threading.Lock()


def utc(at_us: int | None) -> str:
    """A time in UTC, to the second ("" for None)."""
    if at_us is None:
        return ""
    return (_EPOCH + timedelta(microseconds=int(at_us))).strftime("%Y-%m-%d %H:%M:%S UTC")


def site_time(at_us: int | None, zone: str) -> str:
    """A time in the site's time zone, with its abbreviation ("" for None)."""
    if at_us is None:
        return ""
    moment = (_EPOCH + timedelta(microseconds=int(at_us))).astimezone(ZoneInfo(zone))
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def is_utc(zone: str) -> bool:
    """Whether the site's zone is UTC itself (its times are then shown once, not twice)."""
    return zone in UTC_ZONES


def utc_and_site(at_us: int | None, zone: str) -> str:
    """A time in UTC and in the site's zone, "UTC / local"; UTC alone for a UTC site ("" for None)."""
    if at_us is None:
        return ""
    return utc(at_us) if is_utc(zone) else f"{utc(at_us)} / {site_time(at_us, zone)}"


def level(value: float) -> str:
    """A configured level as written (no float noise, no exponent), thousands separated: 3,520,000."""
    return f"{value:,.10g}"


def number(value: float | None, digits: int = 2) -> str:
    """A figure with ``digits`` decimals; an em dash for no data."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def duration_text(seconds: float | None) -> str:
    """A duration as h/min/s (e.g. ``1 h 02 min 05 s``); an em dash for no data."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@cache
def environment() -> jinja2.Environment:
    """The reports' template environment (autoescaped; the package's own templates)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("coldwatch.records", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = utc
    env.filters["site_time"] = site_time
    env.filters["number"] = number
    env.filters["level"] = level
    env.filters["both"] = utc_and_site
    env.tests["utc_zone"] = is_utc
    env.filters["duration"] = duration_text
    return env


def render_html(template: str, context: Mapping[str, object], provenance: Provenance) -> str:
    """The report's HTML (what the PDF is laid out from)."""
    return environment().get_template(template).render({**context, "provenance": provenance})


def render_pdf(template: str, context: Mapping[str, object], provenance: Provenance) -> bytes:
    """The report as PDF bytes; ``template`` extends ``report_base.html``."""
    import weasyprint  # noqa: PLC0415 - Pango is loaded only when a report is printed

    html = render_html(template, context, provenance)
    with _LAYOUT:
        pdf = weasyprint.HTML(string=html, base_url=None).write_pdf()
    if not isinstance(pdf, bytes):  # write_pdf without a target returns the bytes
        raise TypeError("WeasyPrint returned no PDF")
    return pdf


def svg_chart(  # noqa: PLR0917 - what a chart of a report shows
    title: str,
    metric: str,
    points: Sequence[tuple[int, float, bool]],
    start_us: int,
    end_us: int,
    limits: Sequence[LimitLine] = (),
    alarms: Sequence[AlarmSpan] = (),
    zone: str | None = None,
    *,
    gaps: Sequence[tuple[int, int]] = (),
    width: int = 720,
    height: int = 320,
    element_id: str | None = None,
) -> Markup:
    """A chart of ``points`` (ts_us, value, backfilled) for a report: limits as lines, alarms shaded.

    ``gaps``: the intervals without data to shade (default: the breaks of the series);
    :func:`coldwatch.records.stats.uncovered` gives them under the hold convention.
    """
    series = Series.of([p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
    chart = Chart(
        title=title,
        metric=metric,
        series=series,
        start_us=start_us,
        end_us=end_us,
        limits=limits,
        alarms=alarms,
        zone=None if zone is None else ZoneInfo(zone),
        readings=len(points),
        gaps=gaps,
    )
    return Markup(render_svg(chart, width=width, height=height, element_id=element_id))  # noqa: S704 - escaped by render_svg
