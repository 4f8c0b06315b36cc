"""The ``coldwatch`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from coldwatch import __version__
from coldwatch.config import Config, load_config, redact
from coldwatch.errors import ColdwatchError, ConfigError
from coldwatch.payload import parse_timestamp_us

__all__ = ["main"]

log = logging.getLogger("coldwatch")
SWITCH_INTERVAL_S = 0.0005  # see _cmd_run


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # one line per HTTP request (the console's commands, webhooks) is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # WeasyPrint logs each step of every PDF it lays out at INFO.
        logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)


def _parse_time(text: str) -> int:
    try:
        return parse_timestamp_us(float(text) if text.replace(".", "", 1).isdigit() else text)
    except Exception as exc:
        msg = f"{text!r} is not an RFC 3339 time with offset nor epoch seconds"
        raise argparse.ArgumentTypeError(msg) from exc


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 2
    kinds = Counter(d.kind.value for d in config.devices)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no devices"
    print(f"{args.config}: OK ({summary}; sha256 {config.sha256[:12]})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from coldwatch.cluster import ClusterDaemon  # noqa: PLC0415 - keep CLI start fast
    from coldwatch.daemon import Daemon, run_until_signalled  # noqa: PLC0415

    config = load_config(args.config)

    def ready(daemon: Daemon | ClusterDaemon) -> None:
        role = f", cluster member {daemon.name}" if isinstance(daemon, ClusterDaemon) else ""
        log.info(
            "coldwatch %s running%s: %d devices, metrics on http://%s:%s/metrics, data in %s",
            __version__,
            role,
            len(config.devices),
            config.http.host,
            daemon.http_port,
            redact(config.storage.location),
        )

    # The database thread gives the GIL back for every statement it runs and then waits
    # for the event loop's thread to let go of it: up to the 5 ms default switch interval
    # each time while messages are being judged. 0.5 ms: 12,800-14,300 -> 15,600-17,500
    # msg/s draining a 200,000-message backlog in 500-message batches (benchmarks/ingest.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if config.cluster.enabled:
        asyncio.run(run_until_signalled(ClusterDaemon(config, on_ready=ready)))
    else:
        asyncio.run(run_until_signalled(Daemon(config, on_ready=ready)))
    return 0


async def _export(config: Config, args: argparse.Namespace) -> int:
    from coldwatch.export import write_csv  # noqa: PLC0415
    from coldwatch.storage import open_existing  # noqa: PLC0415

    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        if args.output == "-":
            rows = await write_csv(
                storage, sys.stdout, device_id=args.device, since_us=args.since, until_us=args.until
            )
        else:
            with Path(args.output).open("w", encoding="utf-8", newline="") as out:
                rows = await write_csv(
                    storage, out, device_id=args.device, since_us=args.since, until_us=args.until
                )
    finally:
        await storage.close()
    print(f"{rows} row(s) exported", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    return asyncio.run(_export(load_config(args.config), args))


async def _quarantine(config: Config, limit: int) -> int:
    from coldwatch.export import format_ts  # noqa: PLC0415
    from coldwatch.storage import open_existing  # noqa: PLC0415

    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        totals = await storage.rejection_totals()
        entries = await storage.quarantine(limit)
    finally:
        await storage.close()
    print(json.dumps({"totals_by_reason": totals}))
    for entry in entries:
        print(
            json.dumps(
                {
                    "received_at": format_ts(entry.received_us),
                    "reason": entry.reason,
                    "detail": entry.detail,
                    "topic": entry.topic,
                    "device": entry.device_id,
                    "size": entry.payload_size,
                    "sha256": entry.payload_sha256,
                    "truncated": entry.truncated,  # only a prefix of the payload was kept
                    "payload": entry.payload.decode("utf-8", errors="backslashreplace")[:2000],
                }
            )
        )
    return 0


def _cmd_quarantine(args: argparse.Namespace) -> int:
    return asyncio.run(_quarantine(load_config(args.config), args.limit))


async def _alarms_list(config: Config, args: argparse.Namespace) -> int:
    from coldwatch.export import format_ts  # noqa: PLC0415
    from coldwatch.review import Reviews  # noqa: PLC0415
    from coldwatch.signatures import manifestation_json  # noqa: PLC0415
    from coldwatch.storage import open_existing  # noqa: PLC0415
    from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        reviews = Reviews(identity_store(storage), config.site.timezone)
        if args.awaiting:
            alarms = await reviews.awaiting(args.awaiting)
        else:
            alarms = await storage.alarms(open_only=args.open, device_id=args.device)
        histories = {a.id: await storage.alarm_history(a.id) for a in alarms} if args.history else {}
        signatures = await reviews.signatures_of(a.id for a in alarms)
        reviewed = await reviews.reviews_of(a.id for a in alarms)
    finally:
        await storage.close()
    zone = config.site.timezone
    if args.json:
        for alarm in alarms:
            record = {
                "id": alarm.id,
                "device": alarm.key.device_id,
                "metric": alarm.key.metric,
                "rule": alarm.key.rule,
                "severity": alarm.severity.label,
                "state": alarm.state.value,
                "raised": format_ts(alarm.raised_ts_us),
                "cleared": format_ts(alarm.cleared_ts_us) if alarm.cleared_ts_us else None,
                "value": alarm.value,
                "limit": alarm.limit,
                "late": alarm.late,
                "detail": alarm.detail,
                "acknowledged_by": alarm.acknowledged_by,
                "signatures": [manifestation_json(sig, zone) for sig in signatures.get(alarm.id, [])],
                "reviewed_by": reviewed[alarm.id].reviewer if alarm.id in reviewed else None,
                "impact": reviewed[alarm.id].impact if alarm.id in reviewed else None,
                "complete": alarm.id in reviewed,
            }
            if args.history:
                record["history"] = histories[alarm.id]
            print(json.dumps(record))
        return 0
    header = f"{'id':>5}  {'device':<16} {'metric':<20} {'rule':<20} {'severity':<8} {'state':<24} raised"
    print(header)
    for alarm in alarms:
        late = " (late)" if alarm.late else ""
        cleared = f"  cleared {format_ts(alarm.cleared_ts_us)}" if alarm.cleared_ts_us else ""
        print(
            f"{alarm.id:>5}  {alarm.key.device_id:<16} {alarm.key.metric:<20} {alarm.key.rule:<20} "
            f"{alarm.severity.label:<8} {alarm.state.value:<24} "
            f"{format_ts(alarm.raised_ts_us)}{late}{cleared}"
        )
        for sig in signatures.get(alarm.id, []):
            print(f"{'':>7}{sig.action}: {manifestation_json(sig, zone)['manifestation']}")
        if alarm.id in reviewed:
            print(f"{'':>7}review: impact {reviewed[alarm.id].impact} (complete)")
    print(f"{len(alarms)} alarm(s)", file=sys.stderr)
    return 0


def _cmd_alarms(args: argparse.Namespace) -> int:
    if args.history:
        args.json = True
    return asyncio.run(_alarms_list(load_config(args.config), args))


def _cmd_alarm_action(args: argparse.Namespace) -> int:
    from coldwatch.cli_people import signed_body  # noqa: PLC0415
    from coldwatch.client import base_url, call  # noqa: PLC0415

    config = load_config(args.config)
    body: dict[str, object] = signed_body(args)
    if args.alarms_command == "shelve":
        body["until"] = args.until
    if args.alarms_command == "review":
        body.update(
            impact=args.impact,
            root_cause=args.root_cause,
            comment=args.comment,
            deviation_ref=args.deviation_ref,
        )
    # Signed with every component; a service token ($COLDWATCH_API_TOKEN) is never sent: it cannot sign.
    result = call(
        base_url(config, args.url),
        "POST",
        f"/api/v1/alarms/{args.id}/{args.alarms_command}",
        body,
        signed=True,
    )
    alarm = result["alarm"]
    print(f"alarm {alarm['id']} {result['event']} by {result['by']}: now {alarm['state']}")
    for signature in alarm.get("signatures", []):
        print(f"  {signature['manifestation']}")
    return 0


async def _audit(config: Config, args: argparse.Namespace) -> int:
    from coldwatch.audit import to_csv, to_json  # noqa: PLC0415
    from coldwatch.storage import open_existing  # noqa: PLC0415

    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        if args.audit_command == "verify":
            from coldwatch.audit_verify import verify_command  # noqa: PLC0415
            from coldwatch.review import signature_problems  # noqa: PLC0415
            from coldwatch.storage.identity_store import identity_store  # noqa: PLC0415

            evidence = await storage.audit_evidence()
            bindings = await signature_problems(identity_store(storage), evidence.entries)
            return verify_command(config, evidence, args, bindings)
        entries = [entry async for entry in storage.audit_entries()]
        stored = await storage.verify_audit()
    finally:
        await storage.close()
    text = to_json(entries) if args.format == "json" else None
    if args.output == "-":
        if text is None:
            to_csv(entries, sys.stdout)
        else:
            print(text)
    else:
        with Path(args.output).open("w", encoding="utf-8", newline="") as out:
            if text is None:
                to_csv(entries, out)
            else:
                out.write(text)
    print(f"{len(entries)} audit entries exported; {stored.describe()}", file=sys.stderr)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    return asyncio.run(_audit(load_config(args.config), args))


def _cmd_audit_keys(args: argparse.Namespace) -> int:
    from coldwatch.audit_verify import public_key_command, rotate_key_command  # noqa: PLC0415

    config = load_config(args.config)
    if args.audit_command == "public-key":
        return public_key_command(config)
    return asyncio.run(rotate_key_command(config, actor=args.actor, reason=args.reason))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulators import OutagePlan, run_simulation  # noqa: PLC0415

    if args.speed > 1 and args.duration is None:
        print(
            "error: --speed above 1 needs --duration (the simulated timeline must end by now)",
            file=sys.stderr,
        )
        return 2
    config = load_config(args.config)
    outage = None
    if args.outage:
        start_s, duration_s = (float(x) for x in args.outage.split(":"))
        outage = OutagePlan(device_ids=None, start_s=start_s, duration_s=duration_s)
    stats = asyncio.run(
        run_simulation(config, seed=args.seed, speed=args.speed, duration_s=args.duration, outage=outage)
    )
    print(json.dumps({"published": stats.published}, sort_keys=True))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from coldwatch.demo import run_demo  # noqa: PLC0415

    return asyncio.run(run_demo(config_path=args.config, data_dir=Path(args.data), broker=args.broker))


def _add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    q = audit_sub.add_parser(
        "verify",
        help="check the chain, its signatures, the anchor file and the guards; exit 1 naming what is wrong",
    )
    q.add_argument("--config", required=True)
    q.add_argument("--anchor", help="SEQ:HASH printed by an earlier verify, kept outside the database")
    q.add_argument(
        "--public-key",
        action="append",
        type=Path,
        help="a trusted public key file (repeatable; default: the configured signing key's)",
    )
    q.add_argument("--anchor-file", type=Path, help="the anchor file (default: the configured one)")
    q.set_defaults(func=_cmd_audit)
    q = audit_sub.add_parser("public-key", help="print the signing key's public key (PEM), for inspectors")
    q.add_argument("--config", required=True)
    q.set_defaults(func=_cmd_audit_keys)
    q = audit_sub.add_parser(
        "rotate-key", help="replace the signing key: the old key signs an entry naming the new one"
    )
    q.add_argument("--config", required=True)
    q.add_argument("--actor", required=True, help="who rotates the key (recorded in the audit trail)")
    q.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    q.set_defaults(func=_cmd_audit_keys)
    q = audit_sub.add_parser("export", help="the audit trail for an inspector (CSV or JSON)")
    q.add_argument("--config", required=True)
    q.add_argument("--format", choices=("csv", "json"), default="csv")
    q.add_argument("--output", "-o", default="-")
    q.set_defaults(func=_cmd_audit)


def _add_alarm_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alarms", help="alarms and their history")
    alarm_sub = p.add_subparsers(dest="alarms_command", required=True)
    q = alarm_sub.add_parser("list", help="list alarms, newest first")
    q.add_argument("--config", required=True)
    q.add_argument("--open", action="store_true", help="only alarms not yet closed")
    q.add_argument("--device")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument("--history", action="store_true", help="with every transition (implies --json)")
    q.add_argument("--awaiting", choices=("acknowledgement", "review"), help="only alarms awaiting this")
    q.set_defaults(func=_cmd_alarms)
    from coldwatch.cli_people import add_review_command, add_signing_arguments  # noqa: PLC0415

    for name, helptext in (
        ("ack", "acknowledge an alarm, signed (user id, password asked for, meaning, reason)"),
        ("shelve", "shelve an alarm until a time, signed"),
        ("unshelve", "end a shelve early, signed"),
    ):
        q = alarm_sub.add_parser(name, help=helptext)
        q.add_argument("id", type=int)
        add_signing_arguments(q)
        if name == "shelve":
            q.add_argument("--until", required=True, help="RFC 3339 time with offset")
        q.add_argument("--config", required=True)
        q.add_argument("--url", help="the daemon's HTTP address (default: from the configuration)")
        q.set_defaults(func=_cmd_alarm_action)
    add_review_command(alarm_sub, _cmd_alarm_action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="coldwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"coldwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("config")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("run", help="run the collector daemon")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("export", help="export stored readings as CSV")
    p.add_argument("--config", required=True)
    p.add_argument("--device")
    p.add_argument("--since", type=_parse_time, help="RFC 3339 time or epoch seconds (inclusive)")
    p.add_argument("--until", type=_parse_time, help="RFC 3339 time or epoch seconds (exclusive)")
    p.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("quarantine", help="show rejected messages and rejection totals")
    p.add_argument("--config", required=True)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_quarantine)

    _add_alarm_commands(sub)

    _add_audit_commands(sub)
    from coldwatch.cli_people import add_people_commands  # noqa: PLC0415

    add_people_commands(sub)
    from coldwatch.cli_reports import add_report_commands  # noqa: PLC0415

    add_report_commands(sub)
    from coldwatch.cli_batches import add_batch_commands  # noqa: PLC0415

    add_batch_commands(sub)
    from coldwatch.cli_instruments import add_instrument_commands  # noqa: PLC0415

    add_instrument_commands(sub)

    p = sub.add_parser("simulate", help="publish simulated device readings (SIMULATED data)")
    p.add_argument("--config", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--duration", type=float, default=None, help="wall seconds (default: until Ctrl-C)")
    p.add_argument("--outage", help="START:DURATION simulated seconds of network outage, then backfill")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="run a demo facility: broker, simulators and the collector")
    p.add_argument("--config", default=None, help="default: the bundled config/demo.yaml")
    p.add_argument("--data", default="coldwatch-demo-data", help="folder for the database and broker")
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="auto: the configured broker if reachable, else mosquitto if installed, else amqtt",
    )
    p.set_defaults(func=_cmd_demo)

    from coldwatch.replay.command import add_parser as add_replay  # noqa: PLC0415 - keeps start-up light

    add_replay(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coldwatch`` command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ColdwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`coldwatch export ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
