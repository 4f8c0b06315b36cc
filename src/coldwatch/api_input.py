"""What the HTTP API accepts and how it answers: bounded ids, representable times, safe text.

Every input that reaches the storage or the alarm book is checked here first, so that a
request the daemon cannot honour is refused with 422 before anything is committed, and
every answer (validation errors included, which echo the input) can always be encoded.
"""

# No "from __future__ import annotations": FastAPI and pydantic read these aliases at run time.

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BODY_MAX_BYTES",
    "ID_MAX",
    "BodyLimit",
    "EncodableJSONResponse",
    "Text",
    "UserId",
    "UtcTime",
    "install_error_handlers",
    "to_us",
]

ID_MAX = 2**63 - 1  # ids are signed 64-bit integers in both databases
# A reason of 2,000 characters, each written as a 12-byte surrogate-pair escape, and a time
# fit in 24 KiB; a body is read whole and parsed in the collector's event loop.
BODY_MAX_BYTES = 64 * 1024


def _encodable(text: str) -> str:
    """Refuse what the databases cannot store: lone surrogates (not UTF-8) and NUL characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    return text


def _representable(moment: datetime) -> datetime:
    """A time with a UTC offset whose UTC form is a real date (year 1 to 9999)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("times need a UTC offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("time is outside the representable range (years 1 to 9999 in UTC)") from exc


Text = Annotated[str, Field(max_length=200), AfterValidator(_encodable)]
"""A short free-text query parameter (device, metric, state filters)."""

UtcTime = Annotated[datetime, AfterValidator(_representable)]
"""An RFC 3339 time with an offset, converted to UTC; unrepresentable times are refused."""

UserId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S+$"), AfterValidator(_encodable)]
"""A user id as typed at sign-in or signing: one word, storable."""

ReasonText = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S"), AfterValidator(_encodable)]
"""Why a user acts: mandatory, not blank, storable."""


def to_us(moment: datetime) -> int:
    """Epoch microseconds of an aware UTC time (exact; no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _finite(content: Any) -> Any:
    """``content`` with every NaN or infinity written as a string (JSON has no such numbers)."""
    if isinstance(content, float) and not math.isfinite(content):
        return str(content)
    if isinstance(content, dict):
        return {key: _finite(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [_finite(value) for value in content]
    return content


class EncodableJSONResponse(JSONResponse):
    """JSON that always encodes: a lone surrogate is written as its JSON escape, not a 500.

    A NaN or an infinity (Python's JSON reader accepts ``NaN`` and ``1e999`` in a request,
    and a validation error echoes them) is written as a string: JSON has no such numbers.
    """

    def render(self, content: Any) -> bytes:
        """Compact UTF-8 JSON; an unencodable character is written as its JSON escape."""
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:  # a non-finite number: rare, so only then is the content walked
            text = json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


SECRET_FIELDS = frozenset({"password", "current", "new"})  # bodies' password fields, never echoed


def _redacted(value: Any) -> Any:
    """``value`` with every password field's value replaced (a validation error echoes its input)."""
    if isinstance(value, dict):
        return {k: "(not shown)" if k in SECRET_FIELDS else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = []
    for error in exc.errors():
        shown = {**error, "input": _redacted(error.get("input"))}
        if error.get("loc", ())[-1:] and error["loc"][-1] in SECRET_FIELDS:
            shown["input"] = "(not shown)"
        found.append(shown)
    errors = jsonable_encoder(found, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
    return EncodableJSONResponse({"detail": errors}, status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return EncodableJSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413, before it is held or parsed.

    The API shares the collector's event loop: a body of 100 MB, even without a token,
    held it for half a second while it was read and parsed (and an authenticated one
    came back whole in the 422 that echoed it). A declared length is refused at once; a
    chunked body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = BODY_MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # raised inside the app: answered by its error handler
                raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"a request body may hold at most {self.max_bytes} bytes"

    def _too_large(self) -> JSONResponse:
        return EncodableJSONResponse({"detail": self._detail()}, status_code=413)


def install_error_handlers(app: FastAPI) -> None:
    """Error answers that encode whatever the request held."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
