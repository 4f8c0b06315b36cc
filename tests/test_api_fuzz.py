"""Property-based fuzzing of the running daemon's HTTP API from its own OpenAPI description."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Err

from coldwatch.broker import RunningBroker
from tests.conftest import Backend, raise_comm_loss, running_daemon
from tests.test_api_robust import TOKENS, auth, config_for

# Examples per operation, role and generation mode: bounded so that the run stays short on
# a busy machine. The time budget is per request sent (the operations grow with the API:
# 60 s was the budget of about 2,400 requests when the API had its first operations).
EXAMPLES = 20
TIME_BUDGET_PER_REQUEST_S = 0.025


def _fuzz(base_url: str, raw_schema: dict[str, Any], headers: dict[str, str]) -> tuple[list[str], int]:
    """Send generated requests for every operation; return the server errors found and the requests sent."""
    schema = schemathesis.openapi.from_dict(raw_schema)
    failures: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the OpenAPI description is invalid: {result.err()}")
            continue
        operation = result.ok()
        strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
        if operation.path_parameters or operation.query or operation.body:
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
        if "{alarm_id}" in operation.path:
            # Most generated ids do not exist: also act on the alarm that does.
            strategies.append(operation.as_strategy(path_parameters={"alarm_id": 1}))
        for strategy in strategies:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Case[Any]) -> None:
                nonlocal sent
                response = case.call(base_url=base_url, headers=headers, timeout=10)
                sent += 1
                if response.status_code >= 500:
                    failures.append(f"{response.status_code}: {case.as_curl_command()}")

            run()
    return failures, sent


async def test_no_server_error_for_any_role(
    broker: RunningBroker, prefix: str, tmp_path: Path, backend: Backend
) -> None:
    """Generated valid and invalid requests to every operation, as each role or with no token, get no 5xx."""
    config = config_for(tmp_path, broker, prefix, backend)
    async with running_daemon(config) as running:
        await raise_comm_loss(broker, config, running)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as client:
            raw = (await client.get("/openapi.json")).json()
            started = time.monotonic()
            found: dict[str, list[str]] = {}
            total = 0
            for role in (None, *TOKENS):
                headers = auth(role) if role else {}
                failures, sent = await asyncio.to_thread(_fuzz, running.base_url, raw, headers)
                found[role or "no token"] = failures
                total += sent
            elapsed = time.monotonic() - started
            assert not any(found.values()), found
            assert total > 100, total
            assert elapsed < TIME_BUDGET_PER_REQUEST_S * total, f"{total} requests took {elapsed:.1f} s"
            # The server is still whole: the list reads, the probe is ready, nothing failed to store.
            listed = await client.get("/api/v1/alarms", headers=auth("viewer"))
            assert listed.status_code == 200, listed.text
            assert (await client.get("/readyz")).status_code == 200
        assert running.sample("coldwatch_storage_errors_total") == 0
