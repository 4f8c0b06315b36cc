"""The HTTP API: read alarms, devices and readings; acknowledge, shelve, unshelve and review, signed.

JSON, with an OpenAPI description at /openapi.json (browsable at /docs). A read carries a
bearer service token or a session cookie. A signed action (acknowledge, shelve,
unshelve, review) carries the signature's components in its body: user id, password,
meaning and reason (21 CFR 11.200(a): outside a continuous session, every component);
a service token never signs. Alarm actions are applied by the daemon's single writer,
in order with the readings; every alarm answer shows its signatures' manifestations.
"""

# No "from __future__ import annotations": FastAPI must see the local dependency aliases.

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from coldwatch.api_input import ID_MAX, ReasonText, Text, UserId, UtcTime, to_us
from coldwatch.api_people import people_router
from coldwatch.auth import Authenticator, token_env_name
from coldwatch.config import Config
from coldwatch.export import format_ts
from coldwatch.identity import Identity
from coldwatch.identity_model import Principal, SignerIdentity
from coldwatch.pipeline import UserAction
from coldwatch.review import Review, Reviews
from coldwatch.roles import Permission
from coldwatch.rules.lifecycle import Alarm, AlarmState, LifecycleError, Transition
from coldwatch.signatures import SignatureDraft, StoredSignature, manifestation_json
from coldwatch.storage.base import DeviceState, Storage
from coldwatch.storage.identity_store import identity_store
from coldwatch.web_auth import WebAuth, client_address, refusals

__all__ = ["ApiContext", "build_router"]

log = logging.getLogger(__name__)


class SignedBody(BaseModel):
    """An electronic signature's components: who, their password, the meaning, and why (Annex 11)."""

    model_config = ConfigDict(extra="forbid")
    user: UserId
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    meaning: Text
    reason: ReasonText


class ShelveBody(SignedBody):
    """Shelve until a time (RFC 3339 with offset), signed."""

    until: UtcTime


class ReviewBody(SignedBody):
    """A QA assessment of an excursion, signed."""

    impact: Annotated[str, Field(pattern="^(no_impact|under_investigation|deviation_opened)$")]
    root_cause: Annotated[str, Field(max_length=2000)] = ""
    comment: Annotated[str, Field(max_length=10_000)] = ""
    deviation_ref: Annotated[str | None, Field(max_length=200)] = None


SignedAction = Literal["acknowledge", "shelve", "unshelve", "review"]
SIGNING_PERMISSION: dict[str, Permission] = {
    "acknowledge": Permission.ACKNOWLEDGE,
    "shelve": Permission.SHELVE,
    "unshelve": Permission.UNSHELVE,
    "review": Permission.REVIEW,
}


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
        store = identity_store(storage)
        self.identity = Identity(store, config.identity, config_tokens=authenticator, clock_us=clock_us)
        self.reviews = Reviews(store, config.site.timezone)
        self.auth = WebAuth(self.identity)

    async def signature(
        self,
        action: SignedAction,
        *,
        user: str | None,
        password: str,
        meaning: str,
        reason: str,
        client: str,
        session: Principal | None = None,
    ) -> SignatureDraft:
        """Verify a signature's components for ``action`` and return it, ready to bind.

        The console passes the person's ``session`` (later signings in it may omit
        ``user``); the JSON API and the command line never do. Raises the identity
        layer's errors (coldwatch.identity_model), each with its HTTP status.
        """
        who = await self.identity.verify_signer(
            action=action,
            permission=SIGNING_PERMISSION[action],
            meaning=meaning,
            user=user,
            password=password,
            client=client,
            session=session,
        )
        return SignatureDraft(who.name, who.full_name, meaning, reason)

    async def alarms_json(self, alarms: list[Alarm]) -> list[dict[str, Any]]:
        """Alarms with their signatures' manifestations and their review (the signed record as shown)."""
        ids = [a.id for a in alarms]
        signatures = await self.reviews.signatures_of(ids)
        reviews = await self.reviews.reviews_of(ids)
        zone = self.config.site.timezone
        return [
            {
                **_alarm_json(a),
                "signatures": [manifestation_json(s, zone) for s in signatures.get(a.id, [])],
                "review": _review_json(reviews.get(a.id), signatures.get(a.id, []), zone),
                "complete": a.id in reviews,
            }
            for a in alarms
        ]


def _review_json(
    review: Review | None, signatures: list[StoredSignature], zone: str
) -> dict[str, Any] | None:
    if review is None:
        return None
    signed = next((s for s in signatures if s.object_type == "alarm_review"), None)
    return {
        "impact": review.impact,
        "deviation_ref": review.deviation_ref,
        "root_cause": review.root_cause,
        "comment": review.comment,
        "reviewer": review.reviewer,
        "reviewed_at": format_ts(review.reviewed_us),
        "signature": manifestation_json(signed, zone) if signed is not None else None,
    }


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


def build_router(ctx: ApiContext) -> APIRouter:  # noqa: C901, PLR0915 - one closure per endpoint
    """The /api/v1 routes."""
    router = APIRouter(prefix="/api/v1")
    for name in ctx.authenticator.without_token:
        log.warning(
            "api user %r has no token (neither token_sha256 nor %s): it cannot log in",
            name,
            token_env_name(name),
        )

    auth = ctx.auth
    router.include_router(people_router(ctx.identity, auth))
    from coldwatch.api_batches import batches_router  # noqa: PLC0415 - it imports this module's ApiContext

    router.include_router(batches_router(ctx))
    Viewer = Annotated[Principal, Depends(auth.require(Permission.READ))]  # noqa: N806 - a type alias
    # Signed requests: a bad credential 401 and a service token 403 before the body is looked at.
    Signing = [Depends(auth.signing_principal), Depends(auth.csrf)]  # noqa: N806 - dependencies

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
        awaiting: Annotated[str | None, Query(pattern="^(acknowledgement|review)$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    ) -> list[dict[str, Any]]:
        """Alarms, newest first, filtered by state, device, site, severity and raise time.

        ``awaiting=acknowledgement``: unacknowledged alarms; ``awaiting=review``: acknowledged
        or closed alarms without their QA review (the other filters do not apply then).
        """
        if awaiting is not None:
            return await ctx.alarms_json(await ctx.reviews.awaiting(awaiting, limit))  # type: ignore[arg-type]
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
        return await ctx.alarms_json(alarms)

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
        return {**(await ctx.alarms_json(found))[0], "history": history}

    async def signer(request: Request, action: SignedAction, body: SignedBody) -> SignatureDraft:
        """The verified signer of a signed request (all components: the JSON API is no continuous session)."""
        principal = await auth.signing_principal(request)
        if principal is not None and principal.name != body.user:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a signature in a session is the session's user's")
        with refusals():
            return await ctx.signature(
                action,
                user=body.user,
                password=body.password,
                meaning=body.meaning,
                reason=body.reason,
                client=client_address(request),
            )

    async def act(action: UserAction) -> dict[str, Any]:
        try:
            transition = await ctx.submit(action)
        except LifecycleError as exc:
            code = status.HTTP_404_NOT_FOUND if "no open alarm" in str(exc) else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from exc
        shown = (await ctx.alarms_json([transition.alarm]))[0]
        return {"event": transition.event, "by": transition.actor, "alarm": shown}

    @router.post("/alarms/{alarm_id}/ack", dependencies=Signing)
    async def acknowledge(alarm_id: AlarmId, body: SignedBody, request: Request) -> dict[str, Any]:
        """Acknowledge an alarm, signed by an operator (user, password, meaning, reason)."""
        signed = await signer(request, "acknowledge", body)
        return await act(UserAction("acknowledge", alarm_id, signed.signer, body.reason, signature=signed))

    @router.post("/alarms/{alarm_id}/shelve", dependencies=Signing)
    async def shelve(alarm_id: AlarmId, body: ShelveBody, request: Request) -> dict[str, Any]:
        """Shelve an alarm until a time, signed by an operator (and the end time).

        The end may lie at most ``api.shelve_max_s`` ahead (default 30 days): checked here,
        before anything is committed (and before the password is checked).
        """
        until = to_us(body.until)
        _check_shelve_end(until - ctx.clock_us(), ctx.config.api.shelve_max_s)
        signed = await signer(request, "shelve", body)
        return await act(UserAction("shelve", alarm_id, signed.signer, body.reason, until, signature=signed))

    @router.post("/alarms/{alarm_id}/unshelve", dependencies=Signing)
    async def unshelve(alarm_id: AlarmId, body: SignedBody, request: Request) -> dict[str, Any]:
        """End a shelve early, signed by an operator."""
        signed = await signer(request, "unshelve", body)
        return await act(UserAction("unshelve", alarm_id, signed.signer, body.reason, signature=signed))

    @router.post("/alarms/{alarm_id}/review", dependencies=Signing)
    async def review(alarm_id: AlarmId, body: ReviewBody, request: Request) -> dict[str, Any]:
        """Record the QA review of an acknowledged or closed alarm, signed by a qa user (four eyes)."""
        signed = await signer(request, "review", body)
        with refusals():
            await ctx.reviews.record(
                alarm_id,
                SignerIdentity(signed.signer, signed.full_name, "qa"),
                impact=body.impact,
                root_cause=body.root_cause,
                comment=body.comment,
                deviation_ref=body.deviation_ref,
                meaning=body.meaning,
                reason=body.reason,
                now_us=ctx.clock_us(),
            )
        found = await ctx.storage.alarms(alarm_id=alarm_id, limit=1)
        return {"event": "reviewed", "by": signed.signer, "alarm": (await ctx.alarms_json(found))[0]}

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
