"""HTTP plumbing shared by every route: credentials, bounded bodies, error rendering, and
the access line every request gets."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response

from ledger.errors import (
    InvalidRequest,
    LedgerError,
    PayloadTooLarge,
    RequestTimeout,
    anthropic_error_body,
    openai_error_body,
)
from ledger.observability import AccessRecord, access_logger, current_access, log_access


class AccessLog:
    """ASGI middleware around the whole application: one access line per HTTP request.

    It wraps everything Litestar does, so an unrouted 404 or a 401 has its line too. Per
    request it costs a clock read, a context variable and a ``send`` wrapper; the line
    is formatted by the log handler, and not at all when INFO is off for ``ledger.access``.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not access_logger.isEnabledFor(logging.INFO):
            await self._app(scope, receive, send)
            return
        record = AccessRecord(scope["method"], scope["path"], time.perf_counter())

        async def send_noting_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                record.http_status = message["status"]
            elif not message.get("more_body", False):
                record.ended = time.perf_counter()
            await send(message)

        token = current_access.set(record)
        try:
            await self._app(scope, receive, send_noting_status)
        except Exception:
            if record.http_status is None:
                record.http_status = 500  # what the server answers in its place
            raise
        finally:
            current_access.reset(token)
            log_access(record)


def credential_from_headers(request: Request[Any, Any, Any]) -> str | None:
    """The key from ``Authorization: Bearer``, else ``x-api-key``, else None."""
    return credential_in(request.headers)


def credential_in(headers: Mapping[str, str]) -> str | None:
    """:func:`credential_from_headers` for headers already in a mapping (lower-case names)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def client_address(request: Request[Any, Any, Any]) -> str | None:
    """The peer's address; a proxy's X-Forwarded-For only from LEDGER_TRUSTED_PROXIES.

    (uvicorn rewrites the scope's client for trusted proxies only: ledger/serving.py.)
    """
    return request.client.host if request.client else None


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name; a repeated header keeps its first value."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if name not in headers:
            headers[name] = raw_value.decode("latin-1")
    return headers


async def read_body(
    headers: Mapping[str, str],
    receive: Callable[[], Awaitable[Any]],
    limit: int,
    *,
    timeout_s: float | None = None,
) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes.

    A body that has not arrived in full within ``timeout_s`` is refused (408): a client
    trickling a large body must not hold its buffer and connection indefinitely.
    """
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    if not timeout_s or timeout_s <= 0:
        return await _read_all(receive, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_all(receive, limit)
    except TimeoutError:
        raise RequestTimeout(timeout_s) from None


async def _read_all(receive: Callable[[], Awaitable[Any]], limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class DisconnectWatch:
    """Notices when the client goes away while its request is being served.

    Used once the body has been read: from then on the only message the server can
    deliver is ``http.disconnect``. Nothing runs until it is needed: a stream waits for
    the disconnect in a task of its own (:meth:`wait`); a whole response only asks, once,
    whether it has already happened (calling the watch). A task per request for that
    one question cost more than anything else Ledger added around the response.
    """

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self._receive = receive
        self._gone = _Flag()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def __call__(self) -> bool:
        """Whether the client has disconnected, as far as the server has told."""
        if self._task is None and not self._gone.value and not self._stopped:
            self._gone.value = _disconnect_waiting(self._receive)
        return self._gone.value

    async def wait(self) -> None:
        """Return once the client has disconnected (never, after :meth:`stop`)."""
        if self._task is None and not self._stopped:
            # The task must not refer back to this object: a cancelled task keeps its
            # CancelledError, whose traceback holds the task's frame, and a frame that held
            # ``self`` would close a reference cycle — garbage for the cyclic collector on
            # every request, and its pauses were the server's worst latencies.
            self._task = asyncio.create_task(_watch(self._receive, self._gone))
        await self._gone.event.wait()

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()


def _disconnect_waiting(receive: Callable[[], Awaitable[Any]]) -> bool:
    """Whether ``receive`` has a disconnect ready, without waiting for one.

    Runs ``receive()`` to its first suspension only: a server that already knows the
    client is gone answers at once; otherwise it would wait, and the call is abandoned
    (closing the coroutine undoes its wait).
    """
    pending = receive()
    if not isinstance(pending, Coroutine):
        return False
    try:
        pending.send(None)
    except StopIteration as answered:
        message = answered.value
        return isinstance(message, dict) and message.get("type") == "http.disconnect"
    except Exception:  # a server's oddity must not cost the request its answer
        return False
    finally:
        pending.close()
    return False


class _Flag:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.value = False
        self.event = asyncio.Event()


async def _watch(receive: Callable[[], Awaitable[Any]], gone: _Flag) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            gone.value = True
            gone.event.set()
            return


_ANTHROPIC_PATHS = ("/v1/messages", "/api/v7/llm/v1/messages")


def protocol_for_path(path: str) -> str:
    """Which error shape a caller of ``path`` understands: Anthropic's on its routes only.

    Matched as whole path segments: a report or usage path whose parameter happens to
    contain "/messages" (``/api/usage/messages-1``) is still answered in OpenAI's shape.
    """
    for prefix in _ANTHROPIC_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return "anthropic"
    return "openai"


def error_body(error: LedgerError, protocol: str = "openai") -> bytes:
    """``error`` as JSON in the caller's protocol."""
    body = anthropic_error_body(error) if protocol == "anthropic" else openai_error_body(error)
    return msgspec.json.encode(body)


def error_response(error: LedgerError, protocol: str = "openai") -> Response[bytes]:
    return Response(
        content=error_body(error, protocol),
        status_code=error.status,
        headers=dict(error.headers),
        media_type="application/json",
    )


def parse_instant(text: str | None, param: str) -> datetime | None:
    """An RFC 3339 date-time query parameter (already matched by its pattern), or 400."""
    if text is None:
        return None
    from ledger.openapi import DATE_TIME_PATTERN

    message = f"{param} must be an RFC 3339 date-time with a UTC offset, e.g. 2026-10-01T00:00:00Z"
    if re.match(DATE_TIME_PATTERN, text) is None:
        raise InvalidRequest(message, param=param)
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError as exc:  # e.g. month 13: the pattern checks only the shape
        raise InvalidRequest(message, param=param) from exc
