"""The built-in ``mock`` provider: deterministic replies, real streaming, realistic usage.

It lets ``ledger serve`` work on a machine with no network and no configuration. It
produces the same bytes a real provider would, so everything downstream (usage
capture, stream relay, recording) runs exactly as it does in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ledger.providers.base import UpstreamResponse
from ledger.tokens import approximate_anthropic_prompt, count_openai_chat_prompt, count_text_tokens

_WORDS = [
    "ledger",
    "counts",
    "every",
    "token",
    "so",
    "that",
    "the",
    "monthly",
    "report",
    "reconciles",
    "to",
    "the",
    "cent",
    "and",
    "no",
    "team",
    "spends",
    "more",
    "than",
    "its",
    "budget",
    "allows",
    "while",
    "requests",
    "stream",
    "through",
    "quickly",
]


class MockTransport:
    """Answers chat completions and messages requests without leaving the process."""

    def __init__(self, *, chunk_delay_s: float = 0.002) -> None:
        self._chunk_delay_s = chunk_delay_s

    async def send(
        self, path: str, body: bytes, headers: Mapping[str, str], *, stream: bool
    ) -> UpstreamResponse:
        request = json.loads(body)
        if path.endswith("/messages/count_tokens"):
            payload = {"input_tokens": approximate_anthropic_prompt(request)}
            return _json_response(payload)
        if path.endswith("/messages"):
            return self._anthropic(request, stream)
        return self._openai(request, stream)

    async def aclose(self) -> None:
        return None

    def _openai(self, request: dict[str, Any], stream: bool) -> UpstreamResponse:
        model = str(request.get("model"))
        words = _reply_words(
            request, request.get("max_completion_tokens") or request.get("max_tokens")
        )
        prompt_tokens = count_openai_chat_prompt(model, request)
        text = " ".join(words)
        completion_tokens = count_text_tokens(model, text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        ident = "chatcmpl-mock" + _digest(request)
        created = int(time.time())
        if not stream:
            return _json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "ledger-mock",
                }
            )
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "ledger-mock",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": (" " if i else "") + w}, None) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        raw = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        return self._stream_response(raw)

    def _anthropic(self, request: dict[str, Any], stream: bool) -> UpstreamResponse:
        model = str(request.get("model"))
        words = _reply_words(request, request.get("max_tokens"))
        text = " ".join(words)
        input_tokens = approximate_anthropic_prompt(request)
        output_tokens = count_text_tokens("claude", text)
        ident = "msg_mock" + _digest(request)
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
        }
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not stream:
            return _json_response(message)
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for i, word in enumerate(words):
            delta = {"type": "text_delta", "text": (" " if i else "") + word}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        raw = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
        return self._stream_response(raw)

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


def _json_response(payload: Mapping[str, Any]) -> UpstreamResponse:
    body = json.dumps(payload).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return UpstreamResponse(
        status=200, headers={"content-type": "application/json"}, chunks=chunks()
    )


def _reply_words(request: Mapping[str, Any], max_tokens: Any) -> list[str]:
    """A reply that depends only on the request, so tests and demos are repeatable."""
    seed = int(_digest(request)[:8], 16)
    length = 12 + seed % 24
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        length = min(length, max(1, max_tokens))
    return [_WORDS[(seed + i) % len(_WORDS)] for i in range(length)]


def _digest(request: Mapping[str, Any]) -> str:
    text = json.dumps(request.get("messages"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
