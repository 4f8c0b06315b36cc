"""`coldwatch users` and `coldwatch tokens` end to end: a real database, the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coldwatch.broker import RunningBroker
from tests.conftest import Backend, running_daemon, silent_incubator_config
from tests.identity_helpers import FAST_IDENTITY

ADA_FIRST = "first-admin-pw1"
ADA = "her-own-password2"


def cli(config: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``coldwatch ARGS --config CONFIG --password-stdin`` with ``stdin`` as the passwords."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", *args, "--config", str(config), "--password-stdin"],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def plain(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``coldwatch ARGS --config CONFIG`` (a command that asks for no password)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


async def test_users_and_tokens_from_the_command_line(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """The first administrator bootstraps, then manages accounts and tokens; every change audited, sealed."""
    config = silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api={},
        database=backend.location,
        identity=FAST_IDENTITY,
    )
    async with running_daemon(config):
        pass  # the collector creates the database and its audit key
    path = tmp_path / "c.yaml"
    first = cli(
        path,
        ADA_FIRST,
        "users",
        "add",
        "ada",
        "--full-name",
        "Ada Admin",
        "--role",
        "admin",
        "--reason",
        "first administrator",
    )
    assert first.returncode == 0, first.stderr
    second = cli(
        path,
        "eve-password-01",
        "users",
        "add",
        "eve",
        "--full-name",
        "Eve",
        "--role",
        "admin",
        "--reason",
        "another bootstrap",
    )
    assert second.returncode == 1
    assert "bootstrap" in second.stderr
    forced = cli(
        path,
        f"{ADA_FIRST}\nop-initial-pw1",
        "users",
        "add",
        "olga",
        "--full-name",
        "Olga Operator",
        "--role",
        "operator",
        "--as",
        "ada",
        "--reason",
        "new operator",
    )
    assert forced.returncode == 1
    assert "password first" in forced.stderr or "may not manage" in forced.stderr
    changed = cli(path, f"{ADA_FIRST}\n{ADA}", "users", "change-password", "ada")
    assert changed.returncode == 0, changed.stderr
    steps = [
        (
            f"{ADA}\nop-initial-pw1",
            "users",
            "add",
            "olga",
            "--full-name",
            "Olga Operator",
            "--role",
            "operator",
        ),
        (ADA, "users", "set-role", "olga", "qa"),
        (ADA, "users", "disable", "olga"),
        (ADA, "users", "enable", "olga"),
        (f"{ADA}\nop-reset-pw-22", "users", "reset-password", "olga"),
    ]
    for stdin, *args in steps:
        done = cli(path, stdin, *args, "--as", "ada", "--reason", f"step {args[1]}")
        assert done.returncode == 0, (args, done.stderr)
    own = cli(path, ADA, "users", "set-role", "ada", "viewer", "--as", "ada", "--reason", "mine")
    assert own.returncode == 1
    assert "their own" in own.stderr
    wrong = cli(path, "not-adas-password", "users", "disable", "olga", "--as", "ada", "--reason", "x")
    assert wrong.returncode == 1
    listed = cli(path, "", "users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    accounts = {a["name"]: a for a in map(json.loads, listed.stdout.splitlines())}
    assert (accounts["olga"]["role"], accounts["olga"]["disabled"]) == ("qa", False)
    assert accounts["olga"]["must_change_password"] is True
    assert "password" not in json.dumps(accounts).replace("must_change_password", "")
    created = cli(
        path, ADA, "tokens", "create", "grafana", "--role", "viewer", "--as", "ada", "--reason", "dashboards"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("cwt_")
    revoked = cli(path, ADA, "tokens", "revoke", "grafana", "--as", "ada", "--reason", "retired")
    assert revoked.returncode == 0, revoked.stderr
    tokens = cli(path, "", "tokens", "list")
    assert "grafana" in tokens.stdout
    assert "revoked" in tokens.stdout
    assert token not in tokens.stdout
    verified = plain(path, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = plain(path, "audit", "export", "--format", "json")
    entries = json.loads(exported.stdout)["entries"]
    made = [
        (e["actor"], e["action"], e["object_id"], e["reason"])
        for e in entries
        if e["action"].startswith(("user.", "token."))
    ]
    assert ("ada", "user.role_changed", "olga", "step set-role") in made
    assert ("ada", "user.disabled", "olga", "step disable") in made
    assert ("ada", "user.enabled", "olga", "step enable") in made
    assert ("ada", "user.password_reset", "olga", "step reset-password") in made
    assert ("ada", "token.created", "grafana", "dashboards") in made
    assert ("ada", "token.revoked", "grafana", "retired") in made
    assert any(a == "ada" and act == "user.sign_in_failed" for a, act, _, _ in made)
    assert any(act == "user.created" and a.startswith("bootstrap") for a, act, _, _ in made)
    for secret in (ADA_FIRST, ADA, "op-initial-pw1", "op-reset-pw-22", token):
        assert secret not in exported.stdout
