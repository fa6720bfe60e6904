"""The OpenAI Chat Completions protocol: upstream headers, usage, and stream relay."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ledger.money import MoneyError, usd_to_nanos_rounded
from ledger.providers.sse import DEFAULT_MAX_EVENT_BYTES, SSEParser
from ledger.usage import MAX_ENTRY_COST_NANOS, ImplausibleUsage, Usage, reported_count

CHAT_COMPLETIONS_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"
COMPLETIONS_PATH = "/completions"  # the legacy text completions
# Headers a client may send that change what the provider does; forwarded as they are.
FORWARDED_REQUEST_HEADERS = ("openai-organization", "openai-project", "openai-beta")
# With include_usage every chunk carries "usage": null. A JSON string cannot contain an
# unescaped quote, so this pattern can only match the object key, never text inside content.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null')


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def is_regional_endpoint(base_url: str) -> bool:
    """Whether a base URL is one of OpenAI's regional-processing (data residency) hosts,
    ``https://eu.api.openai.com/v1`` and the like, which bill a regional uplift."""
    host = urlsplit(base_url).hostname or ""
    region, _, rest = host.partition(".")
    return bool(region) and rest == "api.openai.com"


# The names each OpenAI endpoint gives the same counts: Chat Completions first, then the
# Responses API's, which some OpenAI-compatible servers also use for chat completions.
_PROMPT_NAMES = (("prompt_tokens",), ("input_tokens",))
_COMPLETION_NAMES = (("completion_tokens",), ("output_tokens",))
_CACHED_NAMES = (
    ("prompt_tokens_details", "cached_tokens"),
    ("input_tokens_details", "cached_tokens"),
)
_CACHE_WRITE_NAMES = (
    ("prompt_tokens_details", "cache_write_tokens"),
    ("input_tokens_details", "cache_write_tokens"),
)
_REASONING_NAMES = (
    ("completion_tokens_details", "reasoning_tokens"),
    ("output_tokens_details", "reasoning_tokens"),
)


def usage_from_payload(payload: Any) -> Usage | None:
    """Normalise an OpenAI ``usage`` object; ``prompt_tokens`` includes the cached tokens.

    Chat Completions names (``prompt_tokens``, ``completion_tokens`` and their details)
    and Responses names (``input_tokens``, ``output_tokens``, ``input_tokens_details``,
    ``output_tokens_details``) are both read. None when there is no usage object, or
    when it gives neither an input nor an output count (nothing is known, so the
    request is estimated); :class:`ImplausibleUsage` when one of its counts is not a
    plausible count (see :func:`ledger.usage.reported_count`).
    """
    if not isinstance(payload, Mapping):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, Mapping):
        return None
    try:
        prompt = _count(usage, _PROMPT_NAMES)
        completion = _count(usage, _COMPLETION_NAMES)
        if prompt is None and completion is None:
            return None
        cached = _count(usage, _CACHED_NAMES) or 0
        # GPT-5.6 and later bill writes to the prompt cache; they are part of prompt_tokens.
        written = _count(usage, _CACHE_WRITE_NAMES) or 0
        reasoning = _count(usage, _REASONING_NAMES) or 0
        if not reasoning:  # some OpenAI-compatible hosts put it at the top of usage
            reasoning = reported_count(usage.get("reasoning_tokens"), "reasoning_tokens")
    except ImplausibleUsage as doubt:
        raise ImplausibleUsage(doubt.reason, raw=usage) from None
    prompt, completion = prompt or 0, completion or 0
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    total = usage.get("total_tokens")
    if reasoning and isinstance(total, int) and total == prompt + completion + reasoning:
        # Reasoning reported beside completion_tokens, not inside it (the total says so):
        # it was generated all the same and is billed as output.
        completion += reasoning
    tier = payload.get("service_tier")
    return Usage(
        input_tokens=prompt - cached - written,
        cache_read_tokens=cached,
        cache_write_5m_tokens=written,
        output_tokens=completion,
        reasoning_tokens=min(reasoning, completion),
        service_tier=tier[:32] if isinstance(tier, str) and tier else None,
        provider_cost_nanos=_provider_cost(usage.get("cost")),
    )


def _provider_cost(value: Any) -> int | None:
    """OpenRouter's ``usage.cost`` (USD, a JSON number) in nanos, to the nano it carries.

    The float's shortest text is the number the provider wrote; digits beyond the nano
    are rounded half up, never carried on. Anything but a plausible amount is not given.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        nanos = usd_to_nanos_rounded(str(value))
    except MoneyError:
        return None
    return nanos if 0 <= nanos <= MAX_ENTRY_COST_NANOS else None


def _count(usage: Mapping[str, Any], spellings: tuple[tuple[str, ...], ...]) -> int | None:
    """The first spelling of a count that ``usage`` gives (not ``null``), or None."""
    for path in spellings:
        value = _get(usage, *path)
        if value is not None:
            return reported_count(value, ".".join(path))
    return None


def response_text(payload: Any) -> str:
    """Everything the model wrote in a non-streamed response (for estimating lost usage).

    Chat choices carry a ``message``; legacy completions choices carry ``text``.
    """
    parts: list[str] = []
    if isinstance(payload, Mapping):
        for choice in payload.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            message = choice.get("message")
            if isinstance(message, Mapping):
                _collect_message_text(message, parts)
            elif isinstance(choice.get("text"), str):
                parts.append(choice["text"])
    return "".join(parts)


class OpenAIStreamRelay:
    """Relays a chat completion stream event by event, capturing usage on the way.

    When Ledger asked for ``include_usage`` on the client's behalf, the extra usage
    chunk and the ``"usage": null`` fields are removed, so the client receives exactly
    the stream it asked for. The usage chunk is recognised by what it carries, not by
    ``choices`` being ``[]``: some servers (LiteLLM) send it with an empty delta.
    """

    def __init__(
        self,
        *,
        strip_usage: bool,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._strip_usage = strip_usage
        self._redact = redact
        self._parser = SSEParser(max_event_bytes)
        self.usage: Usage | None = None
        self.rejected: ImplausibleUsage | None = None  # usage seen but not believed
        self.raw_usage: Any = None  # the provider's usage object, as it came
        self.text: list[str] = []
        self.done = False
        self.malformed_events = 0
        self.provider_error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._parser.feed(chunk):
            data = event.data
            if data == "[DONE]":
                self.done = True
                out.append(event.raw)
                continue
            if not data:
                out.append(event.raw)
                continue
            try:
                payload = msgspec.json.decode(data)
            except (msgspec.DecodeError, RecursionError):
                self.malformed_events += 1
                out.append(event.raw)
                continue
            if isinstance(payload, Mapping) and "error" in payload:
                self.provider_error = str(payload.get("error"))[:500]
                if self._redact is not None:  # a provider may echo its key in an error
                    out.append(self._redact(event.raw))
                    continue
            try:
                usage = usage_from_payload(payload)
            except ImplausibleUsage as doubt:
                self.rejected, usage = doubt, None
            if usage is not None and self.rejected is None:
                self.usage = usage
            has_usage = isinstance(payload, Mapping) and isinstance(payload.get("usage"), Mapping)
            if has_usage:
                self.raw_usage = payload["usage"]
            if isinstance(payload, Mapping):
                for choice in payload.get("choices") or []:
                    if not isinstance(choice, Mapping):
                        continue
                    delta = choice.get("delta")
                    if isinstance(delta, Mapping):
                        _collect_message_text(delta, self.text)
                    elif isinstance(choice.get("text"), str):  # a legacy completions chunk
                        self.text.append(choice["text"])
            if self._strip_usage:
                if has_usage and _carries_no_choice(payload.get("choices")):
                    continue  # the usage chunk the client did not ask for
                out.append(_without_null_usage(event.raw))
            else:
                out.append(event.raw)
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever trailing bytes never formed a complete event."""
        return self._parser.pending


def _carries_no_choice(choices: Any) -> bool:
    """Whether a chunk's ``choices`` say nothing: none, or only empty deltas that do not finish.

    ``[]`` is OpenAI's usage chunk; ``[{"index": 0, "delta": {}}]`` is LiteLLM's.
    """
    if not choices:
        return True
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, Mapping):
            return False
        if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
            return False
        delta = choice.get("delta")
        if delta is not None and not (
            isinstance(delta, Mapping)
            and all(v is None or v in ("", [], {}) for v in delta.values())
        ):
            return False
    return True


def _without_null_usage(raw: bytes) -> bytes:
    # OpenAI's compact spelling by plain replacement (several times faster than the
    # regex, on every event of the stream); the regex for any other spacing.
    stripped = raw.replace(b',"usage":null', b"")
    return _NULL_USAGE.sub(b"", stripped) if b'"usage"' in stripped else stripped


def _collect_message_text(message: Mapping[str, Any], parts: list[str]) -> None:
    for key in ("content", "refusal", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str):
            parts.append(value)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                value = function.get(key)
                if isinstance(value, str):
                    parts.append(value)


def _get(mapping: Mapping[str, Any], *path: str) -> Any:
    value: Any = mapping
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
