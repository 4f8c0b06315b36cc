"""``coldwatch batches``, ``coldwatch shipments`` and ``coldwatch report batch|shipment``, through the API.

- ``batches register --lot L --product P --coi C --stay PLACE,FROM,UNTIL ...`` and
  ``batches amend LOT --stay ...`` are signed with every component (``--user``, the
  password asked for, ``--meaning``, ``--reason``). A PLACE is ``area:SITE/AREA`` or
  ``device:ID``; FROM and UNTIL are RFC 3339 times with an offset.
- ``shipments start --device D --coi C --origin O --destination X --hold-h H`` and
  ``shipments receive ID`` are signed the same way.
- ``batches list|show`` and ``shipments list`` read with ``$COLDWATCH_API_TOKEN``.
- ``report batch LOT`` / ``report shipment ID`` generate the record as a person (operator
  or qa: signed in with the password) and write its PDF.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import quote

import httpx

from coldwatch.cli_people import _Secrets, add_signing_arguments, signed_body
from coldwatch.client import ApiClientError, base_url, call
from coldwatch.config import load_config
from coldwatch.errors import ColdwatchError

__all__ = ["add_batch_commands", "add_record_report_commands", "parse_stay"]


def parse_stay(text: str) -> dict[str, str]:
    """``area:SITE/AREA,FROM,UNTIL`` or ``device:ID,FROM,UNTIL`` as the API's stay."""
    parts = text.split(",")
    if len(parts) != 3:  # place, from, until
        raise ColdwatchError(f"a stay is PLACE,FROM,UNTIL (got {text!r})")
    place, start, until = (p.strip() for p in parts)
    kind, _, name = place.partition(":")
    if kind == "device" and name:
        return {"device": name, "from": start, "until": until}
    site, _, area = name.partition("/")
    if kind == "area" and site and area:
        return {"site": site, "area": area, "from": start, "until": until}
    raise ColdwatchError(f"a place is area:SITE/AREA or device:ID (got {place!r})")


def _print_batch(batch: dict[str, Any]) -> None:
    print(f"batch {batch['lot']}: {batch['product']}, chain of identity {batch['coi']!r}")
    print(f"  current version {batch['version']}")
    for version in batch["versions"]:
        current = " (current)" if version["version"] == batch["version"] else ""
        print(f"  version {version['version']}{current}")
        for stay in version["stays"]:
            print(f"    {stay['place']}: {stay['from']} .. {stay['until']}")
        if version["signature"]:
            print(f"    {version['signature']['manifestation']}; reason: {version['signature']['reason']}")


def _print_shipment(s: dict[str, Any]) -> None:
    forecast = "no forecast" if s["dispatch_forecast_h"] is None else f"{s['dispatch_forecast_h']:.1f} h"
    print(f"shipment {s['id']} on {s['device']}: {s['state']}, {s['origin']} -> {s['destination']}, "
          f"chain of identity {s['coi']!r}, required hold {s['required_hold_h']:g} h, "
          f"forecast at dispatch {forecast}")  # fmt: skip
    for signature in s["signatures"]:
        print(f"  {signature['action']}: {signature['manifestation']}")


def _cmd_batches(args: argparse.Namespace) -> int:
    url = base_url(load_config(args.config), args.url)
    command = args.batches_command
    if command == "list":
        for b in call(url, "GET", "/api/v1/batches"):
            print(f"{b['lot']:<20} v{b['version']:<3} {b['registered_at']}  {b['product']}  {b['coi']!r}")
        return 0
    if command == "show":
        _print_batch(call(url, "GET", f"/api/v1/batches/{quote(args.lot, safe='')}"))
        return 0
    stays = [parse_stay(s) for s in args.stay]
    body = signed_body(args)
    if command == "register":
        body.update(lot=args.lot, product=args.product, coi=args.coi, stays=stays)
        _print_batch(call(url, "POST", "/api/v1/batches", body, signed=True))
    else:
        body["stays"] = stays
        _print_batch(
            call(url, "POST", f"/api/v1/batches/{quote(args.lot, safe='')}/amend", body, signed=True)
        )
    return 0


def _cmd_shipments(args: argparse.Namespace) -> int:
    url = base_url(load_config(args.config), args.url)
    command = args.shipments_command
    if command == "list":
        for s in call(url, "GET", "/api/v1/shipments"):
            _print_shipment(s)
        return 0
    body = signed_body(args)
    if command == "start":
        body.update(device=args.device, coi=args.coi, origin=args.origin, destination=args.destination,
                    required_hold_h=args.hold_h)  # fmt: skip
        _print_shipment(call(url, "POST", "/api/v1/shipments", body, signed=True))
    else:
        _print_shipment(call(url, "POST", f"/api/v1/shipments/{args.id}/receive", body, signed=True))
    return 0


def _cmd_record_report(args: argparse.Namespace) -> int:
    url = base_url(load_config(args.config), args.url)
    user = args.user or os.environ.get("COLDWATCH_USER")
    if not user:
        raise ColdwatchError("give --user (or set COLDWATCH_USER): a report is generated by a person")
    password = _Secrets(args.password_stdin).ask(f"password of {user}: ")
    path = (f"/api/v1/batches/{quote(args.subject, safe='')}/report" if args.report_command == "batch"
            else f"/api/v1/shipments/{int(args.subject)}/report")  # fmt: skip
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            session = client.post("/api/v1/session", json={"user": user, "password": password})
            if session.status_code >= 400:
                raise ApiClientError(session.status_code, session.text)
            headers = {"X-CSRF-Token": str(session.json()["csrf_token"])}
            made = client.post(path, headers=headers)
            if made.status_code >= 400:
                raise ApiClientError(made.status_code, made.json().get("detail", made.text))
            report = made.json()
            pdf = client.get(f"/api/v1/reports/{report['id']}.pdf").content
            client.delete("/api/v1/session", headers=headers)
    except httpx.HTTPError as exc:
        raise ApiClientError(0, f"cannot reach the daemon at {url}: {exc}") from exc
    target = args.out or f"{args.report_command}-report-{report['id']}.pdf"
    with open(target, "wb") as out:  # noqa: PTH123 - a plain file the person named
        out.write(pdf)
    verdict = f"; verdict: {report['verdict']}" if "verdict" in report else ""
    print(f"report {report['id']} ({args.report_command} {args.subject}) generated by {user}{verdict}")
    print(f"  PDF written to {target}; pdf sha256 {report['pdf_sha256']}")
    return 0


def _common(q: argparse.ArgumentParser, func: Any) -> None:
    q.add_argument("--config", required=True)
    q.add_argument("--url", help="the daemon's HTTP address (default: from the configuration)")
    q.set_defaults(func=func)


def add_batch_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``coldwatch batches register|amend|show|list`` and ``coldwatch shipments start|receive|list``."""
    p = sub.add_parser("batches", help="batch records: the places and times a batch used (signed)")
    b = p.add_subparsers(dest="batches_command", required=True)
    q = b.add_parser("register", help="register a batch with its stays, signed (operator or qa)")
    q.add_argument("--lot", required=True)
    q.add_argument("--product", required=True)
    q.add_argument("--coi", required=True, help="the chain-of-identity id, stored exactly as given")
    q.add_argument(
        "--stay", action="append", required=True, help="area:SITE/AREA,FROM,UNTIL or device:ID,FROM,UNTIL"
    )
    add_signing_arguments(q)
    _common(q, _cmd_batches)
    q = b.add_parser("amend", help="a new version of the batch's stays, signed with the reason")
    q.add_argument("lot")
    q.add_argument("--stay", action="append", required=True, help="the whole new set, as for register")
    add_signing_arguments(q)
    _common(q, _cmd_batches)
    q = b.add_parser("show", help="a batch with every version of its stays and signatures")
    q.add_argument("lot")
    _common(q, _cmd_batches)
    _common(b.add_parser("list", help="registered batches, newest first"), _cmd_batches)

    p = sub.add_parser("shipments", help="shipments on a cryoshipper, dispatch to receipt (signed)")
    s = p.add_subparsers(dest="shipments_command", required=True)
    q = s.add_parser("start", help="dispatch: start a shipment on a cryoshipper, signed")
    q.add_argument("--device", required=True)
    q.add_argument("--coi", required=True, help="the chain-of-identity id, stored exactly as given")
    q.add_argument("--origin", required=True)
    q.add_argument("--destination", required=True)
    q.add_argument("--hold-h", type=float, required=True, help="required hold time, hours")
    add_signing_arguments(q)
    _common(q, _cmd_shipments)
    q = s.add_parser("receive", help="receipt: end a shipment, signed")
    q.add_argument("id", type=int)
    add_signing_arguments(q)
    _common(q, _cmd_shipments)
    _common(s.add_parser("list", help="shipments, newest first"), _cmd_shipments)


def add_record_report_commands(reports: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``coldwatch report batch LOT`` and ``coldwatch report shipment ID``."""
    for name, what in (("batch", "the batch's lot id"), ("shipment", "the shipment's id")):
        q = reports.add_parser(name, help=f"generate the {name} record (operator or qa)")
        q.add_argument("subject", help=what)
        q.add_argument("--user", help="who generates it (default: $COLDWATCH_USER)")
        q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        q.add_argument("--out", help=f"where to write the PDF (default: {name}-report-ID.pdf)")
        _common(q, _cmd_record_report)
