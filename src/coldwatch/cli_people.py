"""The command line of people's accounts, service tokens, signed alarm actions and QA reviews.

``coldwatch users`` and ``coldwatch tokens`` work on the database directly, as an
administrator named with ``--as`` whose password is asked for (never on the command
line). The first administrator is created without ``--as`` (the bootstrap), which works
only while no enabled administrator exists.

``coldwatch alarms ack|shelve|unshelve|review`` sign through the running daemon's API
with every component: ``--user``, the password (asked for), ``--meaning`` and ``--reason``.
Passwords are read with getpass from the terminal, or one per line from standard input
with ``--password-stdin`` (for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from coldwatch.audit_keys import current_signer, find_signer
from coldwatch.config import Config, load_config
from coldwatch.errors import ColdwatchError
from coldwatch.identity import BOOTSTRAP, Identity
from coldwatch.identity_model import IdentityError, Principal
from coldwatch.roles import ROLE_NAMES
from coldwatch.storage import open_existing
from coldwatch.storage.identity_store import WriteRefusedError, identity_store

__all__ = ["add_people_commands", "add_review_command", "signed_body"]


class _Secrets:
    """Where passwords come from: the terminal (getpass) or standard input, one per line."""

    def __init__(self, from_stdin: bool) -> None:
        self._lines: Iterator[str] | None = iter(sys.stdin.read().splitlines()) if from_stdin else None

    def ask(self, prompt: str, *, confirm: bool = False) -> str:
        if self._lines is not None:
            try:
                return next(self._lines)
            except StopIteration:
                raise ColdwatchError(f"standard input ended before: {prompt}") from None
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("again: ") != first:
            raise ColdwatchError("the two entries differ")
        return first


def _actor_label(args: argparse.Namespace) -> str:
    try:
        login = os.getlogin()
    except OSError:
        login = getpass.getuser()
    return f"{BOOTSTRAP} ({login} on the host)" if args.as_admin is None else args.as_admin


async def _acting(identity: Identity, args: argparse.Namespace, secrets: _Secrets) -> Principal | str:
    """The administrator acting (their password checked), or the bootstrap actor."""
    if args.as_admin is None:
        return _actor_label(args)
    password = secrets.ask(f"password of {args.as_admin}: ")
    account = await identity.check_password(args.as_admin, password, "command line", purpose="command line")
    return Principal(
        account.name,
        account.full_name,
        account.role,
        "person",
        must_change_password=account.must_change_password,
    )


async def _people(config: Config, args: argparse.Namespace) -> int:
    secrets = _Secrets(args.password_stdin)
    current_signer.set(find_signer(config))  # entries appended here are sealed like the collector's
    storage = open_existing(config.storage.location)
    await storage.open()
    try:
        identity = Identity(identity_store(storage), config.identity)
        return await _run(identity, args, secrets)
    except (IdentityError, WriteRefusedError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    finally:
        await storage.close()


async def _run(identity: Identity, args: argparse.Namespace, secrets: _Secrets) -> int:  # noqa: C901, PLR0912 - one branch per subcommand
    command = args.people_command
    if command == "list":
        accounts = await identity.accounts()
        if args.json:
            for a in accounts:
                print(
                    json.dumps(
                        {
                            "name": a.name,
                            "full_name": a.full_name,
                            "role": a.role,
                            "disabled": a.disabled,
                            "must_change_password": a.must_change_password,
                        }
                    )
                )
            return 0
        print(f"{'name':<20} {'role':<9} {'state':<9} full name")
        for a in accounts:
            state = "disabled" if a.disabled else ("locked" if a.locked_until_us else "enabled")
            print(f"{a.name:<20} {a.role:<9} {state:<9} {a.full_name}")
        return 0
    if command == "tokens-list":
        for t in await identity.tokens():
            print(
                f"{t.name:<24} {t.role:<9} {'revoked' if t.revoked_us else 'active'}  "
                f"created by {t.created_by}"
            )
        return 0
    if command == "change-password":
        current = secrets.ask(f"current password of {args.name}: ")
        new = secrets.ask(f"new password of {args.name}: ", confirm=True)
        await identity.change_password(args.name, current, new, "command line")
        print(f"password of {args.name} changed")
        return 0
    actor = await _acting(identity, args, secrets)
    if command == "add":
        password = secrets.ask(f"password for {args.name} (they change it at first sign-in): ", confirm=True)
        await identity.add_user(actor, args.name, args.full_name, args.role, password, args.reason)
        print(f"added {args.name} ({args.role}); the password must be changed at first sign-in")
    elif command == "disable":
        await identity.disable(actor, args.name, args.reason)
        print(f"disabled {args.name}")
    elif command == "enable":
        await identity.enable(actor, args.name, args.reason)
        print(f"enabled {args.name}")
    elif command == "reset-password":
        password = secrets.ask(f"new password for {args.name}: ", confirm=True)
        await identity.reset_password(actor, args.name, password, args.reason)
        print(f"password of {args.name} reset; it must be changed at the next sign-in")
    elif command == "set-role":
        await identity.set_role(actor, args.name, args.role, args.reason)
        print(f"{args.name} is now {args.role}")
    elif command == "tokens-create":
        token = await identity.create_token(actor, args.name, args.role, args.reason)
        print(f"service token {args.name} ({args.role}, read-only); shown once, keep it secret:")
        print(token)
    elif command == "tokens-revoke":
        await identity.revoke_token(actor, args.name, args.reason)
        print(f"revoked service token {args.name}")
    return 0


def _cmd_people(args: argparse.Namespace) -> int:
    return asyncio.run(_people(load_config(args.config), args))


def _common(q: argparse.ArgumentParser, *, acting: bool) -> None:
    q.add_argument("--config", required=True)
    if acting:
        q.add_argument(
            "--as",
            dest="as_admin",
            help="the administrator acting (password asked for); omit only to create the first administrator",
        )
        q.add_argument("--reason", required=True, help="why (mandatory, recorded in the audit trail)")
    q.add_argument(
        "--password-stdin", action="store_true", help="read passwords from standard input, one a line"
    )
    q.set_defaults(func=_cmd_people)


def add_people_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``coldwatch users ...`` and ``coldwatch tokens ...``."""
    p = sub.add_parser("users", help="people's accounts (administrators)")
    users = p.add_subparsers(dest="people_command", required=True)
    q = users.add_parser("list", help="every account, disabled ones too")
    q.add_argument("--json", action="store_true")
    _common(q, acting=False)
    q = users.add_parser("add", help="add an account (its password must be changed at first sign-in)")
    q.add_argument("name")
    q.add_argument("--full-name", required=True, help="the printed name shown on every signature")
    q.add_argument("--role", required=True, choices=ROLE_NAMES)
    _common(q, acting=True)
    for name, text in (
        ("disable", "disable an account (kept; never deleted)"),
        ("enable", "enable it again"),
        ("reset-password", "set a password to be changed at the next sign-in"),
    ):
        q = users.add_parser(name, help=text)
        q.add_argument("name")
        _common(q, acting=True)
    q = users.add_parser("change-password", help="change one's own password (the current one is asked for)")
    q.add_argument("name")
    _common(q, acting=False)
    q = users.add_parser("set-role", help="give an account another role")
    q.add_argument("name")
    q.add_argument("role", choices=ROLE_NAMES)
    _common(q, acting=True)
    p = sub.add_parser("tokens", help="service tokens: named, scoped to a role, read-only (administrators)")
    tokens = p.add_subparsers(dest="tokens_command", required=True)
    q = tokens.add_parser("list", help="every service token (never its value)")
    _common(q, acting=False)
    q.set_defaults(people_command="tokens-list")
    q = tokens.add_parser("create", help="create a token; its value is printed once")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=ROLE_NAMES)
    _common(q, acting=True)
    q.set_defaults(people_command="tokens-create")
    q = tokens.add_parser("revoke", help="revoke a token")
    q.add_argument("name")
    _common(q, acting=True)
    q.set_defaults(people_command="tokens-revoke")


def signed_body(args: argparse.Namespace) -> dict[str, Any]:
    """A signed action's components from the command line; the password is asked for."""
    user = args.user or os.environ.get("COLDWATCH_USER")
    if not user:
        raise ColdwatchError("give --user (or set COLDWATCH_USER): a signature names its signer")
    password = _Secrets(args.password_stdin).ask(f"password of {user} (signing): ")
    return {"user": user, "password": password, "meaning": args.meaning, "reason": args.reason}


def add_signing_arguments(q: argparse.ArgumentParser) -> None:
    """The signature's components on a signed command (the password is asked for, never given)."""
    q.add_argument("--user", help="the signer's user id (default: $COLDWATCH_USER)")
    q.add_argument("--meaning", required=True, help="the signature's meaning (one of identity.meanings_*)")
    q.add_argument("--reason", required=True, help="why (mandatory, recorded in the audit trail)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def add_review_command(
    alarm_sub: argparse._SubParsersAction[argparse.ArgumentParser], func: Callable[[argparse.Namespace], int]
) -> None:
    """``coldwatch alarms review ID ...``."""
    q = alarm_sub.add_parser("review", help="record and sign the QA review of an excursion (qa role)")
    q.add_argument("id", type=int)
    q.add_argument(
        "--impact", required=True, choices=("no_impact", "under_investigation", "deviation_opened")
    )
    q.add_argument("--deviation-ref", help="the deviation's reference (required with deviation_opened)")
    q.add_argument("--root-cause", default="")
    q.add_argument("--comment", default="")
    add_signing_arguments(q)
    q.add_argument("--config", required=True)
    q.add_argument("--url", help="the daemon's HTTP address (default: from the configuration)")
    q.set_defaults(func=func)
