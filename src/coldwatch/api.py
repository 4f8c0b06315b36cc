"""The HTTP API: read alarms, devices and readings; acknowledge, shelve, unshelve.

JSON, with an OpenAPI description at /openapi.json (browsable at /docs). Every request
carries a bearer token; every action is attributed to the user behind it and applied by
the daemon's single writer, in order with the readings.
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict

from coldwatch.api_input import ID_MAX, ReasonText, Text, UtcTime, to_us
from coldwatch.auth import Authenticator, User, token_env_name
from coldwatch.config import Config
from coldwatch.export import format_ts
from coldwatch.pipeline import UserAction
from coldwatch.rules.lifecycle import Alarm, AlarmState, LifecycleError, Transition
from coldwatch.storage.base import DeviceState, Storage

__all__ = ["ApiContext", "build_router"]

log = logging.getLogger(__name__)


class ReasonBody(BaseModel):
    """Why: mandatory for every action (EU GMP Annex 11)."""

    model_config = ConfigDict(extra="forbid")
    reason: ReasonText


class ShelveBody(ReasonBody):
    """Shelve until a time (RFC 3339 with offset)."""

    until: UtcTime


class ApiContext:
    """What the API reads from and acts through."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        submit: Callable[[UserAction], Awaitable[Transition]],
        states: Mapping[str, DeviceState],
        authenticator: Authenticator,
        *,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.config = config
        self.storage = storage
        self.submit = submit
        self.states = states
        self.authenticator = authenticator
        self.clock_us = clock_us


def _alarm_json(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "device": alarm.key.device_id,
        "metric": alarm.key.metric,
        "rule": alarm.key.rule,
        "severity": alarm.severity.label,
        "state": alarm.state.value,
        "raised_at": format_ts(alarm.raised_ts_us),
        "raised_received_at": format_ts(alarm.raised_received_us),
        "cleared_at": format_ts(alarm.cleared_ts_us) if alarm.cleared_ts_us else None,
        "value": alarm.value,
        "limit": alarm.limit,
        "late": alarm.late,
        "detail": alarm.detail,
        "acknowledged_by": alarm.acknowledged_by,
        "shelved_until": format_ts(alarm.shelved_until_us) if alarm.shelved_until_us else None,
        "shelved_by": alarm.shelved_by,
    }


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def _stored_at(value: object) -> str:
    """A stored time as RFC 3339, whatever a damaged row holds (SQLite keeps a REAL or TEXT as given)."""
    if isinstance(value, int):
        return format_ts(value)
    return f"not a time: {value!r}"


def _check_shelve_end(ahead_us: int, longest_s: float) -> None:
    """Refuse (422) a shelve that ends now or before, or more than ``longest_s`` ahead."""
    if ahead_us <= 0:  # invalid input, like a too-long one: not a conflict with the alarm's state
        raise HTTPException(422, "a shelve must end in the future")
    if ahead_us > longest_s * 1_000_000:
        raise HTTPException(
            422,
            f"a shelve may last at most {longest_s:.0f} s ({longest_s / 86_400:.4g} days, "
            "api.shelve_max_s): choose an earlier end",
        )


AlarmId = Annotated[int, Path(ge=1, le=ID_MAX, description="an alarm id (1 to 2**63-1)")]


def build_router(ctx: ApiContext) -> APIRouter:  # noqa: C901 - one closure per endpoint
    """The /api/v1 routes."""
    router = APIRouter(prefix="/api/v1")
    for name in ctx.authenticator.without_token:
        log.warning(
            "api user %r has no token (neither token_sha256 nor %s): it cannot log in",
            name,
            token_env_name(name),
        )

    def authenticated(request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        user = ctx.authenticator.user(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return user

    def operator(user: Annotated[User, Depends(authenticated)]) -> User:
        if not user.may("operator"):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {user.role!r} may not act on alarms")
        return user

    Viewer = Annotated[User, Depends(authenticated)]  # noqa: N806 - a type alias
    Operator = Annotated[User, Depends(operator)]  # noqa: N806 - a type alias

    @router.get("/alarms")
    async def list_alarms(  # noqa: PLR0917 - one query parameter per filter
        _: Viewer,
        state: AlarmState | None = None,  # a misspelt state is a 422, not an empty list
        device: Text | None = None,
        site: Text | None = None,
        severity: Literal["alert", "action"] | None = None,
        since: UtcTime | None = None,
        until: UtcTime | None = None,
        open_only: Annotated[bool, Query(alias="open")] = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    ) -> list[dict[str, Any]]:
        """Alarms, newest first, filtered by state, device, site, severity and raise time."""
        alarms = await ctx.storage.alarms(
            open_only=open_only,
            device_id=device,
            site=site,
            severity=severity,
            state=None if state is None else state.value,
            since_us=_us(since),
            until_us=_us(until),
            limit=limit,
        )
        return [_alarm_json(a) for a in alarms]

    @router.get("/alarms/{alarm_id}")
    async def get_alarm(alarm_id: AlarmId, _: Viewer) -> dict[str, Any]:
        """One alarm with its full history."""
        found = await ctx.storage.alarms(alarm_id=alarm_id, limit=1)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id}")
        history = await ctx.storage.alarm_history(alarm_id)
        for step in history:
            for key in ("ts_us", "received_us"):
                step[key.removesuffix("_us") + "_at"] = _stored_at(step.pop(key))
        return {**_alarm_json(found[0]), "history": history}

    async def act(action: UserAction) -> dict[str, Any]:
        try:
            transition = await ctx.submit(action)
        except LifecycleError as exc:
            code = status.HTTP_404_NOT_FOUND if "no open alarm" in str(exc) else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from exc
        return {"event": transition.event, "by": transition.actor, "alarm": _alarm_json(transition.alarm)}

    @router.post("/alarms/{alarm_id}/ack")
    async def acknowledge(alarm_id: AlarmId, body: ReasonBody, user: Operator) -> dict[str, Any]:
        """Acknowledge an alarm (operator or admin; a reason is required)."""
        return await act(UserAction("acknowledge", alarm_id, user.name, body.reason))

    @router.post("/alarms/{alarm_id}/shelve")
    async def shelve(alarm_id: AlarmId, body: ShelveBody, user: Operator) -> dict[str, Any]:
        """Shelve an alarm until a time (operator or admin; reason and end time required).

        The end may lie at most ``api.shelve_max_s`` ahead (default 30 days): checked here,
        before anything is committed.
        """
        until = to_us(body.until)
        _check_shelve_end(until - ctx.clock_us(), ctx.config.api.shelve_max_s)
        return await act(UserAction("shelve", alarm_id, user.name, body.reason, until))

    @router.post("/alarms/{alarm_id}/unshelve")
    async def unshelve(alarm_id: AlarmId, body: ReasonBody, user: Operator) -> dict[str, Any]:
        """End a shelve early (operator or admin; a reason is required)."""
        return await act(UserAction("unshelve", alarm_id, user.name, body.reason))

    @router.get("/devices")
    async def devices(_: Viewer) -> list[dict[str, Any]]:
        """Registered devices with their newest reading and state."""
        out = []
        for device in ctx.config.devices:
            state = ctx.states.get(device.id, DeviceState())
            out.append(
                {
                    "id": device.id,
                    "kind": device.kind.value,
                    "site": device.site,
                    "area": device.area,
                    "grade": device.grade,
                    "online": state.online,
                    "last_seq": state.last_seq,
                    "last_reading_at": format_ts(state.last_ts_us) if state.last_ts_us else None,
                    "last_received_at": format_ts(state.last_received_us) if state.last_received_us else None,
                    "last_values": await ctx.storage.last_values(device.id),
                }
            )
        return out

    @router.get("/readings")
    async def readings(
        _: Viewer,
        device: Text,
        metric: Text,
        since: UtcTime | None = None,
        until: UtcTime | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> list[dict[str, Any]]:
        """One device metric over a time range, oldest first."""
        if device not in ctx.config.device_map():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device!r}")
        rows = await ctx.storage.metric_readings(device, metric, _us(since), _us(until), limit)
        return [
            {"ts": format_ts(ts), "value": value, "received_at": format_ts(received), "buffered": buffered}
            for ts, value, received, buffered in rows
        ]

    return router
