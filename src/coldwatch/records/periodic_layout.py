"""The periodic report's tables as fixed-width text blocks. Pure.

A site's monthly report has hundreds of rows (points, metrics, alarms). WeasyPrint lays
out an HTML table row at about 15 ms (500 rows: 7 to 9 s; the same lines as preformatted
text: 0.2 s), so the long lists are printed as aligned monospaced columns, the way a
validated system's printout reads. Column widths follow the widest cell; nothing is cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from coldwatch.records.pdf import duration_text, level, number

__all__ = ["alarm_block", "metrics_block", "summary_block", "text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Aligned columns, a header line and a rule under it (``right``: right-aligned columns)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _state(point: Mapping[str, Any]) -> str:
    state = point["calibration"]["state"]
    return "not recorded" if state is None else str(state).replace("_", " ")


def summary_block(points: Sequence[Mapping[str, Any]]) -> str:
    """One line per point: completeness, gaps, communication losses, alarms, calibration."""
    rows = [
        [
            p["device_id"],
            p["area"],
            f"{number(p['completeness'] * 100, 2)} %",
            f"{p['seq_gaps']['lost']} / {p['seq_gaps']['recovered']}",
            str(p["alarms"]["comm_losses"]),
            str(p["alarms"]["count"]),
            duration_text(p["alarms"]["duration_s"]),
            _state(p),
        ]
        for p in points
    ]
    headers = ["Point", "Area", "Complete", "Gaps lost/recovered", "Comm. losses", "Alarms", "Alarm time",
               "Calibration"]  # fmt: skip
    return text_table(headers, rows, [False, False, True, True, True, True, True, False])


def metrics_block(point: Mapping[str, Any]) -> str:
    """The point's metrics with readings, each followed by its time beyond every level."""
    shown = [m for m in point["metrics"] if m["n"]]
    rows = [
        [
            m["metric"],
            m["unit"],
            str(m["n"]),
            number(m["min"]),
            number(m["max"]),
            number(m["mean_tw"]),
            number(m["mkt_c"]),
            f"{number(m['completeness'] * 100, 1)} %",
            str(m["out_of_calibration"]),
        ]
        for m in shown
    ]
    headers = ["Metric", "Unit", "n", "Min", "Max", "Mean", "MKT", "Complete", "Out of cal."]
    table = text_table(headers, rows, [False, False, True, True, True, True, True, True, True])
    beyond = [
        f"  {m['metric']} {b['name']} ({'>' if b['above'] else '<'} {level(b['level'])}): "
        f"{duration_text(b['seconds'])}"
        for m in shown
        for b in m["beyond"]
    ]
    return table + ("\n\nTime beyond each level:\n" + "\n".join(beyond) if beyond else "")


# An alarm's state in few words, so that one alarm takes one line of the page.
_STATE_WORDS: Final = {
    "active_unacknowledged": "active, unack.",
    "active_acknowledged": "active, ack.",
    "cleared_unacknowledged": "cleared, unack.",
}


def _cleared(raised_utc: str, cleared_utc: str | None) -> str:
    """When an alarm cleared: its time alone on the day it was raised, else date and time."""
    if not cleared_utc:
        return "not cleared"
    cleared = cleared_utc.removesuffix(" UTC")
    day, _, time = cleared.partition(" ")
    return time if raised_utc.startswith(day + " ") else cleared


def alarm_block(alarms: Sequence[Mapping[str, Any]]) -> str:
    """One line per alarm that overlapped the period."""
    rows = [
        [
            str(a["id"]),
            a["device_id"],
            a["metric"],
            a["rule"],
            a["severity"],
            _STATE_WORDS.get(str(a["state"]), str(a["state"]).replace("_", " ")),
            a["raised_utc"].removesuffix(" UTC"),
            _cleared(a["raised_utc"], a["cleared_utc"]),
        ]
        for a in alarms
    ]
    headers = ["Id", "Point", "Metric", "Rule", "Severity", "State", "Raised (UTC)", "Cleared (UTC)"]
    return text_table(headers, rows, [True, False, False, False, False, False, False, False])
