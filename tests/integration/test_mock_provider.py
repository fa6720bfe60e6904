"""The built-in mock, through the official SDKs: what SDK features rely on works out of the box.

Every test runs Ledger with no providers configured (``mock_gateway``), on both databases, and
checks that the ledger entry is priced from the usage the client was shown.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.live import LiveServer

GPT = "gpt-4.1-mini"
# gpt-4.1-mini per million tokens: $0.40 input, $0.10 cached input, $1.60 output.
GPT_INPUT, GPT_CACHED, GPT_OUTPUT = Decimal("0.40"), Decimal("0.10"), Decimal("1.60")
CLAUDE = "claude-sonnet-4-5"
# claude-sonnet-4-5 per million tokens: $3 input, $0.30 cache read, $3.75 / $6 cache writes
# (5 minutes / 1 hour), $15 output.
CLAUDE_INPUT, CLAUDE_READ, CLAUDE_5M, CLAUDE_1H, CLAUDE_OUTPUT = (
    Decimal("3.00"),
    Decimal("0.30"),
    Decimal("3.75"),
    Decimal("6.00"),
    Decimal("15.00"),
)
MILLION = Decimal(1_000_000)

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "date": {"type": "string", "format": "date"},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    {"name": "get_weather", "input_schema": WEATHER_PARAMETERS},
]
# Well over the 1024 tokens both providers need before they cache a prefix.
LONG_SYSTEM = "You are the ledger's careful accountant. " * 200


class Priority(StrEnum):
    low = "low"
    high = "high"


class LineItem(BaseModel):
    description: str
    quantity: int
    unit_price: float


class Invoice(BaseModel):
    customer: str
    items: list[LineItem]
    priority: Priority
    note: str | None
    paid: bool


def _openai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key=server.team_key(), max_retries=0)


def _anthropic(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=server.team_key(), max_retries=0)


def _gpt_cost(usage: Any) -> Decimal:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    uncached = usage.prompt_tokens - cached
    return (
        uncached * GPT_INPUT + cached * GPT_CACHED + usage.completion_tokens * GPT_OUTPUT
    ) / MILLION


def _claude_cost(usage: Any) -> Decimal:
    split = usage.cache_creation
    return (
        usage.input_tokens * CLAUDE_INPUT
        + (usage.cache_read_input_tokens or 0) * CLAUDE_READ
        + split.ephemeral_5m_input_tokens * CLAUDE_5M
        + split.ephemeral_1h_input_tokens * CLAUDE_1H
        + usage.output_tokens * CLAUDE_OUTPUT
    ) / MILLION


def _ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_chat_completions_parse_returns_the_pydantic_model(mock_gateway: LiveServer) -> None:
    client = _openai(mock_gateway)
    raw = client.chat.completions.with_raw_response.parse(
        model=GPT, messages=_ask("Bill the Acme order."), response_format=Invoice
    )
    completion = raw.parse()
    invoice = completion.choices[0].message.parsed
    assert isinstance(invoice, Invoice)
    assert invoice.items and isinstance(invoice.items[0], LineItem)
    assert isinstance(invoice.priority, Priority)
    assert completion.choices[0].finish_reason == "stop"
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["output_tokens"] == completion.usage.completion_tokens > 0
    assert Decimal(entry["cost_usd"]) == _gpt_cost(completion.usage)

    with client.chat.completions.stream(
        model=GPT,
        messages=_ask("Bill the Acme order."),
        response_format=Invoice,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == invoice  # same content streamed or not
    assert final.usage is not None
    assert final.usage.completion_tokens == completion.usage.completion_tokens
    streamed = [e for e in mock_gateway.wait_for_entries(2) if e["stream"]]
    assert [Decimal(e["cost_usd"]) for e in streamed] == [_gpt_cost(final.usage)]


def test_json_object_mode_answers_a_json_object(mock_gateway: LiveServer) -> None:
    completion = _openai(mock_gateway).chat.completions.create(
        model=GPT, messages=_ask("Answer in JSON."), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "function", "function": {"name": "get_weather"}}, "required"],
    ids=["named", "required"],
)
def test_forced_tool_call_has_arguments_valid_against_its_schema(
    mock_gateway: LiveServer, tool_choice: Any
) -> None:
    client = _openai(mock_gateway)
    messages = _ask("What should I wear in get_weather terms?")
    raw = client.chat.completions.with_raw_response.create(
        model=GPT, messages=messages, tools=OPENAI_TOOLS, tool_choice=tool_choice
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS, format_checker=jsonschema.FormatChecker())
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert Decimal(entry["cost_usd"]) == _gpt_cost(completion.usage)

    with client.chat.completions.stream(
        model=GPT, messages=messages, tools=OPENAI_TOOLS, tool_choice=tool_choice
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.tool_calls is not None
    assert streamed.message.tool_calls[0].function.arguments == call.function.arguments


def test_offered_tools_are_called_only_when_asked_for(mock_gateway: LiveServer) -> None:
    client = _openai(mock_gateway)
    asked = client.chat.completions.create(
        model=GPT, messages=_ask("Please call get_time."), tools=OPENAI_TOOLS
    )
    assert asked.choices[0].message.tool_calls is not None
    assert asked.choices[0].message.tool_calls[0].function.name == "get_time"
    chatting = client.chat.completions.create(
        model=GPT, messages=_ask("Tell me a story."), tools=OPENAI_TOOLS
    )
    assert chatting.choices[0].finish_reason == "stop"
    assert chatting.choices[0].message.tool_calls is None
    assert chatting.choices[0].message.content


def test_n_returns_that_many_choices_and_bills_them_all(mock_gateway: LiveServer) -> None:
    client = _openai(mock_gateway)
    raw = client.chat.completions.with_raw_response.create(
        model=GPT, messages=_ask("Two ideas, please."), n=2
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1]
    texts = [c.message.content for c in completion.choices]
    assert all(texts) and texts[0] != texts[1]
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["output_tokens"] == completion.usage.completion_tokens
    assert Decimal(entry["cost_usd"]) == _gpt_cost(completion.usage)


def test_max_completion_tokens_cuts_the_reply_at_the_cap(mock_gateway: LiveServer) -> None:
    client = _openai(mock_gateway)
    messages = _ask("Write a long essay about ledgers.")
    raw = client.chat.completions.with_raw_response.create(
        model=GPT, messages=messages, max_completion_tokens=5
    )
    completion = raw.parse()
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["output_tokens"] == 5
    assert Decimal(entry["cost_usd"]) == _gpt_cost(completion.usage)

    chunks = list(
        client.chat.completions.create(
            model=GPT,
            messages=messages,
            max_completion_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=GPT, messages=messages, response_format=Invoice, max_completion_tokens=5
        )


def test_a_repeated_long_prompt_reads_cached_tokens(mock_gateway: LiveServer) -> None:
    client = _openai(mock_gateway)
    messages = [{"role": "system", "content": LONG_SYSTEM}, *_ask("Summarise the books.")]
    first = client.chat.completions.create(model=GPT, messages=messages)
    assert first.usage is not None and first.usage.prompt_tokens >= 1024
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0

    raw = client.chat.completions.with_raw_response.create(model=GPT, messages=messages)
    second = raw.parse()
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 1024 <= cached <= second.usage.prompt_tokens
    assert cached % 128 == 0
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["cache_read_tokens"] == cached
    assert entry["usage"]["input_tokens"] == second.usage.prompt_tokens - cached
    assert Decimal(entry["cost_usd"]) == _gpt_cost(second.usage)
    assert _gpt_cost(second.usage) < _gpt_cost(first.usage)


def test_anthropic_structured_output_parses_into_the_model(mock_gateway: LiveServer) -> None:
    client = _anthropic(mock_gateway)
    parsed = client.messages.parse(
        model=CLAUDE, max_tokens=1000, messages=_ask("Bill the Acme order."), output_format=Invoice
    )
    assert isinstance(parsed.parsed_output, Invoice)
    assert isinstance(parsed.parsed_output.priority, Priority)
    assert parsed.stop_reason == "end_turn"


@pytest.mark.parametrize(
    "tool_choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}], ids=["tool", "any"]
)
def test_anthropic_forced_tool_use_has_input_valid_against_its_schema(
    mock_gateway: LiveServer, tool_choice: Any
) -> None:
    client = _anthropic(mock_gateway)
    messages = _ask("Plan my trip with get_weather.")
    raw = client.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=500,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
        tool_choice=tool_choice,
    )
    message = raw.parse()
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER_PARAMETERS, format_checker=jsonschema.FormatChecker())
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert Decimal(entry["cost_usd"]) == _claude_cost(message.usage)

    with client.messages.stream(
        model=CLAUDE,
        max_tokens=500,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
        tool_choice=tool_choice,
    ) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == block.input
    assert Decimal(mock_gateway.entry(request_id)["cost_usd"]) == _claude_cost(final.usage)

    # The tool's result handed back: the model answers in prose, not with the same call.
    follow_up = client.messages.create(
        model=CLAUDE,
        max_tokens=500,
        tools=ANTHROPIC_TOOLS,
        messages=[
            *messages,
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny"}],
            },
        ],
    )
    assert follow_up.stop_reason == "end_turn" and follow_up.content[0].type == "text"


def test_anthropic_max_tokens_stops_with_max_tokens(mock_gateway: LiveServer) -> None:
    client = _anthropic(mock_gateway)
    messages = _ask("Write a long essay about ledgers.")
    raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=5, messages=messages)
    message = raw.parse()
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["output_tokens"] == 5
    assert Decimal(entry["cost_usd"]) == _claude_cost(message.usage)

    with client.messages.stream(model=CLAUDE, max_tokens=5, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5


@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_anthropic_cache_control_prefix_is_written_then_read(
    mock_gateway: LiveServer, ttl: str
) -> None:
    client = _anthropic(mock_gateway)
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": ttl}}
    ]
    messages = _ask("Summarise the books.")
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, system=system, messages=messages
    )
    first = raw.parse()
    written = first.usage.cache_creation_input_tokens
    assert written is not None and written >= 1024
    assert first.usage.cache_read_input_tokens == 0
    split = first.usage.cache_creation
    assert split is not None
    assert (split.ephemeral_5m_input_tokens, split.ephemeral_1h_input_tokens) == (
        (written, 0) if ttl == "5m" else (0, written)
    )
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["usage"]["cache_write_5m_tokens" if ttl == "5m" else "cache_write_1h_tokens"] == (
        written
    )
    assert Decimal(entry["cost_usd"]) == _claude_cost(first.usage)

    # A new question after the same cached system prompt, streamed: the prefix is read.
    with client.messages.stream(
        model=CLAUDE, max_tokens=100, system=system, messages=_ask("And the invoices?")
    ) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        second = stream.get_final_message()
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens == 0
    entry = mock_gateway.entry(request_id)
    assert entry["usage"]["cache_read_tokens"] == written
    assert entry["usage"]["cache_write_5m_tokens"] == entry["usage"]["cache_write_1h_tokens"] == 0
    assert Decimal(entry["cost_usd"]) == _claude_cost(second.usage)
    assert _claude_cost(second.usage) < _claude_cost(first.usage)


def test_anthropic_streamed_cache_write_keeps_its_one_hour_price(mock_gateway: LiveServer) -> None:
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    with _anthropic(mock_gateway).messages.stream(
        model=CLAUDE, max_tokens=100, system=system, messages=_ask("Hello.")
    ) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        final = stream.get_final_message()
    assert final.usage.cache_creation is not None
    written = final.usage.cache_creation.ephemeral_1h_input_tokens
    assert written >= 1024
    entry = mock_gateway.entry(request_id)
    # message_delta repeats the write total without the split; the 1-hour price still applies.
    assert entry["usage"]["cache_write_1h_tokens"] == written
    assert entry["usage"]["cache_write_5m_tokens"] == 0
    assert Decimal(entry["cost_usd"]) == _claude_cost(final.usage)
