"""What the mock writes, whatever the protocol: prose, a JSON document, or a tool call.

Every protocol module turns its request into the same few facts (the tools offered, the tool
choice, a response schema, the output cap) and gets back an :class:`Answer` whose token count
is measured with the encoding Ledger counts the model with, and cut at the cap exactly as a
provider cuts a reply that runs out of tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tiktoken

from ledger.providers.mock.schema import instance_for
from ledger.providers.mock.words import prose
from ledger.tokens import encoding_name_for_model, get_encoding

ToolMode = Literal["auto", "none", "any", "tool"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the client offered: its name and the JSON Schema of its arguments."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto`` (call a tool the user asks for), ``none``, ``any`` (must call one), ``tool``."""

    mode: ToolMode = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """The facts of a request that decide the answer, in no protocol's spelling."""

    model: str
    seed: int
    tools: Sequence[ToolSpec] = ()
    tool_choice: ToolChoice = ToolChoice()
    # The text of the last user turn; None when that turn only returns tool results, so an
    # agent that just ran a tool gets prose back instead of the same call again.
    user_text: str | None = None
    json_schema: Mapping[str, Any] | None = None
    json_object: bool = False
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply, already cut at the output cap."""

    text: str = ""
    tool: str | None = None  # the function called, when this is a tool call
    arguments: str = ""  # the call's arguments as JSON text (cut short when truncated)
    tokens: int = 0
    truncated: bool = False

    @property
    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object; ``{}`` when they were cut short by the cap."""
        if self.truncated:
            return {}
        value = json.loads(self.arguments or "{}")
        return value if isinstance(value, dict) else {}


def answer(request: Request, choice: int = 0) -> Answer:
    """The reply for ``request`` (the ``choice``-th one when several are asked for)."""
    encoding = encoding_for(request.model)
    seed = request.seed + 7919 * choice
    tool = _tool_to_call(request)
    if tool is not None:
        arguments = json.dumps(instance_for(tool.schema, seed), separators=(",", ":"))
        name_tokens = len(encoding.encode_ordinary(tool.name))
        argument_tokens = encoding.encode_ordinary(arguments)
        total = name_tokens + len(argument_tokens)
        cap = request.max_tokens
        if cap is not None and total > cap:
            kept = encoding.decode(argument_tokens[: max(0, cap - name_tokens)])
            return Answer(tool=tool.name, arguments=kept, tokens=cap, truncated=True)
        return Answer(tool=tool.name, arguments=arguments, tokens=total)
    if request.json_schema is not None:
        text = json.dumps(instance_for(request.json_schema, seed), ensure_ascii=False)
    elif request.json_object:
        text = json.dumps({"answer": prose(seed)})
    else:
        text = prose(seed)
    tokens = encoding.encode_ordinary(text)
    if request.max_tokens is not None and len(tokens) > request.max_tokens:
        return Answer(
            text=encoding.decode(tokens[: request.max_tokens]),
            tokens=request.max_tokens,
            truncated=True,
        )
    return Answer(text=text, tokens=len(tokens))


def pieces(model: str, text: str) -> list[str]:
    """``text`` split token by token, as a provider streams it (never inside a character)."""
    encoding = encoding_for(model)
    out: list[str] = []
    pending = b""
    for token in encoding.encode_ordinary(text):
        pending += encoding.decode_single_token_bytes(token)
        try:
            out.append(pending.decode())
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        out.append(pending.decode(errors="replace"))
    return out


def encoding_for(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _tool_to_call(request: Request) -> ToolSpec | None:
    choice = request.tool_choice
    if not request.tools or choice.mode == "none":
        return None
    if choice.mode == "tool":
        return next((t for t in request.tools if t.name == choice.name), None)
    asked = _tool_asked_for(request.tools, request.user_text)
    if choice.mode == "any":
        return asked or request.tools[0]
    return asked


def _tool_asked_for(tools: Sequence[ToolSpec], text: str | None) -> ToolSpec | None:
    """The first tool the user's words name (``get_weather`` or "get weather")."""
    if not text:
        return None
    lowered = text.lower()
    for tool in tools:
        name = tool.name.lower()
        spoken = re.sub(r"[_\-.]+", " ", name).strip()
        if name in lowered or (spoken and spoken in lowered):
            return tool
    return None
