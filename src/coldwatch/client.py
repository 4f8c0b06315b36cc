"""A small client of the daemon's HTTP API, for operators at the console."""

from __future__ import annotations

import os
from typing import Any

import httpx

from coldwatch.config import Config
from coldwatch.errors import ColdwatchError

__all__ = ["TOKEN_ENV", "ApiClientError", "call"]

TOKEN_ENV = "COLDWATCH_API_TOKEN"  # noqa: S105 - the name of a variable, not a secret


class ApiClientError(ColdwatchError):
    """The daemon refused a request or could not be reached."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}" if status else detail)


def base_url(config: Config, override: str | None) -> str:
    """Where the running daemon's API is: --url, else the configured listen address."""
    if override:
        return override.rstrip("/")
    host = config.http.host if config.http.host not in {"0.0.0.0", "::"} else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{config.http.port}"


def call(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, *, signed: bool = False
) -> Any:
    """One request: a read with the service token in $COLDWATCH_API_TOKEN, or a signed action.

    A signed action's body carries the signature's components; no token is sent with it
    (a service token never signs).
    """
    headers = {}
    if not signed:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise ApiClientError(0, f"set {TOKEN_ENV} to a service token to read through the API")
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ApiClientError(0, f"cannot reach the daemon at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiClientError(response.status_code, str(detail))
    return response.json()
