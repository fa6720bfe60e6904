"""The OpenAI Responses API: its paths, usage in a response or its stream, and the relay.

A response carries its usage at the top level; a stream carries it once, in its last
event (``response.completed``, ``response.incomplete`` or ``response.failed``), inside
the response that event holds. Streams are relayed byte for byte: nothing is added,
nothing is taken out (the Responses API always reports usage, so Ledger asks for none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ledger.providers.sse import DEFAULT_MAX_EVENT_BYTES, SSEParser
from ledger.usage import ImplausibleUsage, Usage, reported_count

RESPONSES_PATH = "/responses"
INPUT_TOKENS_PATH = "/responses/input_tokens"
# A response in one of these states will not change again: its usage is final.
TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
# The stream events that end a response (and carry its usage).
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Output items that are calls of a provider's built-in tools, billed per call.
BUILT_IN_TOOL_CALLS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "computer_call",
    }
)


def response_of(payload: Any) -> Mapping[str, Any] | None:
    """The response object in ``payload``: a response itself, or an event holding one."""
    if not isinstance(payload, Mapping):
        return None
    inner = payload.get("response")
    if isinstance(inner, Mapping):
        return inner
    return payload if payload.get("object") == "response" or "usage" in payload else None


def usage_from_payload(payload: Any) -> Usage | None:
    """Normalise a Responses ``usage``; ``input_tokens`` includes the cached tokens.

    None when the response has no usage (yet: a background response in progress);
    :class:`ImplausibleUsage` when a count in it is not a plausible count.
    """
    response = response_of(payload)
    usage = response.get("usage") if response is not None else None
    if not isinstance(usage, Mapping):
        return None
    try:
        prompt = reported_count(usage.get("input_tokens"), "input_tokens")
        output = reported_count(usage.get("output_tokens"), "output_tokens")
        details = usage.get("input_tokens_details")
        details = details if isinstance(details, Mapping) else {}
        cached = reported_count(details.get("cached_tokens"), "cached_tokens")
        written = reported_count(details.get("cache_write_tokens"), "cache_write_tokens")
        out_details = usage.get("output_tokens_details")
        out_details = out_details if isinstance(out_details, Mapping) else {}
        reasoning = reported_count(out_details.get("reasoning_tokens"), "reasoning_tokens")
    except ImplausibleUsage as doubt:
        raise ImplausibleUsage(doubt.reason, raw=usage) from None
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    assert response is not None
    return Usage(
        input_tokens=prompt - cached - written,
        cache_read_tokens=cached,
        cache_write_5m_tokens=written,
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        tool_calls=built_in_tool_calls(response),
    )


def built_in_tool_calls(response: Mapping[str, Any]) -> dict[str, int]:
    """How many calls of each built-in tool the response's output holds."""
    calls: dict[str, int] = {}
    output = response.get("output")
    for item in output if isinstance(output, list) else []:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind in BUILT_IN_TOOL_CALLS:
            calls[kind] = calls.get(kind, 0) + 1
    return calls


def status_of(payload: Any) -> str | None:
    response = response_of(payload)
    status = response.get("status") if response is not None else None
    return status if isinstance(status, str) else None


def response_id(payload: Any) -> str | None:
    response = response_of(payload)
    ident = response.get("id") if response is not None else None
    return ident if isinstance(ident, str) and ident else None


def response_text(payload: Any) -> str:
    """Everything the model wrote in a response (for estimating lost usage)."""
    parts: list[str] = []
    response = response_of(payload)
    output = response.get("output") if response is not None else None
    for item in output if isinstance(output, list) else []:
        if isinstance(item, Mapping):
            _collect_item_text(item, parts)
    return "".join(parts)


def _collect_item_text(item: Mapping[str, Any], parts: list[str]) -> None:
    for key in ("arguments", "input", "name"):
        if isinstance(item.get(key), str):
            parts.append(item[key])
    for group in ("content", "summary"):
        for part in item.get(group) or []:
            if isinstance(part, Mapping):
                for key in ("text", "refusal"):
                    if isinstance(part.get(key), str):
                        parts.append(part[key])


class ResponsesStreamRelay:
    """Relays a Responses stream unchanged, capturing its text and its final usage.

    ``done`` once a final event has been seen (``response.completed``, ``.incomplete``,
    ``.failed``); an ``error`` event, or a failed response, sets ``provider_error``.
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._redact = redact
        self._parser = SSEParser(max_event_bytes)
        self.usage: Usage | None = None
        self.rejected: ImplausibleUsage | None = None
        self.raw_usage: Any = None
        self.text: list[str] = []
        self.done = False
        self.malformed_events = 0
        self.provider_error: str | None = None
        self.response_id: str | None = None
        self.failed = False  # the stream ended in response.failed

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._parser.feed(chunk):
            out.append(event.raw)
            if not event.data or event.data == "[DONE]":
                continue
            try:
                payload = msgspec.json.decode(event.data)
            except (msgspec.DecodeError, RecursionError):
                self.malformed_events += 1
                continue
            if not isinstance(payload, Mapping):
                continue
            kind = payload.get("type") or event.event
            if kind == "error" or (kind is None and "error" in payload):
                self.provider_error = str(payload.get("message") or payload.get("error"))[:500]
                if self._redact is not None:  # a provider may echo its key in an error
                    out[-1] = self._redact(event.raw)
                continue
            if kind == "response.created":
                self.response_id = response_id(payload)
            elif isinstance(kind, str) and kind.endswith(".delta"):
                delta = payload.get("delta")
                if isinstance(delta, str):
                    self.text.append(delta)
            elif kind in FINAL_EVENTS:
                self.done = True
                response = response_of(payload)
                if response is not None:
                    self.raw_usage = response.get("usage")
                try:
                    self.usage = usage_from_payload(payload)
                except ImplausibleUsage as doubt:
                    self.rejected = doubt
                if kind == "response.failed":
                    self.failed = True
                    error = response.get("error") if response is not None else None
                    message = error.get("message") if isinstance(error, Mapping) else None
                    self.provider_error = str(message or "The provider's response failed.")[:500]
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever trailing bytes never formed a complete event."""
        return self._parser.pending
