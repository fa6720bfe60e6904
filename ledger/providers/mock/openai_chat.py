"""The mock's OpenAI Chat Completions: choices, tool calls, JSON, caps, cached prompt tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ledger.providers.mock.cache import PrefixCache
from ledger.providers.mock.reply import (
    Answer,
    Request,
    ToolChoice,
    ToolSpec,
    answer,
    pieces,
    positive_int,
)
from ledger.providers.mock.words import digest, seed_of
from ledger.tokens import count_openai_chat_prompt

# OpenAI caches prompts of 1024 tokens or more and reports hits in steps of 128 tokens.
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
# In-memory retention is 5 to 10 minutes of inactivity; the mock keeps the upper end.
CACHE_TTL_S = 600.0
_MAX_CHOICES = 128
_REPLY_PRIMING_TOKENS = 3  # the cookbook's <|start|>assistant<|message|>, not part of a prefix


def completion(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    """The completion as one JSON document, and the same completion as stream events."""
    model = str(request.get("model"))
    messages = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
    facts = Request(
        model=model,
        seed=seed_of(request.get("messages")),
        tools=_tools(request.get("tools")),
        tool_choice=_tool_choice(request.get("tool_choice")),
        user_text=_user_text(messages),
        json_schema=_json_schema(request.get("response_format")),
        json_object=_format_type(request.get("response_format")) == "json_object",
        max_tokens=positive_int(request.get("max_completion_tokens"))
        or positive_int(request.get("max_tokens")),
    )
    count = min(positive_int(request.get("n")) or 1, _MAX_CHOICES)
    answers = [answer(facts, i) for i in range(count)]
    prompt_tokens = count_openai_chat_prompt(model, request)
    cached = cached_prompt_tokens(
        cache,
        ("chat", model, request.get("tools"), request.get("response_format")),
        messages,
        prompt_tokens,
        lambda n: (
            count_openai_chat_prompt(model, {**request, "messages": messages[:n]})
            - _REPLY_PRIMING_TOKENS
        ),
    )
    completion_tokens = sum(a.tokens for a in answers)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    ident = "chatcmpl-mock" + digest(request.get("messages"))
    created = int(time.time())
    head = {"id": ident, "created": created, "model": model, "system_fingerprint": "ledger-mock"}
    call_ids = [f"call_{digest([ident, i])}" for i in range(count)]
    body = {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": _message(a, call_ids[i]),
                "logprobs": None,
                "finish_reason": _finish_reason(a),
            }
            for i, a in enumerate(answers)
        ],
        "usage": usage,
        "service_tier": "default",
    }
    include_usage = (request.get("stream_options") or {}).get("include_usage") is True
    return body, _events(head, model, answers, call_ids, usage if include_usage else None)


def cached_prompt_tokens(
    cache: PrefixCache,
    context: Any,
    messages: Sequence[Any],
    prompt_tokens: int,
    prefix_tokens: Callable[[int], int],
) -> int:
    """The prompt tokens OpenAI would serve from its cache, and remember this prompt.

    The prefix is everything before the reply (tools, response format, messages); a later
    request that starts with the same messages reads the longest prefix seen, in steps of 128.
    """
    if prompt_tokens < CACHE_MIN_TOKENS:
        return 0
    hashes = [digest(context)]
    for message in messages:
        hashes.append(digest([hashes[-1], message]))
    cached = 0
    for length in range(len(messages), 0, -1):
        if cache.hit(("openai", hashes[length])):
            tokens = min(prefix_tokens(length), prompt_tokens)
            cached = tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS
            cached = cached if cached >= CACHE_MIN_TOKENS else 0
            break
    cache.store(("openai", hashes[-1]), CACHE_TTL_S)
    return cached


def _message(reply: Answer, call_id: str) -> dict[str, Any]:
    if reply.tool is None:
        return {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": reply.tool, "arguments": reply.arguments},
            }
        ],
    }


def _finish_reason(reply: Answer) -> str:
    if reply.truncated:
        return "length"
    return "tool_calls" if reply.tool is not None else "stop"


def _events(
    head: dict[str, Any],
    model: str,
    answers: list[Answer],
    call_ids: list[str],
    usage: dict[str, Any] | None,
) -> list[bytes]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if usage is not None:
            body["usage"] = None
        return body

    events: list[dict[str, Any]] = []
    for index, reply in enumerate(answers):
        if reply.tool is None:
            events.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}, None))
            events += [chunk(index, {"content": p}, None) for p in pieces(model, reply.text)]
        else:
            start = {
                "index": 0,
                "id": call_ids[index],
                "type": "function",
                "function": {"name": reply.tool, "arguments": ""},
            }
            events.append(
                chunk(index, {"role": "assistant", "content": None, "tool_calls": [start]}, None)
            )
            events += [
                chunk(index, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, None)
                for p in pieces(model, reply.arguments)
            ]
        events.append(chunk(index, {}, _finish_reason(reply)))
    if usage is not None:
        events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    raw = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    return [*raw, b"data: [DONE]\n\n"]


def _tools(value: Any) -> list[ToolSpec]:
    tools = []
    for tool in value if isinstance(value, list) else []:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            tools.append(
                ToolSpec(function["name"], parameters if isinstance(parameters, Mapping) else {})
            )
    return tools


def _tool_choice(value: Any) -> ToolChoice:
    if value == "none":
        return ToolChoice("none")
    if value == "required":
        return ToolChoice("any")
    if isinstance(value, Mapping):
        function = value.get("function")
        name = function.get("name") if isinstance(function, Mapping) else value.get("name")
        if isinstance(name, str):
            return ToolChoice("tool", name)
    return ToolChoice("auto")


def _user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None  # after a tool result the model answers in prose
    return text_of(messages[-1].get("content"))


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(
        p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)
    )


def _format_type(value: Any) -> Any:
    return value.get("type") if isinstance(value, Mapping) else None


def _json_schema(value: Any) -> Mapping[str, Any] | None:
    if _format_type(value) != "json_schema":
        return None
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return schema if isinstance(schema, Mapping) else {"type": "object"}
