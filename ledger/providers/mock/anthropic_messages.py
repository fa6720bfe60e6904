"""The mock's Anthropic Messages: tool use, structured output, max_tokens, prompt caching."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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
from ledger.tokens import approximate_anthropic_prompt

# Anthropic caches a prefix only from 1024 tokens on (more for some models; the mock uses the
# smallest minimum for every model). A breakpoint looks back this many blocks for a hit.
CACHE_MIN_TOKENS = 1024
CACHE_LOOKBACK_BLOCKS = 20
_TTL_S = {"5m": 300.0, "1h": 3600.0}


def count_tokens(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    payload = {"input_tokens": approximate_anthropic_prompt(request)}
    return payload, []


def message(request: dict[str, Any], cache: PrefixCache) -> tuple[dict[str, Any], list[bytes]]:
    """The message as one JSON document, and the same message as stream events."""
    model = str(request.get("model"))
    messages = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
    facts = Request(
        model=model,
        seed=seed_of(request.get("messages")),
        tools=_tools(request.get("tools")),
        tool_choice=_tool_choice(request.get("tool_choice")),
        user_text=_user_text(messages),
        json_schema=_output_schema(request),
        max_tokens=positive_int(request.get("max_tokens")),
    )
    reply = answer(facts)
    ident = "msg_mock" + digest(request.get("messages"))
    if reply.tool is None:
        block: dict[str, Any] = {"type": "text", "text": reply.text}
    else:
        # A call cut short by max_tokens has no complete input; it is reported as empty.
        block = {
            "type": "tool_use",
            "id": "toolu_mock" + digest([ident, reply.tool]),
            "name": reply.tool,
            "input": reply.arguments_object,
        }
    usage = {**_input_usage(request, cache), "output_tokens": reply.tokens}
    stop_reason = _stop_reason(reply)
    body = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    return body, _events(body, model, reply)


def _stop_reason(reply: Answer) -> str:
    if reply.truncated:
        return "max_tokens"
    return "tool_use" if reply.tool is not None else "end_turn"


def _events(body: dict[str, Any], model: str, reply: Answer) -> list[bytes]:
    usage = body["usage"]
    block = body["content"][0]
    start = {**body, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
    ]
    if block["type"] == "text":
        events.append(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        events.append({"type": "ping"})
        deltas = [{"type": "text_delta", "text": p} for p in pieces(model, reply.text)]
    else:
        events.append(
            {"type": "content_block_start", "index": 0, "content_block": {**block, "input": {}}}
        )
        events.append({"type": "ping"})
        partial = "" if reply.truncated else json.dumps(block["input"], separators=(",", ":"))
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(model, partial)]
    events += [{"type": "content_block_delta", "index": 0, "delta": d} for d in deltas]
    # message_delta repeats the cumulative totals, as the API does (without the 5m/1h split).
    final_usage = {k: v for k, v in usage.items() if k != "cache_creation"}
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": body["stop_reason"], "stop_sequence": None},
            "usage": final_usage,
        },
        {"type": "message_stop"},
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


@dataclass(frozen=True, slots=True)
class _Block:
    """One cacheable unit of the prompt, in Anthropic's prefix order (tools, system, messages)."""

    hash: str
    body: dict[str, Any]  # the request up to and including this block, for counting
    ttl: str | None  # the breakpoint's ttl when the block carries cache_control


def _input_usage(request: dict[str, Any], cache: PrefixCache) -> dict[str, Any]:
    """Input usage split into cache reads, 5m and 1h cache writes and uncached input.

    Each cache_control breakpoint caches the prefix up to it; a breakpoint reads the longest
    prefix an earlier request cached, looking back up to 20 blocks, and writes the rest.
    """
    model = str(request.get("model"))
    total = approximate_anthropic_prompt(request)
    blocks = _blocks(request)
    counted: dict[int, int] = {}

    def tokens(index: int) -> int:
        if index not in counted:
            counted[index] = min(approximate_anthropic_prompt(blocks[index].body), total)
        return counted[index]

    breakpoints = [
        i for i, b in enumerate(blocks) if b.ttl is not None and tokens(i) >= CACHE_MIN_TOKENS
    ]
    read_at: int | None = None
    for point in reversed(breakpoints):
        for index in range(point, max(-1, point - CACHE_LOOKBACK_BLOCKS), -1):
            if cache.hit((model, blocks[index].hash)):
                read_at = index
                break
        if read_at is not None:
            break
    read = tokens(read_at) if read_at is not None else 0
    writes = {"5m": 0, "1h": 0}
    covered = read
    for point in breakpoints:
        if read_at is None or point > read_at:
            ttl = blocks[point].ttl or "5m"
            writes[ttl] += max(0, tokens(point) - covered)
            covered = max(covered, tokens(point))
        cache.store((model, blocks[point].hash), _TTL_S[blocks[point].ttl or "5m"])
    written = writes["5m"] + writes["1h"]
    return {
        "input_tokens": max(0, total - read - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": writes["5m"],
            "ephemeral_1h_input_tokens": writes["1h"],
        },
        "service_tier": "standard",
    }


def _blocks(request: dict[str, Any]) -> list[_Block]:
    model = request.get("model")
    tools = [t for t in request.get("tools") or [] if isinstance(t, Mapping)]
    system = request.get("system")
    messages = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
    blocks: list[_Block] = []
    previous = digest(model)

    def add(unit: Any, body: dict[str, Any], marker: Any) -> None:
        nonlocal previous
        # The breakpoint marker is not part of the cached text: moving it keeps the prefix.
        previous = digest([previous, _without_cache_control(unit)])
        blocks.append(_Block(previous, body, _ttl(marker)))

    for i, tool in enumerate(tools):
        add(tool, {"tools": tools[: i + 1]}, tool.get("cache_control"))
    if isinstance(system, list):
        for i, part in enumerate(system):
            marker = part.get("cache_control") if isinstance(part, Mapping) else None
            add(part, {"tools": tools, "system": system[: i + 1]}, marker)
    elif isinstance(system, str):
        add(system, {"tools": tools, "system": system}, None)
    for m, msg in enumerate(messages):
        content = msg.get("content")
        role = msg.get("role")
        head = {"tools": tools, "system": system, "messages": messages[:m]}
        if not isinstance(content, list):
            add([role, content], {**head, "messages": messages[: m + 1]}, None)
            continue
        for b, part in enumerate(content):
            partial = {"role": role, "content": content[: b + 1]}
            marker = part.get("cache_control") if isinstance(part, Mapping) else None
            add([m, role, part], {**head, "messages": [*messages[:m], partial]}, marker)
    return blocks


def _ttl(marker: Any) -> str | None:
    if not isinstance(marker, Mapping):
        return None
    return "1h" if marker.get("ttl") == "1h" else "5m"


def _without_cache_control(unit: Any) -> Any:
    if isinstance(unit, Mapping):
        return {k: v for k, v in unit.items() if k != "cache_control"}
    return unit


def _tools(value: Any) -> list[ToolSpec]:
    tools = []
    for tool in value if isinstance(value, list) else []:
        # Server tools (web search, code execution) have a versioned type and run upstream.
        if not isinstance(tool, Mapping) or tool.get("type") not in (None, "custom"):
            continue
        schema = tool.get("input_schema")
        if isinstance(tool.get("name"), str):
            tools.append(ToolSpec(tool["name"], schema if isinstance(schema, Mapping) else {}))
    return tools


def _tool_choice(value: Any) -> ToolChoice:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "none":
        return ToolChoice("none")
    if kind == "any":
        return ToolChoice("any")
    if kind == "tool" and isinstance(value.get("name"), str):
        return ToolChoice("tool", value["name"])
    return ToolChoice("auto")


def _user_text(messages: list[Mapping[str, Any]]) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    parts = [p for p in content if isinstance(p, Mapping)] if isinstance(content, list) else []
    if any(p.get("type") == "tool_result" for p in parts):
        return None  # the turn hands back a tool's result: the model answers in prose
    return " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))


def _output_schema(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Structured output: ``output_config.format`` (or the beta's top-level ``output_format``)."""
    config = request.get("output_config")
    spec = config.get("format") if isinstance(config, Mapping) else None
    if spec is None:
        spec = request.get("output_format")
    if not isinstance(spec, Mapping) or spec.get("type") != "json_schema":
        return None
    schema = spec.get("schema")
    return schema if isinstance(schema, Mapping) else {"type": "object"}
