"""Estimating a Responses API request's input tokens with the Chat Completions counter.

OpenAI publishes no counting method for the Responses API; its prompt is the same
conversation in another shape. ``instructions`` and ``input`` (a string or a list of
items: messages, function calls and their outputs, reasoning, images, files) are turned
into the equivalent chat messages and counted as :func:`measure_openai_chat_prompt`
counts them, images and files at the same bounds (``ledger.tokens.media``).
"""

from __future__ import annotations

from typing import Any

from ledger.tokens._values import as_dict, as_list, as_text, json_text
from ledger.tokens.openai_chat import measure_openai_chat_prompt


def measure_openai_responses_prompt(model: str, body: dict[str, Any]) -> tuple[int, str | None]:
    """The estimated input tokens of a Responses body, and what has no bound (or None)."""
    if not isinstance(body, dict):
        return 0, None
    return measure_openai_chat_prompt(model, as_chat_body(body))


def as_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body a Responses body amounts to, for counting only."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        for item in as_list(items):
            message = _as_message(item)
            if message is not None:
                messages.append(message)
    chat: dict[str, Any] = {"messages": messages}
    tools = [_as_chat_tool(tool) for tool in as_list(body.get("tools"))]
    if tools:
        chat["tools"] = tools
    text_format = as_dict(as_dict(body.get("text")).get("format"))
    if text_format.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": text_format}
    return chat


def _as_message(item: Any) -> dict[str, Any] | None:
    if isinstance(item, str):
        return {"role": "user", "content": item}
    item = as_dict(item)
    kind = item.get("type", "message")
    if kind == "message" or (kind is None and "role" in item):
        content = item.get("content")
        parts = content if isinstance(content, str) else [_as_part(p) for p in as_list(content)]
        return {"role": as_text(item.get("role")) or "user", "content": parts}
    if kind in ("function_call", "custom_tool_call"):
        arguments = item.get("arguments", item.get("input"))
        call = {"function": {"name": item.get("name"), "arguments": arguments}}
        return {"role": "assistant", "tool_calls": [call]}
    if kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
        output = item.get("output")
        return {"role": "tool", "content": output if isinstance(output, str) else json_text(output)}
    if kind == "item_reference":
        return None  # a stored item: its tokens are covered by the context bound
    # Anything else (reasoning, shell and search calls, computer actions) is prompt text
    # in some rendering: counted as its JSON, which errs high.
    return {"role": "assistant", "content": json_text(item)}


def _as_part(part: Any) -> Any:
    part = as_dict(part)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal")}
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"detail": part.get("detail")}}
    if kind == "input_file":
        file: dict[str, Any] = {"filename": part.get("filename")}
        data = part.get("file_data")
        if isinstance(data, str):
            file["file_data"] = data
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": as_dict(part.get("input_audio"))}
    return {"type": "text", "text": json_text(part)}


def _as_chat_tool(tool: Any) -> dict[str, Any]:
    tool = as_dict(tool)
    if tool.get("type") == "function":
        fields = ("name", "description", "parameters")
        return {"type": "function", "function": {k: tool[k] for k in fields if k in tool}}
    # Built-in tools (web search, file search, shell...): their definition as JSON.
    return {"type": "custom", "custom": {"name": as_text(tool.get("type")), "format": tool}}
