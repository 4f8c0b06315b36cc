"""Batch and shipment records end to end: real broker, real daemon, real alarms, the API, the PDF's text."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pypdfium2

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.records.pdf import duration_text
from coldwatch.records.store import ReportStore
from coldwatch.storage.identity_store import identity_store
from tests.batch_helpers import DEVICES, SIGN_MEANING
from tests.conftest import (
    Backend,
    db_query,
    eventually,
    publish_all,
    reading,
    running_daemon,
    telemetry_topic,
    write_config,
)
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, QA_PW, opened, people

US = 1_000_000
COI = "=W4321 26 000042 ß  7"  # opaque, stored and printed as given
VIEWER_TOKEN = "viewer-token-for-batches-0001"


def site(tmp_path: Path, broker: RunningBroker, prefix: str, backend: Backend) -> Config:
    """The test site (a room, an incubator, a shipper) on ``backend``, with a viewer token."""
    return write_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        devices=DEVICES,
        api={"users": {"vera-viewer": {"role": "viewer"}}},
        storage={"path": backend.location},
        identity=FAST_IDENTITY,
        site={"timezone": "Europe/Paris"},
    )


def signed(user: str, password: str, reason: str, **body: Any) -> dict[str, Any]:
    """A signed body with the records' meaning."""
    return {"user": user, "password": password, "meaning": SIGN_MEANING, "reason": reason, **body}


def iso(ts_s: float) -> str:
    """RFC 3339 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts_s))


def incubator_trace(t0: int) -> list[tuple[int, float]]:
    """2.5 h at 10 s: 37.0 C, with 39.0 C during [t0+30 min, t0+40 min) and [t0+120 min, t0+130 min)."""
    out = []
    for i in range(900):
        ts = t0 + 10 * i
        hot = t0 + 1800 <= ts < t0 + 2400 or t0 + 7200 <= ts < t0 + 7800
        out.append((ts, 39.0 if hot else 37.0))
    return out


def seconds_above(trace: list[tuple[int, float]], start: int, end: int, level: float, cap_s: float) -> float:
    """Time strictly above ``level`` in [start, end), a reading held until the next (capped): plain Python."""
    inside = [(t, v) for t, v in trace if start <= t < end]
    total = 0.0
    for i, (t, v) in enumerate(inside):
        nxt = inside[i + 1][0] if i + 1 < len(inside) else end
        if v > level:
            total += min(nxt - t, cap_s)
    return total


def pdf_text(pdf: bytes) -> str:
    """Every page's text."""
    doc = pypdfium2.PdfDocument(io.BytesIO(pdf))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


async def session(client: httpx.AsyncClient, user: str, password: str) -> dict[str, str]:
    """Sign in on ``client`` (its cookie jar keeps the session); the CSRF header."""
    answer = await client.post("/api/v1/session", json={"user": user, "password": password})
    assert answer.status_code == 200, answer.text
    return {"X-CSRF-Token": answer.json()["csrf_token"]}


async def stored_pdf(backend: Backend, config: Config, report_id: int) -> tuple[bytes, dict[str, Any]]:
    """A stored report's PDF and figures."""
    async with opened(backend.location, config) as (storage, _, _):
        report = await ReportStore(identity_store(storage), "UTC").get(report_id)
    assert report is not None
    return report.pdf, report.data


async def test_batch_record_excursion_inside_not_outside(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend, monkeypatch: Any
) -> None:
    """An excursion inside a stay is in the record, one outside is not; reviewing it changes the verdict."""
    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    config = site(tmp_path, broker, prefix, backend)
    t0 = int(time.time()) - 3 * 3600
    trace = incubator_trace(t0)
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        topic = telemetry_topic(config, "inc-1")
        await publish_all(
            broker,
            [(topic, reading(i, {"temp_c": v, "co2_pct": 5.0}, ts=t)) for i, (t, v) in enumerate(trace)],
            clients=1,
        )

        def two_cleared() -> bool:
            rows = db_query(
                backend.location,
                "SELECT raised_ts_us FROM alarms WHERE device_id = 'inc-1' "
                "AND metric = 'temp_c' AND cleared_ts_us IS NOT NULL",
            )
            windows = {(r[0] // US - t0) // 3600 for r in rows}
            return windows == {0, 2}

        await eventually(two_cleared, timeout_s=60, what="both excursions raised and cleared")
        stays = [
            {"site": "s1", "area": "room-a", "from": iso(t0), "until": iso(t0 + 600)},
            {"device": "inc-1", "from": iso(t0 + 600), "until": iso(t0 + 3600)},
            # Planned, not begun when the record is generated: no figures for it.
            {"device": "inc-1", "from": iso(int(time.time()) + 3600), "until": iso(int(time.time()) + 7200)},
        ]
        async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as client:
            viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
            # Roles: a viewer reads and never registers; a service token never signs.
            refused = await client.post(
                "/api/v1/batches",
                headers=viewer,
                json=signed("olga", OPERATOR_PW, "x", lot="L1", product="p", coi="c", stays=stays),
            )
            assert refused.status_code == 403, refused.text
            body = signed(
                "olga", OPERATOR_PW, "batch made", lot="LOT-7", product="CAR-T", coi=COI, stays=stays
            )
            made = await client.post("/api/v1/batches", json=body)
            assert made.status_code == 200, made.text
            assert made.json()["coi"] == COI
            assert (await client.get("/api/v1/batches/LOT-7", headers=viewer)).json()["version"] == 1
            csrf = await session(client, "olga", OPERATOR_PW)
            first = await client.post("/api/v1/batches/LOT-7/report", headers=csrf)
            assert first.status_code == 201, first.text
            assert first.json()["verdict"] == "excursions awaiting review"
            pdf, data = await stored_pdf(backend, config, first.json()["id"])
            alarm_ids = {a["id"] for a in data["alarms"]}
            inside = db_query(
                backend.location, "SELECT id, raised_ts_us FROM alarms WHERE device_id = 'inc-1'"
            )
            expected = {i for i, raised in inside if raised < (t0 + 3600) * US}
            assert alarm_ids == expected
            assert all(raised < (t0 + 3600) * US for i, raised in inside if i in alarm_ids)
            # The figures, recomputed from the raw trace.
            [temp] = [r for r in data["rows"] if r["device"] == "inc-1" and r["metric"] == "temp_c"]
            above = seconds_above(trace, t0 + 600, t0 + 3600, 37.5, 30.0)
            assert above == 600.0
            assert temp["beyond alert high 37.5 s"] == above
            assert temp["max"] == 39.0
            assert temp["n"] == sum(1 for t, _ in trace if t0 + 600 <= t < t0 + 3600)
            text = pdf_text(pdf)
            assert "This stay had not begun when the record was generated: no figures yet." in text
            assert len({r["stay_from_us"] for r in data["rows"]}) == 2  # the planned stay has no rows
            # Columns in a reading order (the stored figures' keys are sorted): where, what, figures.
            assert data["columns"][:4] == ["place", "device", "metric", "stay_from_us"]
            assert data["columns"][-2:] == ["calibration_state", "out_of_calibration"]
            beyond = [c for c in data["columns"] if c.startswith("beyond ")]
            assert data["columns"].index(beyond[0]) == data["columns"].index("mkt_c") + 1
            for needle in (
                "Verdict: excursions awaiting review",
                COI.split(maxsplit=1)[0],
                "LOT-7",
                duration_text(above),
                "signed by Olga Operator (olga)",
                f"meaning: {SIGN_MEANING}",
                "page 1 of",
            ):
                assert needle in text, needle
            # Acknowledge and review every touching alarm; the verdict follows.
            states = dict(db_query(backend.location, "SELECT id, state FROM alarms"))
            for alarm_id in sorted(i for i in alarm_ids if states[i] != "closed"):
                ack = await client.post(
                    f"/api/v1/alarms/{alarm_id}/ack",
                    headers=csrf,
                    json={
                        "user": "olga",
                        "password": OPERATOR_PW,
                        "meaning": "acknowledged, investigating",
                        "reason": "batch check",
                    },
                )
                assert ack.status_code == 200, (states, ack.text)
            async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as qa:
                for alarm_id in sorted(alarm_ids):
                    review = await qa.post(
                        f"/api/v1/alarms/{alarm_id}/review",
                        json={
                            "user": "quinn",
                            "password": QA_PW,
                            "meaning": "reviewed",
                            "reason": "assessed",
                            "impact": "no_impact",
                            "root_cause": "door left open",
                        },
                    )
                    assert review.status_code == 200, review.text
            second = await client.post("/api/v1/batches/LOT-7/report", headers=csrf)
            assert second.json()["verdict"] == "excursions, all reviewed"
            pdf, _ = await stored_pdf(backend, config, second.json()["id"])
            (tmp_path / "batch-reviewed.pdf").write_bytes(pdf)  # kept for a look (pytest --basetemp)
            text = pdf_text(pdf)
            assert "Verdict: excursions, all reviewed" in text
            assert "signed by Quinn Quality (quinn)" in text
            # Amend: the alarm's stay is moved off the excursion; both versions are shown.
            async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as qa:
                amended = await qa.post(
                    "/api/v1/batches/LOT-7/amend",
                    json=signed(
                        "quinn",
                        QA_PW,
                        "incubator time corrected",
                        stays=[{"device": "inc-1", "from": iso(t0 + 2700), "until": iso(t0 + 3600)}],
                    ),
                )
            assert amended.status_code == 200, amended.text
            assert [v["version"] for v in amended.json()["versions"]] == [1, 2]
            third = await client.post("/api/v1/batches/LOT-7/report", headers=csrf)
            assert third.json()["verdict"] == "no excursion"
            pdf, _ = await stored_pdf(backend, config, third.json()["id"])
            text = pdf_text(pdf)
            assert "Version 1" in text
            assert "incubator time corrected" in text
            # A stay not over yet: reported to date, and the record says so.
            until = time.time() + 7200
            async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as qa:
                amended = await qa.post(
                    "/api/v1/batches/LOT-7/amend",
                    json=signed(
                        "quinn", QA_PW, "still in the incubator",
                        stays=[{"device": "inc-1", "from": iso(t0 + 2700), "until": iso(until)}],
                    ),
                )  # fmt: skip
            assert amended.status_code == 200, amended.text
            fourth = await client.post("/api/v1/batches/LOT-7/report", headers=csrf)
            data = fourth.json()["data"]
            assert data["stays_not_over"] == 1
            [figures_until_us] = {r["figures_until_us"] for r in data["rows"]}
            assert figures_until_us <= time.time() * 1_000_000 < until * 1_000_000
            text = " ".join(pdf_text((await stored_pdf(backend, config, fourth.json()["id"]))[0]).split())
            assert "To date: 1 of 1 stay not over when this record was generated" in text
            assert "This stay was not over when the record was generated: figures to" in text


async def test_batch_api_refuses_malformed_input(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Unknown places, reversed times, bad lots, missing fields and wrong roles are 4xx with a reason."""
    config = site(tmp_path, broker, prefix, backend)
    now = time.time()
    good = {"device": "inc-1", "from": iso(now - 3600), "until": iso(now - 60)}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"stays": [{**good, "device": "nope"}]}, 422, "no configured device"),
        ({"stays": [{**good, "from": iso(now), "until": iso(now - 60)}]}, 422, "must end after it starts"),
        (
            {"stays": [{"site": "s1", "area": "room-z", "from": good["from"], "until": good["until"]}]},
            422,
            "no configured area",
        ),
        ({"stays": [{**good, "area": "room-a"}]}, 422, "either an area"),
        ({"stays": [{**good, "from": "yesterday"}]}, 422, "datetime"),
        ({"stays": []}, 422, "at least 1"),
        ({"lot": "bad lot!"}, 422, "lot id"),
        ({"coi": ""}, 422, "at least 1"),
        ({"extra": 1}, 422, "Extra inputs"),
    ]
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            for change, code, message in cases:
                body = signed("olga", OPERATOR_PW, "r", lot="L-1", product="p", coi="c", stays=[good])
                answer = await client.post("/api/v1/batches", json={**body, **change})
                assert answer.status_code == code, (change, answer.text)
                assert message in answer.text, (change, answer.text)
            broken = await client.post(
                "/api/v1/batches", content=b"{not json", headers={"content-type": "application/json"}
            )
            assert broken.status_code == 422
            admin = await client.post(
                "/api/v1/batches",
                json=signed("ada", "admin-secret-1", "r", lot="L-2", product="p", coi="c", stays=[good]),
            )
            assert admin.status_code == 403, admin.text
            wrong = await client.post(
                "/api/v1/batches",
                json=signed("olga", "wrong-password", "r", lot="L-3", product="p", coi="c", stays=[good]),
            )
            assert wrong.status_code == 401, wrong.text
            assert (
                await client.post(
                    "/api/v1/batches/NOPE/amend", json=signed("olga", OPERATOR_PW, "r", stays=[good])
                )
            ).status_code == 404
            assert (
                await client.post("/api/v1/shipments/99/receive", json=signed("olga", OPERATOR_PW, "r"))
            ).status_code == 404
            bad_hold = await client.post(
                "/api/v1/shipments",
                json=signed(
                    "olga",
                    OPERATOR_PW,
                    "r",
                    device="ln2-1",
                    coi="c",
                    origin="a",
                    destination="b",
                    required_hold_h=-1,
                ),
            )
            assert bad_hold.status_code == 422
            no_shipper = await client.post(
                "/api/v1/shipments",
                json=signed(
                    "olga",
                    OPERATOR_PW,
                    "r",
                    device="inc-1",
                    coi="c",
                    origin="a",
                    destination="b",
                    required_hold_h=5,
                ),
            )
            assert no_shipper.status_code == 422
            assert "no configured cryoshipper" in no_shipper.text
            anonymous = await client.post("/api/v1/batches/L-1/report")
            assert anonymous.status_code == 401
            assert (await client.get("/api/v1/batches")).status_code == 401


def shipper_trace(t0: int) -> list[dict[str, Any]]:
    """2 h 50 min at 10 s: cold and warming linearly, then in transit a 10 min rise above -150 C with 2 min
    above -135 C, a lid opening and a tilt; the readings of a flight (t0+100..120 min) come late, buffered."""
    out = []
    for i in range(1020):
        ts = t0 + 10 * i
        temp = -190.0 + 0.01 * i
        if t0 + 6000 <= ts < t0 + 6600:
            temp = -132.0 if t0 + 6300 <= ts < t0 + 6420 else -140.0
        values: dict[str, Any] = {
            "temp_c": temp,
            "temp_b_c": temp - 2.0,
            "ln2_level_pct": 80.0 - 0.005 * i,
            "lid_open": t0 + 5000 <= ts < t0 + 5030,
            "tilt_deg": 60.0 if t0 + 8000 <= ts < t0 + 8040 else 3.0,
        }
        out.append({"ts": ts, "values": values, "buffered": t0 + 6000 <= ts < t0 + 7200})
    return out


def least_squares_hours(points: list[tuple[float, float]], target: float) -> float:
    """Hours until a straight line fitted to (hours, value) points reaches ``target`` (plain Python)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    now_x = points[-1][0]
    now_y = my + slope * (now_x - mx)
    return (target - now_y) / slope


async def test_shipment_record_with_backfilled_flight(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Dispatch to receipt: both probes, time above -150 C recomputed, backfill marked, forecast, margin."""
    from coldwatch.records.shipment import generate_shipment_report  # noqa: PLC0415
    from coldwatch.records.shipments import Shipments, forecast_at, forecast_rule  # noqa: PLC0415
    from coldwatch.signatures import SignatureDraft  # noqa: PLC0415

    config = site(tmp_path, broker, prefix, backend)
    t0 = int(time.time()) - 3 * 3600
    trace = shipper_trace(t0)
    live = [r for r in trace if not r["buffered"]]
    late = [r for r in trace if r["buffered"]]
    topic = telemetry_topic(config, "ln2-1")
    seq = {r["ts"]: i for i, r in enumerate(trace)}
    async with running_daemon(config):
        for batch in (live, late):  # the flight's readings arrive after the others, flagged buffered
            await publish_all(
                broker,
                [
                    (topic, reading(seq[r["ts"]], r["values"], ts=r["ts"], buffered=r["buffered"]))
                    for r in batch
                ],
                clients=1,
            )
        await eventually(
            lambda: db_query(backend.location, "SELECT COUNT(*) FROM readings")[0][0] >= 5 * len(trace),
            timeout_s=60,
            what="every reading stored",
        )
    dispatch, receipt = t0 + 4200, t0 + 9600
    async with opened(backend.location, config) as (storage, identity, _):
        await people(identity)
        spec = forecast_rule(config, "ln2-1")
        assert spec is not None
        forecast_s = await forecast_at(storage, spec, "ln2-1", dispatch * US)
        shipments = Shipments(identity_store(storage), config)
        sent = SignatureDraft("olga", "Olga Operator", SIGN_MEANING, "dispatched to the clinic")
        record = await shipments.start(
            "ln2-1", COI, "Site 1", "Hospital 9", 6 * 3600, forecast_s, sent, dispatch * US
        )
        got = SignatureDraft("quinn", "Quinn Quality", SIGN_MEANING, "received, seal intact")
        await shipments.receive(record.id, got, receipt * US)
        report_id, data = await generate_shipment_report(storage, config, record.id, "olga", receipt * US + 5)
        report = await ReportStore(identity_store(storage), "UTC").get(report_id)
        # A second shipment after the trace ended: no probe sent anything; probe B is named as silent.
        quiet_from = trace[-1]["ts"] + 60
        quiet = await shipments.start("ln2-1", COI, "Site 1", "Hospital 9", 3600, None, sent, quiet_from * US)
        await shipments.receive(quiet.id, got, (quiet_from + 120) * US)
        quiet_id, quiet_data = await generate_shipment_report(
            storage, config, quiet.id, "olga", (quiet_from + 121) * US
        )
        quiet_report = await ReportStore(identity_store(storage), "UTC").get(quiet_id)
    assert quiet_report is not None
    assert [r["probe"] for r in quiet_data["rows"]] == ["temp_c"]
    assert quiet_data["rows"][0]["n"] == 0
    assert quiet_data["probes_without_readings"] == ["probe B (temp_b_c)"]
    assert "probe B (temp_b_c): no readings during transit" in pdf_text(quiet_report.pdf)
    assert data["probes_without_readings"] == []
    assert report is not None
    (tmp_path / "shipment.pdf").write_bytes(report.pdf)
    # The forecast at dispatch, recomputed: least squares over the rule's window (6 h: all since t0).
    before = [r for r in trace if dispatch - spec.window_s <= r["ts"] <= dispatch]
    to_warm = least_squares_hours([((r["ts"] - t0) / 3600, r["values"]["temp_c"]) for r in before], -150.0)
    to_empty = least_squares_hours(
        [((r["ts"] - t0) / 3600, r["values"]["ln2_level_pct"]) for r in before], 0.0
    )
    assert forecast_s is not None
    assert abs(forecast_s - min(to_warm, to_empty) * 3600) < 1.0
    summary = data["summary"]
    assert data["columns"][:3] == ["probe", "label", "n"]
    assert data["columns"][-1] == "out_of_calibration"
    assert summary["dispatch_forecast_s"] == forecast_s
    assert summary["smallest_margin_s"] <= forecast_s - 6 * 3600 + 1e-6
    # Time above each level and backfill, recomputed from the raw trace (cap 3 x 10 s).
    probe_a = [(r["ts"], r["values"]["temp_c"]) for r in trace]
    [row_a] = [r for r in data["rows"] if r["probe"] == "temp_c"]
    above_150 = seconds_above(probe_a, dispatch, receipt, -150.0, 30.0)
    above_135 = seconds_above(probe_a, dispatch, receipt, -135.0, 30.0)
    assert (above_150, above_135) == (600.0, 120.0)
    assert row_a["above -150 C s"] == above_150
    assert row_a["above -135 C s"] == above_135
    flight = sum(1 for r in trace if r["buffered"] and dispatch <= r["ts"] < receipt)
    assert row_a["backfilled"] == flight == 120
    assert summary["backfilled"] == 2 * flight  # both probes
    assert (summary["lid_events"], summary["tilt_events"]) == (1, 1)
    assert summary["excursions"] >= 1  # the rise above -150 C raised an alarm in transit
    text = pdf_text(report.pdf)
    for needle in (
        COI.split(maxsplit=1)[0],
        "Hospital 9",
        duration_text(above_150),
        duration_text(above_135),
        f"{2 * flight} (sent late",
        "(120 backfilled)",
        "lid open",
        "tilt over 45 deg",
        "signed by Olga Operator (olga)",
        "signed by Quinn Quality (quinn)",
        "received, seal intact",
        "Awaiting QA review",
        "page 1 of",
    ):
        assert needle in text, needle


def cli(config: Path, *args: str, password: str | None = None, token: str | None = None) -> Any:
    """Run the coldwatch command line (the password on standard input); its completed process."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    if token is not None:
        env["COLDWATCH_API_TOKEN"] = token
    stdin = ["--password-stdin"] if password is not None else []
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", *args, *stdin, "--config", str(config)],
        input=(password or "") + "\n", capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip


async def test_command_line_registers_ships_and_reports(
    broker: RunningBroker, prefix: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """batches register|amend|show|list, shipments start|receive|list, report batch|shipment: end to end."""
    import asyncio  # noqa: PLC0415

    monkeypatch.setenv("COLDWATCH_TOKEN_VERA_VIEWER", VIEWER_TOKEN)
    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    config = site(tmp_path, broker, prefix, backend)
    path = tmp_path / "c.yaml"
    now = time.time()
    sign = ["--user", "olga", "--meaning", SIGN_MEANING, "--reason", "made on line 2"]
    async with running_daemon(config) as running:
        async with opened(backend.location, config) as (_, identity, _):
            await people(identity)
        url = ["--url", running.base_url]

        async def run(*args: str, password: str | None = OPERATOR_PW, token: str | None = None) -> Any:
            return await asyncio.to_thread(cli, path, *args, *url, password=password, token=token)

        stay_a = f"area:s1/room-a,{iso(now - 7200)},{iso(now - 3600)}"
        stay_b = f"device:inc-1,{iso(now - 3600)},{iso(now - 60)}"
        made = await run("batches", "register", "--lot", "LOT-9", "--product", "CAR-T", "--coi", COI,
                         "--stay", stay_a, "--stay", stay_b, *sign)  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "signed by Olga Operator (olga)" in made.stdout
        bad = await run("batches", "amend", "LOT-9", "--stay", "device:nope,x,y", *sign)
        assert bad.returncode == 1
        assert "device:nope" not in bad.stderr or "error:" in bad.stderr
        amended = await run("batches", "amend", "LOT-9", "--stay", stay_b, *sign)
        assert amended.returncode == 0, amended.stderr
        shown = await run("batches", "show", "LOT-9", password=None, token=VIEWER_TOKEN)
        assert "version 2 (current)" in shown.stdout, shown.stdout + shown.stderr
        assert repr(COI) in shown.stdout
        listed = await run("batches", "list", password=None, token=VIEWER_TOKEN)
        assert "LOT-9" in listed.stdout
        out = tmp_path / "batch.pdf"
        report = await run("report", "batch", "LOT-9", "--user", "olga", "--out", str(out))
        assert report.returncode == 0, report.stderr
        assert "verdict: no excursion" in report.stdout
        assert "Verdict: no excursion" in pdf_text(out.read_bytes())
        started = await run("shipments", "start", "--device", "ln2-1", "--coi", COI, "--origin", "Site 1",
                            "--destination", "Hospital", "--hold-h", "120", *sign)  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert "in_transit" in started.stdout
        assert "no forecast" in started.stdout  # no readings: the rule cannot predict
        again = await run("shipments", "start", "--device", "ln2-1", "--coi", "x", "--origin", "a",
                          "--destination", "b", "--hold-h", "1", *sign)  # fmt: skip
        assert again.returncode == 1
        assert "open shipment" in again.stderr
        received = await run("shipments", "receive", "1", "--user", "quinn", "--meaning", SIGN_MEANING,
                             "--reason", "arrived", password=QA_PW)  # fmt: skip
        assert received.returncode == 0, received.stderr
        assert "receive: signed by Quinn Quality (quinn)" in received.stdout
        listed = await run("shipments", "list", password=None, token=VIEWER_TOKEN)
        assert "shipment 1 on ln2-1: received" in listed.stdout
        out = tmp_path / "shipment.pdf"
        report = await run("report", "shipment", "1", "--user", "quinn", "--out", str(out), password=QA_PW)
        assert report.returncode == 0, report.stderr
        text = pdf_text(out.read_bytes())
        assert "no forecast" in text
        assert "signed by Quinn Quality (quinn)" in text
        verified = await asyncio.to_thread(cli, path, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "electronic signatures: 4 bound" in verified.stdout  # register, amend, dispatch, receipt
