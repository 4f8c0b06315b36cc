"""The console's alarm commands against a running daemon: what an operator reads when one is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from coldwatch.broker import RunningBroker
from tests.conftest import Backend, raise_comm_loss, running_daemon
from tests.identity_helpers import OPERATOR_PW
from tests.test_api_robust import config_for, with_people

SIGNING = ("--user", "olga", "--meaning", "acknowledged, investigating", "--password-stdin")


def console(config: Path, *args: str | bytes) -> subprocess.CompletedProcess[str]:
    """Run ``coldwatch alarms ...`` signing as the operator olga (her password on standard
    input); ``args`` may hold raw (non-UTF-8) bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "coldwatch", "alarms", *args, *SIGNING, "--config", str(config)],
        input=OPERATOR_PW + "\n",
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        check=False,
        timeout=60,
    )


async def test_refusals_read_as_one_plain_line(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """A refused id or a non-UTF-8 reason gives exit 1 and one plain error: no traceback, no HTTP log."""
    backend = Backend("sqlite", str(tmp_path / "data" / "coldwatch.db"))
    config = config_for(tmp_path, broker, prefix, backend)
    path = tmp_path / "c.yaml"
    async with running_daemon(config) as running:
        await with_people(backend, config)
        await raise_comm_loss(broker, config, running)
        url = ("--url", running.base_url)
        # In a thread: the daemon answers on this test's event loop.
        too_big = await asyncio.to_thread(console, path, "ack", "9223372036854775808", "--reason", "x", *url)
        bad_text = await asyncio.to_thread(
            console, path, "ack", "1", "--reason", b"checked \xed\xa0\x80", *url
        )
        done = await asyncio.to_thread(console, path, "ack", "1", "--reason", "checked", *url)
    assert too_big.returncode == 1, too_big.stderr
    assert too_big.stderr.strip() == (
        "error: HTTP 422: alarm_id: Input should be less than or equal to 9223372036854775807"
    )
    assert bad_text.returncode == 1, bad_text.stderr
    assert "Traceback" not in bad_text.stderr
    assert bad_text.stderr.startswith("error: the request holds text that is not valid UTF-8"), (
        bad_text.stderr
    )
    assert done.returncode == 0, done.stderr
    first, manifestation = done.stdout.strip().splitlines()
    assert first == "alarm 1 acknowledged by olga: now active_acknowledged"
    assert manifestation.strip().startswith("signed by Olga Operator (olga) on "), manifestation
    assert manifestation.endswith("meaning: acknowledged, investigating"), manifestation
    assert "HTTP Request" not in done.stderr, done.stderr
