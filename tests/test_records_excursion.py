"""The excursion report of a real alarm, end to end on both backends: generated, read back, signed.

A real daemon, broker and database: readings published over MQTT raise a real alarm,
an operator signs its acknowledgement, QA signs its review, an operator generates the
report over the API. The test recomputes peak, time beyond each level and MKT from the
raw readings exported by the API, with plain Python, and finds them in the PDF's text.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pypdfium2 as pdfium
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.cli import main
from coldwatch.config import Config
from coldwatch.export import format_ts
from coldwatch.records.pdf import duration_text
from coldwatch.review import signature_problems
from coldwatch.storage.identity_store import identity_store
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
from tests.test_api_robust import TOKENS, api_section, auth
from tests.test_audit_trail_e2e import coldwatch
from tests.test_notify import Receiver
from tests.test_signatures_api import _execute

ACK = "acknowledged, investigating"
US = 1_000_000


def pdf_text(pdf: bytes) -> list[str]:
    doc = pdfium.PdfDocument(pdf)
    return [doc[i].get_textpage().get_text_range() for i in range(len(doc))]


async def drive_excursion(broker: RunningBroker, config: Config) -> list[tuple[float, float]]:
    """Readings of inc-1 every 10 s (device time, ending now): 37 C, a rise above 38 C, back to 37 C."""
    now = time.time()
    temps = [37.0] * 6 + [37.6, 38.4, 39.5, 39.1, 38.6, 37.8] + [37.0] * 4
    start = now - 10 * len(temps)
    points = [(start + 10 * i, t) for i, t in enumerate(temps)]
    topic = telemetry_topic(config, "inc-1")
    for seq, (ts, temp) in enumerate(points):
        await publish_all(broker, [(topic, reading(seq, {"temp_c": temp}, ts=ts))], clients=1)
    return points


def recompute(readings: list[dict[str, Any]], start_us: int, end_us: int, cap_s: float) -> dict[str, Any]:
    """Peak, time beyond 38.0 and 37.5, and MKT of [start, end), written out reading by reading."""
    inside = [(r["ts_us"], r["value"]) for r in readings if start_us <= r["ts_us"] < end_us]
    holds = []
    for i, (ts, _v) in enumerate(inside):
        nxt = inside[i + 1][0] if i + 1 < len(inside) else end_us
        holds.append(min((nxt - ts) / US, cap_s))
    peak = max(v for _, v in inside)
    beyond = {lv: sum(h for (_, v), h in zip(inside, holds, strict=True) if v > lv) for lv in (38.0, 37.5)}
    num = sum(h * math.exp(-10_000 / (v + 273.15)) for (_, v), h in zip(inside, holds, strict=True))
    mkt = 10_000 / -math.log(num / sum(holds)) - 273.15
    return {"peak": peak, "beyond": beyond, "mkt": mkt, "n": len(inside)}


def parse_ts(text: str) -> int:
    from datetime import datetime  # noqa: PLC0415

    return int(datetime.fromisoformat(text).timestamp() * US)


async def test_excursion_report_end_to_end(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a real alarm, the PDF shows recomputed figures, signatures, page X of N and provenance."""
    async with Receiver() as receiver:
        await _story(broker, prefix, tmp_path, backend, monkeypatch, receiver)


async def _story(  # noqa: PLR0917 - the fixtures, passed on
    broker: RunningBroker,
    prefix: str,
    tmp_path: Path,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    config = write_with_api(tmp_path, broker, prefix, backend, receiver.url)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        await drive_excursion(broker, config)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as client:

            async def cleared() -> bool:
                got = (await client.get("/api/v1/alarms", headers=auth("viewer"))).json()
                return any(a["cleared_at"] and a["rule"] == "high" for a in got)

            await eventually(cleared, what="the excursion to be raised and cleared")
            await eventually(lambda: bool(receiver.received), what="the pager notification")
            [alarm] = [a for a in (await client.get("/api/v1/alarms", headers=auth("viewer"))).json()
                       if a["rule"] == "high"]  # fmt: skip
            aid = alarm["id"]
            ack = {"user": "olga", "password": OPERATOR_PW, "meaning": ACK, "reason": "door left open"}
            assert (await client.post(f"/api/v1/alarms/{aid}/ack", json=ack)).status_code == 200
            review = {"user": "quinn", "password": QA_PW, "meaning": "reviewed", "reason": "assessed",
                      "impact": "no_impact", "root_cause": "door", "comment": "short"}  # fmt: skip
            done = await client.post(f"/api/v1/alarms/{aid}/review", json=review)
            assert done.status_code == 200, done.text
            # Roles: a viewer's token cannot generate; malformed ids are 4xx, unknown 404.
            assert (
                await client.post(f"/api/v1/alarms/{aid}/report", headers=auth("viewer"))
            ).status_code == 403
            olga = httpx.AsyncClient(base_url=running.base_url, timeout=60)
            session = await olga.post("/api/v1/session", json={"user": "olga", "password": OPERATOR_PW})
            assert session.status_code == 200, session.text
            olga.headers["X-CSRF-Token"] = session.json()["csrf_token"]
            assert (await olga.post("/api/v1/alarms/abc/report")).status_code == 422
            assert (await olga.post(f"/api/v1/alarms/{2**64}/report")).status_code == 422
            assert (await olga.post("/api/v1/alarms/9999/report")).status_code == 404
            assert (await client.get("/api/v1/reports/x.pdf", headers=auth("viewer"))).status_code == 422
            assert (await client.get("/api/v1/reports/99", headers=auth("viewer"))).status_code == 404
            # The operator's service token reads only: generating is a person's act.
            assert (
                await client.post(f"/api/v1/alarms/{aid}/report", headers=auth("operator"))
            ).status_code == 403
            made = await olga.post(f"/api/v1/alarms/{aid}/report")
            await olga.aclose()
            assert made.status_code == 201, made.text
            report = made.json()
            rid = report["id"]
            assert report["kind"] == "excursion"
            assert report["intact"] is True
            pdf = (await client.get(f"/api/v1/reports/{rid}.pdf", headers=auth("viewer"))).content
            csv_text = (await client.get(f"/api/v1/reports/{rid}.csv", headers=auth("viewer"))).text
            window = report["data"]["window"]
            raw = (
                await client.get(
                    "/api/v1/readings",
                    params={
                        "device": "inc-1",
                        "metric": "temp_c",
                        "since": format_ts(window["start_us"]),
                        "until": format_ts(window["end_us"]),
                    },
                    headers=auth("viewer"),
                )
            ).json()
            # Review signing: a service token never signs; an operator may not; qa signs once.
            signed = {"user": "quinn", "password": QA_PW, "meaning": "reviewed", "reason": "read it"}
            token = await client.post(f"/api/v1/reports/{rid}/review", json=signed, headers=auth("viewer"))
            assert token.status_code == 403
            op = {**signed, "user": "olga", "password": OPERATOR_PW}
            assert (await client.post(f"/api/v1/reports/{rid}/review", json=op)).status_code == 403
            assert (await client.post("/api/v1/reports/99/review", json=signed)).status_code == 404
            ok = await client.post(f"/api/v1/reports/{rid}/review", json=signed)
            assert ok.status_code == 200, ok.text
            [sig] = ok.json()["signatures"]
            assert "signed by Quinn Quality (quinn)" in sig["manifestation"]
            again = await client.post(f"/api/v1/reports/{rid}/review", json=signed)
            assert again.status_code == 409
            # The command line: qa generates a second report of the alarm, lists and downloads.
            cli_pdf = tmp_path / "cli.pdf"
            argv = ["report", "excursion", str(aid), "--config", str(tmp_path / "c.yaml"), "--url",
                    running.base_url, "--user", "quinn", "--password-stdin",
                    "--out", str(cli_pdf)]  # fmt: skip
            monkeypatch.setattr("sys.stdin", io.StringIO(QA_PW + "\n"))
            assert await asyncio.to_thread(main, argv) == 0
            assert cli_pdf.read_bytes().startswith(b"%PDF")
            monkeypatch.setenv("COLDWATCH_API_TOKEN", TOKENS["viewer"])
            got_csv = tmp_path / "r.csv"
            argv = ["report", "get", str(rid), "--format", "csv", "--out", str(got_csv), "--config",
                    str(tmp_path / "c.yaml"), "--url", running.base_url]  # fmt: skip
            assert await asyncio.to_thread(main, argv) == 0
            assert got_csv.read_text() == csv_text.replace("\r\n", "\n")
            argv = ["report", "review", str(rid + 1), "--user", "quinn", "--meaning", "approved",
                    "--reason", "cli", "--password-stdin", "--config", str(tmp_path / "c.yaml"),
                    "--url", running.base_url]  # fmt: skip
            monkeypatch.setattr("sys.stdin", io.StringIO(QA_PW + "\n"))
            assert await asyncio.to_thread(main, argv) == 0
            second = (await client.get(f"/api/v1/reports/{rid + 1}", headers=auth("viewer"))).json()
            assert second["reviewed"] is True
            assert second["signatures"][0]["meaning"] == "approved"
            listed = (await client.get("/api/v1/reports", headers=auth("viewer"))).json()
            assert [(r["id"], r["generated_by"], r["reviewed"]) for r in listed] == [
                (rid + 1, "quinn", True),
                (rid, "olga", True),
            ]
    readings = [{"ts_us": parse_ts(r["ts"]), "value": r["value"]} for r in raw]
    raised = parse_ts(alarm["raised_at"])
    cleared_us = parse_ts(alarm["cleared_at"])
    mine = recompute(readings, raised, cleared_us, 30.0)
    pages = pdf_text(pdf)
    text = "\n".join(pages)
    flat = " ".join(text.split())
    assert f"page 1 of {len(pages)}" in flat
    assert all(f"page {i + 1} of {len(pages)}" in " ".join(p.split()) for i, p in enumerate(pages))
    assert f"{mine['peak']:.2f}°C" in flat
    assert f"{mine['mkt']:.2f}°C" in flat
    assert duration_text(mine["beyond"][38.0]) in flat
    assert duration_text(mine["beyond"][37.5]) in flat
    assert mine["beyond"][37.5] > mine["beyond"][38.0] > 0
    assert "signed by Olga Operator (olga) on" in flat
    assert "meaning: acknowledged, investigating" in flat
    assert "signed by Quinn Quality (quinn) on" in flat
    assert "webhook: pager" in flat
    assert "not delivered" not in flat
    assert "No notification was sent" not in flat
    assert "(Europe/Paris)" in flat
    head = report["audit_head"]
    assert f"audit head #{head['seq']} {head['hash'][:12]}" in flat
    if backend.postgres:
        url = urlsplit(backend.location)
        assert f"PostgreSQL {url.hostname}:{url.port}{url.path} " in flat
        assert url.username is not None
        assert f"{url.username}@" not in flat
    else:
        assert "SQLite coldwatch.db " in flat
    assert "inc-1" in csv_text
    assert f"{mine['n']}" in csv_text.splitlines()[1].split(",")
    # A smoke render: the first page is not blank.
    image = pdfium.PdfDocument(pdf)[0].render(scale=0.6).to_pil().convert("L")
    dark = int((np.asarray(image) < 128).sum())
    assert dark > 2000, dark
    (tmp_path / "excursion.pdf").write_bytes(pdf)
    # Audit: generation and the review signature are entries, and the signature is bound.
    trail = db_query(backend.location, "SELECT action, object_id, object_type FROM audit_log ORDER BY seq")
    actions = [r[0] for r in trail if r[1] == str(rid) and r[2] == "report"]
    assert actions == ["report.generated", "report.reviewed", "signature.applied"]
    async with opened(backend.location, config) as (storage, _, _):
        entries = [e async for e in storage.audit_entries()]
        count, problems = await signature_problems(identity_store(storage), entries)
    assert problems == []
    assert count == 4  # the acknowledgement, the alarm's review, both reports' reviews
    intact = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    # The review signature of report rid, copied onto the second report: audit verify reports it.
    _execute(
        backend,
        "INSERT INTO signatures(object_type, object_id, action, signer, full_name, meaning, reason, "
        f"signed_us, record_hash, content) SELECT object_type, '{rid + 1}', action, signer, full_name, "
        f"meaning, reason, signed_us, record_hash, content FROM signatures WHERE object_type = 'report' "
        f"AND object_id = '{rid}'",
    )
    tampered = coldwatch(tmp_path / "c.yaml", "audit", "verify")
    assert tampered.returncode == 1
    assert f"report {rid + 1}" in tampered.stdout
    assert "not this record" in tampered.stdout


def write_with_api(
    tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend, hook_url: str
) -> Config:
    """The console test's incubator (action above 38.0, alert above 37.5), API tokens, a pager webhook."""
    from tests.conftest import write_config  # noqa: PLC0415
    from tests.identity_helpers import FAST_IDENTITY  # noqa: PLC0415
    from tests.test_console_browser import HIGH_ACTION  # noqa: PLC0415

    return write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=[{"id": "inc-1", "kind": "incubator", "site": "s1", "area": "lab"}],
        rules={"devices": {"inc-1": [HIGH_ACTION, {"type": "comm_loss", "timeout_s": 600}]}},
        identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"},
        storage={"path": backend.location},
        api=api_section(),
        notify={
            "webhooks": {"pager": {"url": f"{hook_url}/pager", "timeout_s": 2}},
            "escalation": [{"tiers": [{"after_s": 0, "notify": ["pager"]}]}],
        },
    )
