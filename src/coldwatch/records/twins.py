"""A report's figures as CSV and JSON, for a QA system: the same figures the PDF shows.

Every report's ``data`` has a ``rows`` list of flat dicts (one CSV line each; the columns
are the union of their keys: first those named in ``data["columns"]``, if any, then the
others in first-seen order; stored figures are canonical JSON with sorted keys, so a
report that cares about its column order names it); the JSON twin is the whole ``data``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["columns_in_order", "csv_text", "json_bytes", "twins"]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def columns_in_order(
    rows: Sequence[Mapping[str, Any]], head: Sequence[str], tail: Sequence[str]
) -> list[str]:
    """A report's columns: ``head``, then the others as first met (level columns), then ``tail``."""
    known = set(head) | set(tail)
    middle = dict.fromkeys(k for row in rows for k in row if k not in known)
    return [*head, *middle, *tail]


def csv_text(rows: list[Mapping[str, Any]], order: Sequence[str] = ()) -> str:
    """The rows as CSV (RFC 4180, CRLF line ends, a header line); ``order``: the first columns."""
    columns: dict[str, None] = dict.fromkeys(order)
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(list(columns))
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


def json_bytes(data: Mapping[str, Any]) -> bytes:
    """The whole figures as indented UTF-8 JSON (keys sorted)."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


def twins(data: Mapping[str, Any]) -> tuple[str, bytes]:
    """The CSV text (of ``data["rows"]``) and the JSON bytes of a report's figures."""
    rows = data.get("rows", [])
    order = data.get("columns", [])
    return (
        csv_text(list(rows) if isinstance(rows, list) else [], order if isinstance(order, list) else []),
        json_bytes(data),
    )
