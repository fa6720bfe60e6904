"""The mock's OpenAI Responses API and embeddings, ready for the adapters that will route them."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
import time
from collections.abc import Mapping
from typing import Any

from ledger.providers.mock.cache import PrefixCache
from ledger.providers.mock.openai_chat import cached_prompt_tokens, text_of
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
from ledger.tokens import count_openai_chat_prompt, count_text_tokens

_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
_DEFAULT_EMBEDDING_DIMENSIONS = 1536
_MAX_EMBEDDING_DIMENSIONS = 4096


def response(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    """A Responses API ``response`` object, and the same response as stream events."""
    model = str(request.get("model"))
    messages = _chat_messages(request)
    text_format = (
        (request.get("text") or {}).get("format")
        if isinstance(request.get("text"), Mapping)
        else None
    )
    facts = Request(
        model=model,
        seed=seed_of(request.get("input")),
        tools=_tools(request.get("tools")),
        tool_choice=_tool_choice(request.get("tool_choice")),
        user_text=_user_text(messages),
        json_schema=_json_schema(text_format),
        json_object=isinstance(text_format, Mapping) and text_format.get("type") == "json_object",
        max_tokens=positive_int(request.get("max_output_tokens")),
    )
    reply = answer(facts)
    # The Responses API has no published counting method: its prompt is counted as the
    # equivalent chat completion.
    chat = {"model": model, "messages": messages, "tools": _chat_tools(facts.tools)}
    input_tokens = count_openai_chat_prompt(model, chat)
    cached = cached_prompt_tokens(
        cache,
        ("responses", model, request.get("tools"), text_format),
        messages,
        input_tokens,
        lambda n: count_openai_chat_prompt(model, {**chat, "messages": messages[:n]}) - 3,
    )
    ident = "resp_mock" + digest(request.get("input"))
    item = _output_item(ident, reply)
    body: dict[str, Any] = {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if reply.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if reply.truncated else None,
        "error": None,
        "model": model,
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "text": {"format": text_format or {"type": "text"}},
        "max_output_tokens": facts.max_tokens,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": reply.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + reply.tokens,
        },
    }
    return body, _events(body, model, reply)


def embeddings(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    """An embeddings list: one unit vector per input, the same vector for the same input."""
    model = str(request.get("model"))
    inputs = request.get("input")
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
    ):
        inputs = [inputs]
    inputs = inputs if isinstance(inputs, list) else []
    dimensions = positive_int(request.get("dimensions")) or _EMBEDDING_DIMENSIONS.get(
        model, _DEFAULT_EMBEDDING_DIMENSIONS
    )
    dimensions = min(dimensions, _MAX_EMBEDDING_DIMENSIONS)
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        tokens += len(item) if isinstance(item, list) else count_text_tokens(model, item)
        vector = _unit_vector(seed_of(item), dimensions)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return body, []


def _unit_vector(seed: int, dimensions: int) -> list[float]:
    generator = random.Random(seed)
    values = [generator.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _output_item(ident: str, reply: Answer) -> dict[str, Any]:
    if reply.tool is not None:
        return {
            "type": "function_call",
            "id": "fc_mock" + digest([ident, "fc"]),
            "call_id": "call_" + digest([ident, "call"]),
            "name": reply.tool,
            "arguments": reply.arguments,
            "status": "incomplete" if reply.truncated else "completed",
        }
    return {
        "type": "message",
        "id": "msg_mock" + digest([ident, "msg"]),
        "status": "incomplete" if reply.truncated else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
    }


def _events(body: dict[str, Any], model: str, reply: Answer) -> list[bytes]:
    item = body["output"][0]
    events: list[dict[str, Any]] = []
    opening = {
        **body,
        "status": "in_progress",
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    events.append({"type": "response.created", "response": opening})
    events.append({"type": "response.in_progress", "response": opening})
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        part = item["content"][0]
        empty = {**part, "text": ""}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            }
        )
        events.append(
            {"type": "response.content_part.added", **where, "content_index": 0, "part": empty}
        )
        events += [
            {
                "type": "response.output_text.delta",
                **where,
                "content_index": 0,
                "delta": p,
                "logprobs": [],
            }
            for p in pieces(model, reply.text)
        ]
        events.append(
            {
                "type": "response.output_text.done",
                **where,
                "content_index": 0,
                "text": reply.text,
                "logprobs": [],
            }
        )
        events.append(
            {"type": "response.content_part.done", **where, "content_index": 0, "part": part}
        )
    else:
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }
        )
        events += [
            {"type": "response.function_call_arguments.delta", **where, "delta": p}
            for p in pieces(model, reply.arguments)
        ]
        events.append(
            {"type": "response.function_call_arguments.done", **where, "arguments": reply.arguments}
        )
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    final = "response.incomplete" if reply.truncated else "response.completed"
    events.append({"type": final, "response": body})
    return [
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n".encode()
        for n, e in enumerate(events)
    ]


def _chat_messages(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Responses ``instructions`` and ``input`` as chat messages, for counting and caching."""
    messages: list[dict[str, Any]] = []
    if isinstance(request.get("instructions"), str):
        messages.append({"role": "system", "content": request["instructions"]})
    items = request.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": text_of(item.get("content"))})
        elif kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments")}
            messages.append(
                {"role": "assistant", "tool_calls": [{"type": "function", "function": call}]}
            )
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": text_of(item.get("output"))})
    return messages


def _user_text(messages: list[dict[str, Any]]) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None
    return text_of(messages[-1].get("content"))


def _tools(value: Any) -> list[ToolSpec]:
    tools = []
    for tool in value if isinstance(value, list) else []:
        if (
            isinstance(tool, Mapping)
            and tool.get("type") == "function"
            and isinstance(tool.get("name"), str)
        ):
            schema = tool.get("parameters")
            tools.append(ToolSpec(tool["name"], schema if isinstance(schema, Mapping) else {}))
    return tools


def _chat_tools(tools: list[ToolSpec] | Any) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": t.name, "parameters": dict(t.schema)}}
        for t in tools
    ]


def _tool_choice(value: Any) -> ToolChoice:
    if value == "none":
        return ToolChoice("none")
    if value == "required":
        return ToolChoice("any")
    if (
        isinstance(value, Mapping)
        and value.get("type") == "function"
        and isinstance(value.get("name"), str)
    ):
        return ToolChoice("tool", value["name"])
    return ToolChoice("auto")


def _json_schema(value: Any) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping) or value.get("type") != "json_schema":
        return None
    schema = value.get("schema")
    return schema if isinstance(schema, Mapping) else {"type": "object"}
