"""The Anthropic Messages protocol: upstream headers, usage, and stream relay."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ledger.providers.sse import DEFAULT_MAX_EVENT_BYTES, SSEParser
from ledger.usage import ImplausibleUsage, Usage, reported_count

MESSAGES_PATH = "/messages"
COUNT_TOKENS_PATH = "/messages/count_tokens"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
FORWARDED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta")


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


def api_path(base_url: str, path: str) -> str:
    """Anthropic's base URL is usually given without ``/v1``; accept both spellings."""
    return path if base_url.rstrip("/").endswith("/v1") else "/v1" + path


def usage_from_mapping(usage: Any, previous: Usage | None = None) -> Usage | None:
    """Normalise an Anthropic ``usage`` object; ``input_tokens`` already excludes cache tokens.

    Stream events carry partial usage (``message_delta`` may hold only
    ``output_tokens``), so fields missing here keep their ``previous`` value. A count
    that is not plausible raises :class:`ImplausibleUsage` (see ``reported_count``).
    """
    if not isinstance(usage, Mapping):
        return None
    try:
        return _normalised(usage, previous)
    except ImplausibleUsage as doubt:
        raise ImplausibleUsage(doubt.reason, raw=usage) from None


def _normalised(usage: Mapping[str, Any], previous: Usage | None) -> Usage:
    base = previous or Usage()
    cache_write_5m = base.cache_write_5m_tokens
    cache_write_1h = base.cache_write_1h_tokens
    breakdown = usage.get("cache_creation")
    if isinstance(breakdown, Mapping):
        cache_write_5m = _int(breakdown, "ephemeral_5m_input_tokens")
        cache_write_1h = _int(breakdown, "ephemeral_1h_input_tokens")
    elif "cache_creation_input_tokens" in usage:
        total = _int(usage, "cache_creation_input_tokens")
        # A stream's message_delta repeats message_start's total without the 5m/1h split:
        # the same total keeps the split already known. Otherwise (older API versions
        # report one total) it is priced as the 5-minute write.
        if previous is None or total != cache_write_5m + cache_write_1h:
            cache_write_5m, cache_write_1h = total, 0
    return Usage(
        input_tokens=_int(usage, "input_tokens") if "input_tokens" in usage else base.input_tokens,
        cache_read_tokens=(
            _int(usage, "cache_read_input_tokens")
            if "cache_read_input_tokens" in usage
            else base.cache_read_tokens
        ),
        cache_write_5m_tokens=cache_write_5m,
        cache_write_1h_tokens=cache_write_1h,
        output_tokens=(
            _int(usage, "output_tokens") if "output_tokens" in usage else base.output_tokens
        ),
        service_tier=_name(usage.get("service_tier")) or base.service_tier,
        inference_geo=_name(usage.get("inference_geo")) or base.inference_geo,
        speed=_name(usage.get("speed")) or base.speed,
        tool_calls=_server_tool_calls(usage.get("server_tool_use")) or base.tool_calls,
    )


# Anthropic's server_tool_use counters and the tool fee each one is priced under.
_SERVER_TOOLS = {"web_search_requests": "web_search", "web_fetch_requests": "web_fetch"}


def _server_tool_calls(value: Any) -> dict[str, int]:
    """``usage.server_tool_use`` as calls by tool name (cumulative in a stream)."""
    if not isinstance(value, Mapping):
        return {}
    calls = {name: _int(value, key) for key, name in _SERVER_TOOLS.items()}
    return {name: count for name, count in calls.items() if count}


def _name(value: Any) -> str | None:
    return value[:32] if isinstance(value, str) and value else None


def usage_from_payload(payload: Any) -> Usage | None:
    if not isinstance(payload, Mapping):
        return None
    return usage_from_mapping(payload.get("usage"))


def response_text(payload: Any) -> str:
    parts: list[str] = []
    if isinstance(payload, Mapping):
        for block in payload.get("content") or []:
            _collect_block_text(block, parts)
    return "".join(parts)


class AnthropicStreamRelay:
    """Relays a Messages stream unchanged; usage comes from message_start and message_delta."""

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._redact = redact
        self._parser = SSEParser(max_event_bytes)
        self.usage: Usage | None = None
        self.rejected: ImplausibleUsage | None = None  # usage seen but not believed
        # The provider's usage objects as they came, by the event that carried them.
        self.raw_usage: dict[str, Any] = {}
        self.output_reported = False
        self.text: list[str] = []
        self.done = False
        self.malformed_events = 0
        self.provider_error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._parser.feed(chunk):
            out.append(event.raw)
            if not event.data:
                continue
            try:
                payload = msgspec.json.decode(event.data)
            except (msgspec.DecodeError, RecursionError):
                self.malformed_events += 1
                continue
            if not isinstance(payload, Mapping):
                continue
            kind = payload.get("type") or event.event
            if kind == "message_start":
                message = payload.get("message")
                if isinstance(message, Mapping):
                    self._take_usage(message.get("usage"), kind)
            elif kind == "message_delta":
                usage = payload.get("usage")
                if isinstance(usage, Mapping):
                    self._take_usage(usage, kind)
                    self.output_reported = "output_tokens" in usage
            elif kind == "content_block_start":
                _collect_block_text(payload.get("content_block"), self.text)
            elif kind == "content_block_delta":
                delta = payload.get("delta")
                if isinstance(delta, Mapping):
                    for key in ("text", "partial_json", "thinking"):
                        value = delta.get(key)
                        if isinstance(value, str):
                            self.text.append(value)
            elif kind == "message_stop":
                self.done = True
            elif kind == "error":
                self.provider_error = str(payload.get("error"))[:500]
                if self._redact is not None:  # a provider may echo its key in an error
                    out[-1] = self._redact(event.raw)
        return b"".join(out)

    def _take_usage(self, usage: Any, kind: str) -> None:
        if usage is not None:
            self.raw_usage[kind] = usage
        if self.rejected is not None:
            return  # once one count is not believed, none of this stream's usage is
        try:
            self.usage = usage_from_mapping(usage, self.usage)
        except ImplausibleUsage as doubt:
            self.rejected = ImplausibleUsage(doubt.reason, raw=self.raw_usage)

    def finish(self) -> bytes:
        return self._parser.pending


def _collect_block_text(block: Any, parts: list[str]) -> None:
    if not isinstance(block, Mapping):
        return
    for key in ("text", "thinking"):
        value = block.get(key)
        if isinstance(value, str):
            parts.append(value)
    if block.get("type") == "tool_use":
        name = block.get("name")
        if isinstance(name, str):
            parts.append(name)
        tool_input = block.get("input")
        if tool_input:
            parts.append(msgspec.json.encode(tool_input).decode())


def _int(usage: Mapping[str, Any], name: str) -> int:
    return reported_count(usage.get(name), name)
