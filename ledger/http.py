"""HTTP plumbing shared by every route: credentials, bounded bodies, error rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response

from ledger.errors import (
    LedgerError,
    PayloadTooLarge,
    anthropic_error_body,
    openai_error_body,
)


def credential_from_headers(request: Request[Any, Any, Any]) -> str | None:
    """The key from ``Authorization: Bearer``, else ``x-api-key``, else None."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def client_address(request: Request[Any, Any, Any]) -> str | None:
    """The peer's address (behind a proxy, run uvicorn with --forwarded-allow-ips)."""
    return request.client.host if request.client else None


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


class DisconnectWatch:
    """Notices when the client goes away while its request is being served.

    Started once the body has been read: from then on the only message the server can
    deliver is ``http.disconnect``.
    """

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        # The watching task must not refer back to this object: a cancelled task keeps its
        # CancelledError, whose traceback holds the task's frame, and a frame that held
        # ``self`` would close a reference cycle — garbage for the cyclic collector on
        # every request, and its pauses were the server's worst latencies.
        self._gone = _Flag()
        self._task = asyncio.create_task(_watch(receive, self._gone))

    def __call__(self) -> bool:
        return self._gone.value

    def stop(self) -> None:
        self._task.cancel()


class _Flag:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


async def _watch(receive: Callable[[], Awaitable[Any]], gone: _Flag) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            gone.value = True
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


def error_response(error: LedgerError, protocol: str = "openai") -> Response[bytes]:
    body = anthropic_error_body(error) if protocol == "anthropic" else openai_error_body(error)
    return Response(
        content=msgspec.json.encode(body),
        status_code=error.status,
        headers=dict(error.headers),
        media_type="application/json",
    )
