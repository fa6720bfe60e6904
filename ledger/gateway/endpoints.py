"""One adapter per endpoint: what the lifecycle needs to know that differs between them.

:class:`Gateway.handle` reads the same top to bottom for every endpoint; at each step
where endpoints differ it asks the request's :class:`Endpoint`: how to parse the body,
which counter estimates its prompt, where usage is in a response body and in stream
events, and which field caps its output. Adding an endpoint is one entry in
:data:`ENDPOINTS` (and its route in ``routes.py``, its path in ``Provider.path``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.gateway.requests import (
    ANTHROPIC,
    OPENAI,
    ParsedRequest,
    parse_anthropic_messages,
    parse_openai_chat,
    parse_openai_completions,
    parse_openai_embeddings,
    parse_openai_responses,
)
from ledger.providers import anthropic, openai, openai_responses
from ledger.usage import ImplausibleUsage, Usage


class StreamRelay(Protocol):
    """Relays a provider's stream to the client, noting usage and text on the way."""

    usage: Usage | None
    rejected: ImplausibleUsage | None
    raw_usage: Any
    text: list[str]
    done: bool
    provider_error: str | None

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


RelayFactory = Callable[[ParsedRequest, int, Callable[[bytes], bytes] | None], StreamRelay]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What differs about one endpoint, step by step of the lifecycle."""

    name: str  # the call's endpoint: chat | messages | count_tokens | responses | …
    protocol: str  # the protocol its errors are shaped in (openai | anthropic)
    entry_name: str  # ledger_entries.endpoint
    parse: Callable[[dict[str, Any]], ParsedRequest]
    counter: str  # the estimate_prompt counter: openai | responses | anthropic | embeddings …
    usage: Callable[[Any], Usage | None]
    response_text: Callable[[Any], str]
    relay: RelayFactory
    # The body field that caps the output; None: the protocol's own rule (chat, messages).
    output_cap_field: str | None = None
    # A stream reports its usage only when asked (Chat Completions' include_usage).
    asks_for_stream_usage: bool = False
    # A stream's usage is complete only once its output count arrived (Anthropic).
    usage_needs_output: bool = False
    # (background responses) The id of a response the provider is still working on:
    # its usage comes later, so its entry is written when it finishes.
    still_running: Callable[[Any], str | None] | None = None


def _openai_relay(
    request: ParsedRequest, max_event_bytes: int, redact: Callable[[bytes], bytes] | None
) -> StreamRelay:
    return openai.OpenAIStreamRelay(
        strip_usage=not request.include_usage, max_event_bytes=max_event_bytes, redact=redact
    )


def _anthropic_relay(
    request: ParsedRequest, max_event_bytes: int, redact: Callable[[bytes], bytes] | None
) -> StreamRelay:
    return anthropic.AnthropicStreamRelay(max_event_bytes=max_event_bytes, redact=redact)


def _responses_relay(
    request: ParsedRequest, max_event_bytes: int, redact: Callable[[bytes], bytes] | None
) -> StreamRelay:
    return openai_responses.ResponsesStreamRelay(max_event_bytes=max_event_bytes, redact=redact)


def _messages(body: dict[str, Any]) -> ParsedRequest:
    return parse_anthropic_messages(body)


def _count_tokens(body: dict[str, Any]) -> ParsedRequest:
    return parse_anthropic_messages(body, count_only=True)


ENDPOINTS: Mapping[str, Endpoint] = {
    endpoint.name: endpoint
    for endpoint in (
        Endpoint(
            "chat", OPENAI, "chat.completions", parse_openai_chat, "openai",
            openai.usage_from_payload, openai.response_text, _openai_relay,
            asks_for_stream_usage=True,
        ),
        Endpoint(
            "messages", ANTHROPIC, "messages", _messages, "anthropic",
            anthropic.usage_from_payload, anthropic.response_text, _anthropic_relay,
            usage_needs_output=True,
        ),
        Endpoint(
            "count_tokens", ANTHROPIC, "count_tokens", _count_tokens, "anthropic",
            anthropic.usage_from_payload, anthropic.response_text, _anthropic_relay,
        ),
        Endpoint(
            "responses", OPENAI, "responses", parse_openai_responses, "responses",
            openai_responses.usage_from_payload, openai_responses.response_text,
            _responses_relay, output_cap_field="max_output_tokens",
            still_running=openai_responses.running_response_id,
        ),
        # Nothing is written: input tokens only (ParsedRequest.writes_output), never streamed.
        Endpoint(
            "embeddings", OPENAI, "embeddings", parse_openai_embeddings, "embeddings",
            openai.usage_from_payload, openai.response_text, _openai_relay,
        ),
        # The legacy text completions: chat's usage and stream, ``choices[].text``.
        Endpoint(
            "completions", OPENAI, "completions", parse_openai_completions, "completions",
            openai.usage_from_payload, openai.response_text, _openai_relay,
            output_cap_field="max_tokens", asks_for_stream_usage=True,
        ),
    )
}  # fmt: skip


def endpoint_for(name: str) -> Endpoint:
    return ENDPOINTS[name]
