"""The built-in ``mock`` provider: deterministic replies, real streaming, realistic usage.

It lets ``ledger serve`` work on a machine with no network and no configuration. It
produces the same bytes a real provider would, so everything downstream (usage
capture, stream relay, recording) runs exactly as it does in production, and it honours
what SDK features rely on: structured outputs (a JSON document valid against the schema),
tool calls (forced, or asked for by name), ``n`` choices, output caps (``length`` /
``max_tokens``) and prompt caching (reads on a repeated prefix, process-local).

One function per endpoint (:data:`ENDPOINTS`); each returns the answer as a JSON document
and as the stream events that carry the same content.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ledger.providers.base import UpstreamResponse
from ledger.providers.mock import anthropic_messages, completions, openai_chat, responses
from ledger.providers.mock.cache import PrefixCache

__all__ = ["ENDPOINTS", "MockTransport"]

Handler = Callable[[dict[str, Any], PrefixCache], tuple[dict[str, Any], list[bytes]]]

# Upstream path suffixes, most specific first (``/completions`` after ``/chat/completions``).
ENDPOINTS: tuple[tuple[str, Handler], ...] = (
    ("/messages/count_tokens", anthropic_messages.count_tokens),
    ("/messages", anthropic_messages.message),
    ("/chat/completions", openai_chat.completion),
    ("/responses", responses.response),
    ("/embeddings", responses.embeddings),
    ("/completions", completions.completion),
)


class MockTransport:
    """Answers every endpoint in :data:`ENDPOINTS` without leaving the process."""

    def __init__(self, *, chunk_delay_s: float = 0.002, cache: PrefixCache | None = None) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._cache = cache or PrefixCache()

    async def send(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        method: str = "POST",
    ) -> UpstreamResponse:
        if method != "POST":
            return _json_response(_error(f"The mock provider keeps no {path}."), 404)
        handler = next((h for suffix, h in ENDPOINTS if path.endswith(suffix)), None)
        if handler is None:
            return _json_response(_error(f"The mock provider does not serve {path}."), 404)
        try:
            request = json.loads(body)
        except ValueError:
            return _json_response(_error("The request body is not JSON."), 400)
        if not isinstance(request, dict):
            return _json_response(_error("The request body is not a JSON object."), 400)
        payload, events = handler(request, self._cache)
        if stream and events:
            return self._stream_response(events)
        return _json_response(payload)

    async def aclose(self) -> None:
        return None

    def _stream_response(self, events: list[bytes]) -> UpstreamResponse:
        delay = self._chunk_delay_s

        async def chunks() -> AsyncIterator[bytes]:
            for event in events:
                if delay:
                    await asyncio.sleep(delay)
                yield event

        return UpstreamResponse(
            status=200, headers={"content-type": "text/event-stream"}, chunks=chunks()
        )


def _error(message: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "message": message}}


def _json_response(payload: Mapping[str, Any], status: int = 200) -> UpstreamResponse:
    body = json.dumps(payload).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return UpstreamResponse(
        status=status, headers={"content-type": "application/json"}, chunks=chunks()
    )
