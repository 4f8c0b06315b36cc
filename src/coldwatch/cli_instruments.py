"""``coldwatch instruments``: register, install, swap and calibrate instruments; list points and instruments.

Works on the database directly (the collector need not run; its next calibration check,
within ``calibration.check_interval_s``, raises or clears the alarms). Changes are made
as a person named with ``--as`` (operator or qa; password asked for, never given on the
command line) and take a reason; a calibration is signed with every component
(``--user``, the password, ``--meaning``, ``--reason``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable

from coldwatch.api_instruments import instrument_json, point_json, point_views
from coldwatch.audit_keys import current_signer, find_signer
from coldwatch.config import Config, load_config
from coldwatch.errors import ColdwatchError
from coldwatch.export import format_ts
from coldwatch.identity import Identity
from coldwatch.identity_model import IdentityError, Principal, SignerIdentity
from coldwatch.payload import parse_timestamp_us
from coldwatch.records.instruments import Instruments
from coldwatch.roles import Permission
from coldwatch.storage import open_existing
from coldwatch.storage.identity_store import WriteRefusedError, identity_store

__all__ = ["add_instrument_commands"]

CLIENT = "command line"


class _Passwords:
    """Passwords from the terminal, or one per line from standard input (``--password-stdin``)."""

    def __init__(self, from_stdin: bool) -> None:
        self._lines = iter(sys.stdin.read().splitlines()) if from_stdin else None

    def ask(self, prompt: str) -> str:
        if self._lines is None:
            return getpass.getpass(prompt)
        try:
            return next(self._lines)
        except StopIteration:
            raise ColdwatchError(f"standard input ended before: {prompt}") from None


def _time(text: str) -> int:
    try:
        return parse_timestamp_us(float(text) if text.replace(".", "", 1).isdigit() else text)
    except Exception as exc:
        msg = f"{text!r} is not an RFC 3339 time with offset nor epoch seconds"
        raise argparse.ArgumentTypeError(msg) from exc


async def _person(identity: Identity, name: str, passwords: _Passwords) -> Principal:
    password = passwords.ask(f"password of {name}: ")
    account = await identity.check_password(name, password, CLIENT, purpose=CLIENT)
    return Principal(
        account.name,
        account.full_name,
        account.role,
        "person",
        must_change_password=account.must_change_password,
    )


async def _read(config: Config, records: Instruments, args: argparse.Namespace) -> int:
    if args.instruments_command == "show":
        shown = await instrument_json(records, args.serial)
        if args.json:
            print(json.dumps(shown, ensure_ascii=False))
            return 0
        print(f"{shown['serial']}: {shown['model']} ({shown['manufacturer']})")
        for stay in shown["stays"]:
            print(
                f"  on {stay['device']} from {stay['from']} until {stay['until'] or 'now'}: {stay['reason']}"
            )
        for c in shown["calibrations"]:
            verdict = "passed" if c["passed"] else "FAILED"
            fixed = f", superseded by {c['superseded_by']}" if c["superseded_by"] else ""
            print(f"  calibration {c['id']}: performed {c['performed']}, due {c['due']}, {verdict}{fixed}")
            for sig in c["signatures"]:
                print(f"    {sig['manifestation']}")
        return 0
    views = await point_views(records.store, config, time.time_ns() // 1000)
    if args.json:
        for view in views:
            print(json.dumps(point_json(view), ensure_ascii=False))
        return 0
    print(f"{'point':<24} {'instrument':<16} {'state':<17} due")
    for view in views:
        c = view.calibration
        due = format_ts(c.due_us) if c.due_us is not None else ""
        print(f"{view.device_id:<24} {c.instrument_serial or '-':<16} {c.state.replace('_', ' '):<17} {due}")
    return 0


async def _change(records: Instruments, identity: Identity, args: argparse.Namespace, pw: _Passwords) -> str:
    now = time.time_ns() // 1000
    command = args.instruments_command
    if command == "calibrate":
        user = args.user
        password = pw.ask(f"password of {user} (signing): ")
        signer = await identity.verify_signer(
            action="calibrate",
            permission=Permission.CALIBRATE,
            meaning=args.meaning,
            user=user,
            password=password,
            client=CLIENT,
        )
        made = await records.calibrate(
            SignerIdentity(signer.name, signer.full_name, signer.role),
            args.serial,
            performed_us=args.performed,
            due_us=args.due,
            certificate=args.certificate,
            as_found=args.as_found,
            as_left=args.as_left,
            performed_by=args.performed_by,
            passed=args.result == "passed",
            meaning=args.meaning,
            reason=args.reason,
            now_us=now,
            supersedes=args.supersedes,
        )
        by = f"{signer.full_name} ({signer.name})"
        return f"calibration {made.id} of {made.serial} recorded, signed by {by}"
    who = await _person(identity, args.as_person, pw)
    if command == "add":
        await records.register(
            who,
            serial=args.serial,
            model=args.model,
            manufacturer=args.manufacturer,
            reason=args.reason,
            now_us=now,
        )
        return f"registered {args.serial}"
    if command == "remove":
        await records.remove(who, args.device, reason=args.reason, now_us=now, at_us=args.at)
        return f"removed the instrument of {args.device}"
    act = records.install if command == "install" else records.swap
    done = await act(who, args.device, args.serial, reason=args.reason, now_us=now, at_us=args.at)
    return f"{done.serial} measures {done.device_id} from {format_ts(done.from_us)}"


async def _instruments(config: Config, args: argparse.Namespace) -> int:
    current_signer.set(find_signer(config))  # entries appended here are sealed like the collector's
    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        store = identity_store(storage)
        records = Instruments(store, config.site.timezone, config.device_map())
        if args.instruments_command in {"list", "show"}:
            return await _read(config, records, args)
        identity = Identity(store, config.identity)
        print(await _change(records, identity, args, _Passwords(args.password_stdin)))
    except (IdentityError, WriteRefusedError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the reading helpers answer HTTP errors: show them plainly
        from fastapi import HTTPException  # noqa: PLC0415

        if isinstance(exc, HTTPException):
            print(f"refused: {exc.detail}", file=sys.stderr)
            return 1
        raise
    else:
        return 0
    finally:
        await storage.close()


def _cmd(args: argparse.Namespace) -> int:
    return asyncio.run(_instruments(load_config(args.config), args))


def _common(q: argparse.ArgumentParser, *, acting: bool, func: Callable[[argparse.Namespace], int]) -> None:
    q.add_argument("--config", required=True)
    if acting:
        q.add_argument(
            "--as", dest="as_person", required=True, help="who acts (operator or qa; password asked for)"
        )
        q.add_argument("--reason", required=True, help="why (mandatory, recorded in the audit trail)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q.set_defaults(func=func)


def add_instrument_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``coldwatch instruments add|install|swap|remove|calibrate|list|show``."""
    p = sub.add_parser("instruments", help="instruments on monitoring points and their calibration")
    cmds = p.add_subparsers(dest="instruments_command", required=True)
    q = cmds.add_parser("list", help="every point: its instrument and calibration state")
    q.add_argument("--json", action="store_true")
    _common(q, acting=False, func=_cmd)
    q = cmds.add_parser(
        "show", help="an instrument: its stays on points and its calibrations with signatures"
    )
    q.add_argument("serial")
    q.add_argument("--json", action="store_true")
    _common(q, acting=False, func=_cmd)
    q = cmds.add_parser("add", help="register an instrument")
    q.add_argument("serial")
    q.add_argument("--model", required=True)
    q.add_argument("--manufacturer", required=True)
    _common(q, acting=True, func=_cmd)
    for name, text in (
        ("install", "install an instrument on a point that has none"),
        ("swap", "replace a point's instrument (the old one's stay ends as the new one's starts)"),
    ):
        q = cmds.add_parser(name, help=text)
        q.add_argument("device", help="the monitoring point (device id)")
        q.add_argument("serial")
        q.add_argument("--at", type=_time, help="when (RFC 3339 or epoch seconds; default now)")
        _common(q, acting=True, func=_cmd)
    q = cmds.add_parser("remove", help="end a point's instrument stay without a replacement")
    q.add_argument("device")
    q.add_argument("--at", type=_time, help="when (RFC 3339 or epoch seconds; default now)")
    _common(q, acting=True, func=_cmd)
    q = cmds.add_parser("calibrate", help="record a calibration, signed (operator or qa)")
    q.add_argument("serial")
    q.add_argument("--performed", type=_time, required=True, help="when it was calibrated (RFC 3339)")
    q.add_argument("--due", type=_time, required=True, help="when the next calibration is due (RFC 3339)")
    q.add_argument("--certificate", required=True, help="the certificate's reference")
    q.add_argument("--as-found", required=True)
    q.add_argument("--as-left", required=True)
    q.add_argument("--performed-by", required=True, help="the laboratory or technician")
    q.add_argument("--result", choices=("passed", "failed"), required=True)
    q.add_argument("--supersedes", type=int, help="the id of the record this one corrects")
    q.add_argument("--user", required=True, help="the signer's user id")
    q.add_argument("--meaning", required=True, help="the signature's meaning (identity.meanings_calibrate)")
    q.add_argument("--reason", required=True, help="why (mandatory, recorded in the audit trail)")
    _common(q, acting=False, func=_cmd)
