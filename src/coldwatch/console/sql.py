"""SQL text the console's queries share between SQLite and PostgreSQL (placeholders differ)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Final

from coldwatch.catalogue import KINDS
from coldwatch.console.model import AlarmCursor, AlarmFilter

__all__ = [
    "ALARM_BY_ID",
    "ALARM_COLUMNS",
    "CONSOLE_INDEXES",
    "DEVICES",
    "KIND_METRICS",
    "OPEN_AGGREGATES",
    "alarm_page_sql",
    "device_where",
]

# Appended to both backends' migrations: the alarm list's keyset order (open first, then
# newest first), over all alarms and per device. Same text on SQLite and PostgreSQL.
CONSOLE_INDEXES: Final = """
CREATE INDEX alarms_open_first ON alarms((state = 'closed'), raised_ts_us, id);
CREATE INDEX alarms_device_open_first ON alarms(device_id, (state = 'closed'), raised_ts_us, id);
"""

ALARM_COLUMNS: Final = (
    "a.id, a.device_id, a.metric, a.rule, a.severity, a.state, a.raised_ts_us, a.raised_received_us, "
    "a.cleared_ts_us, a.value, a.limit_value, a.late, a.detail, a.shelved_until_us, a.shelved_by, "
    "a.acknowledged_by, d.site, d.area, d.kind"
)
# One alarm by id; format with the backend's placeholder.
ALARM_BY_ID: Final = (
    f"SELECT {ALARM_COLUMNS} FROM alarms AS a LEFT JOIN devices AS d ON d.device_id = a.device_id "  # noqa: S608
    "WHERE a.id = {}"
)

# Per device: the highest severity of its active alarms (comm-loss alarms aside, shown as
# offline or stale; calibration alarms too, shown as calibration due), its open alarms and
# those not yet acknowledged. One pass over the
# open alarms (the partial index alarms_one_open holds exactly them).
OPEN_AGGREGATES: Final = """
    SELECT device_id,
        max(CASE WHEN rule NOT IN ('comm_loss', 'calibration_due')
                AND state IN ('active_unacknowledged', 'active_acknowledged')
            THEN CASE severity WHEN 'action' THEN 2 ELSE 1 END ELSE 0 END) AS worst,
        count(*) AS open_n,
        sum(CASE WHEN state IN ('active_unacknowledged', 'cleared_unacknowledged') THEN 1 ELSE 0 END)
            AS unack_n
    FROM alarms WHERE state <> 'closed' GROUP BY device_id
"""
# Every device (narrowed by ``{where}``) with its open alarms' worst severity and counts:
# the same text on SQLite and PostgreSQL.
DEVICES: Final = f"""
    SELECT d.device_id, d.kind, d.site, d.area, d.grade, d.last_ts_us, d.last_received_us, d.online,
        coalesce(a.worst, 0), coalesce(a.open_n, 0), coalesce(a.unack_n, 0)
    FROM devices AS d LEFT JOIN ({OPEN_AGGREGATES}) AS a ON a.device_id = d.device_id
    WHERE TRUE{{where}}
    ORDER BY d.site, d.area, d.device_id
"""  # noqa: S608 - constant text


# (kind, metric name) of every numeric metric: the newest values the overview shows.
KIND_METRICS: Final = "VALUES " + ", ".join(
    f"('{kind.value}', '{name}')" for kind, specs in KINDS.items() for name, spec in specs.items()
)


def device_where(
    site: str | None, area: str | None, device_id: str | None, mark: Callable[[int], str]
) -> tuple[str, list[object]]:
    """``AND``-clauses on the devices alias ``d`` for the filters given, and their parameters.

    Only the filters given appear: a prepared statement's generic plan (PostgreSQL uses
    one after five runs) stays the right plan for each combination.
    """
    given = [(column, value) for column, value in (("site", site), ("area", area), ("device_id", device_id))
             if value is not None]  # fmt: skip
    text = "".join(f" AND d.{column} = {mark(n)}" for n, (column, _) in enumerate(given, start=1))
    return text, [value for _, value in given]


def alarm_page_sql(
    where: AlarmFilter, closed: bool, after: AlarmCursor | None, limit: int, mark: Callable[[int], str]
) -> tuple[str, list[object]]:
    """One phase of the alarm list (open alarms, or closed ones): SQL and its parameters.

    ``mark(n)`` writes the n-th placeholder (1-based). Only the filters given appear in the
    text, so that the planner sees plain predicates and picks the index that fits (by
    device when a device is given, else open-first by time).
    """
    params: list[object] = []

    def p(value: object) -> str:
        params.append(value)
        return mark(len(params))

    clauses = [f"(a.state = 'closed') = {'TRUE' if closed else 'FALSE'}"]
    if after is not None:
        clauses.append(f"(a.raised_ts_us, a.id) < ({p(after.raised_ts_us)}, {p(after.id)})")
    # The phase decides "closed" itself: true for every row of the closed phase, false in
    # the open one (SQLite, seeing it twice, would scan instead of using the index).
    names = list(where.states)
    if closed and "closed" in names:
        names = []
    elif "closed" in names:
        names.remove("closed")
        if not names:
            clauses.append("FALSE")
    states = replace(where, states=names).state_predicate()
    if states is not None:
        clauses.append(states)
    given = (
        ("a.device_id = {}", where.device_id),
        ("a.severity = {}", where.severity),
        ("a.rule = {}", where.rule),
        ("d.site = {}", where.site),
        ("d.area = {}", where.area),
        ("a.raised_ts_us >= {}", where.since_us),
        ("a.raised_ts_us < {}", where.until_us),
    )
    clauses += [template.format(p(value)) for template, value in given if value is not None]
    sql = (
        f"SELECT {ALARM_COLUMNS} FROM alarms AS a LEFT JOIN devices AS d ON d.device_id = a.device_id "  # noqa: S608 - no user text
        f"WHERE {' AND '.join(clauses)} ORDER BY a.raised_ts_us DESC, a.id DESC LIMIT {p(limit)}"
    )
    return sql, params
