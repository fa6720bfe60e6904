"""The Anthropic-compatible gateway, driven by the official ``anthropic`` SDK against a live server."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import pytest

from ledger.tokens import approximate_anthropic_prompt
from tests.fake_upstream import TOOL_ARGUMENTS, FakeUpstream, count_anthropic_input_tokens
from tests.live import LiveServer

MODEL = "claude-sonnet-4-5"
# claude-sonnet-4-5 per million tokens: $3 input, $0.30 cache read, $3.75 5-minute cache
# write, $6 1-hour cache write, $15 output.
INPUT, CACHE_READ, CACHE_WRITE_5M, CACHE_WRITE_1H, OUTPUT = (
    Decimal("3.00"),
    Decimal("0.30"),
    Decimal("3.75"),
    Decimal("6.00"),
    Decimal("15.00"),
)
ZERO = Decimal("0")

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _cost(
    uncached: int, output: int, *, cache_read: int = 0, write_5m: int = 0, write_1h: int = 0
) -> Decimal:
    return (
        uncached * INPUT
        + cache_read * CACHE_READ
        + write_5m * CACHE_WRITE_5M
        + write_1h * CACHE_WRITE_1H
        + output * OUTPUT
    ) / Decimal(1_000_000)


def _entry_cost(entry: dict[str, Any]) -> Decimal:
    """The cost the entry's own token buckets come to at claude-sonnet-4-5 prices."""
    usage = entry["usage"]
    return _cost(
        usage["input_tokens"],
        usage["output_tokens"],
        cache_read=usage["cache_read_tokens"],
        write_5m=usage["cache_write_5m_tokens"],
        write_1h=usage["cache_write_1h_tokens"],
    )


def _client(gateway: LiveServer, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _marker() -> str:
    return "marker-" + uuid.uuid4().hex[:8]


def test_non_streaming_message_is_relayed_and_recorded_with_exact_cost(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    messages = _user("Hello there, how are you today?")
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=messages)
    message = raw.parse()

    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: Hello there, how are you today?"
    assert message.stop_reason == "end_turn"
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["status"] == "ok"
    assert entry["http_status"] == 200
    assert entry["endpoint"] == "messages"
    assert entry["team"] == "research"
    assert entry["requested_model"] == MODEL
    assert entry["served_model"] == MODEL
    assert entry["provider"] == "anthropic"
    assert entry["stream"] is False
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["input_tokens"] == message.usage.input_tokens
    assert entry["usage"]["output_tokens"] == message.usage.output_tokens
    expected = _cost(message.usage.input_tokens, message.usage.output_tokens)
    assert Decimal(entry["cost_usd"]) == expected
    assert Decimal(raw.headers["x-ledger-cost-usd"]) == expected


def test_without_a_hard_budget_the_estimate_is_local_and_costs_no_count_tokens_call(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    client = _client(gateway, gateway.team_key())
    marker = _marker()  # the fake is shared by the whole session
    system = f"You are terse. {marker}"
    messages = _user("Estimate me before you answer, please.")
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, system=system, messages=messages
    )
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    body = {"system": system, "messages": messages}
    assert entry["estimated_input_tokens"] == approximate_anthropic_prompt(body)
    assert entry["estimated_input_tokens"] >= entry["usage"]["input_tokens"]  # errs high
    # One provider call per message: no count_tokens round trip on the common path.
    sent = [r.path for r in fake_upstream.requests if marker in str(r.json)]
    assert sent == ["/v1/messages"]


def test_cache_reads_and_writes_land_in_their_own_buckets_at_their_own_prices(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=256,
        messages=_user("cached=1000 cache_write=2000 cache_write_1h=3000 remember this"),
    )
    usage = raw.parse().usage
    assert usage.cache_read_input_tokens == 1000
    assert usage.cache_creation_input_tokens == 5000

    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    # Anthropic's input_tokens already leaves out cache tokens: the input bucket is exactly it.
    assert entry["usage"] == {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": 1000,
        "cache_write_5m_tokens": 2000,
        "cache_write_1h_tokens": 3000,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": 0,
    }
    assert Decimal(entry["cost_usd"]) == _cost(
        usage.input_tokens, usage.output_tokens, cache_read=1000, write_5m=2000, write_1h=3000
    )
    breakdown = {name: Decimal(value) for name, value in entry["cost_breakdown_usd"].items()}
    assert breakdown == {
        "input": _cost(usage.input_tokens, 0),
        "cache_read": Decimal("0.0003"),  # 1,000 x $0.30 / 1M
        "cache_write": Decimal("0.0255"),  # 2,000 x $3.75 / 1M + 3,000 x $6 / 1M
        "output": _cost(0, usage.output_tokens),
        "request_fee": ZERO,
    }


def test_stream_helper_gives_the_final_message_and_the_ledger_agrees(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        messages=_user("cached=40 cache_write=60 one two three four five"),
    ) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "Echo: cached=40 cache_write=60 one two three four five"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["stream"] is True
    assert entry["usage_source"] == "provider"
    assert entry["first_token_at"] is not None
    assert entry["usage"]["input_tokens"] == final.usage.input_tokens
    assert entry["usage"]["cache_read_tokens"] == final.usage.cache_read_input_tokens == 40
    assert entry["usage"]["cache_write_5m_tokens"] == 60
    assert entry["usage"]["output_tokens"] == final.usage.output_tokens
    assert Decimal(entry["cost_usd"]) == _cost(
        final.usage.input_tokens, final.usage.output_tokens, cache_read=40, write_5m=60
    )


def test_a_stream_whose_body_ends_late_is_complete_and_keeps_its_connection(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    client = _client(gateway, gateway.team_key())
    marker = f"late-end-{uuid.uuid4().hex}"
    for sent in range(1, 4):
        with client.messages.stream(
            model=MODEL, max_tokens=256, messages=_user(f"{marker} body_end_delay_ms=150")
        ) as stream:
            assert stream.get_final_message().stop_reason == "end_turn"
        entries = gateway.wait_for_entries(sent)
        assert [e["status"] for e in entries] == ["ok"] * sent
        assert all(e["usage_source"] == "provider" for e in entries)
        time.sleep(0.5)  # the provider ends the body (150 ms): the connection is free again
    peers = {r.peer for r in fake_upstream.requests if marker in r.body.decode()}
    assert len(peers) == 1, peers


def test_raw_stream_events_reach_the_client_in_order(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=_user("alpha beta gamma"), stream=True
    ) as response:
        request_id = response.headers["x-ledger-request-id"]
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(response.parse())

    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Echo: alpha beta gamma"
    output_tokens = events[-2].usage.output_tokens
    input_tokens = events[0].message.usage.input_tokens

    entry = gateway.entry(request_id)
    assert entry["usage"]["input_tokens"] == input_tokens
    assert entry["usage"]["output_tokens"] == output_tokens
    assert Decimal(entry["cost_usd"]) == _cost(input_tokens, output_tokens)


def test_tool_use_is_relayed_and_priced_streaming_or_not(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    messages = _user("call_tool what is the weather")
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, messages=messages, tools=[WEATHER_TOOL]
    )
    message = raw.parse()
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", TOOL_ARGUMENTS)
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    # Tool definitions are part of the prompt, and of the (local, erring high) estimate.
    assert entry["estimated_input_tokens"] == approximate_anthropic_prompt(
        {"messages": messages, "tools": [WEATHER_TOOL]}
    )
    assert entry["estimated_input_tokens"] >= count_anthropic_input_tokens(
        {"messages": messages, "tools": [WEATHER_TOOL]}
    )
    assert entry["usage"]["input_tokens"] == message.usage.input_tokens
    assert entry["usage"]["output_tokens"] == message.usage.output_tokens > 0
    assert Decimal(entry["cost_usd"]) == _cost(
        message.usage.input_tokens, message.usage.output_tokens
    )

    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == TOOL_ARGUMENTS
    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["output_tokens"] == final.usage.output_tokens
    assert Decimal(entry["cost_usd"]) == _cost(final.usage.input_tokens, final.usage.output_tokens)


@pytest.mark.anyio
async def test_async_client_streams_and_non_streams(gateway: LiveServer) -> None:
    key = await anyio.to_thread.run_sync(gateway.team_key)
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    async with client:
        message = await client.messages.create(
            model=MODEL, max_tokens=64, messages=_user("async hello")
        )
        assert message.content[0].text == "Echo: async hello"
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=_user("async stream")
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Echo: async stream"
    entries = await anyio.to_thread.run_sync(lambda: gateway.wait_for_entries(2))
    assert sorted(e["stream"] for e in entries) == [False, True]
    assert all(e["status"] == "ok" for e in entries)
    streamed = next(e for e in entries if e["stream"])
    assert Decimal(streamed["cost_usd"]) == _cost(
        final.usage.input_tokens, final.usage.output_tokens
    )


def test_count_tokens_is_answered_and_recorded_at_no_cost(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    messages = _user("How many tokens is this sentence, exactly?")
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, messages=messages, system="be brief", tools=[WEATHER_TOOL]
    )
    counted = raw.parse()
    expected = count_anthropic_input_tokens(
        {"system": "be brief", "messages": messages, "tools": [WEATHER_TOOL]}
    )
    assert counted.input_tokens == expected

    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["endpoint"] == "count_tokens"
    assert entry["status"] == "ok"
    assert entry["http_status"] == 200
    assert entry["requested_model"] == MODEL
    assert entry["estimated_input_tokens"] == expected
    assert entry["usage"]["input_tokens"] == 0  # nothing was billed
    assert Decimal(entry["cost_usd"]) == ZERO


def test_stream_cut_mid_way_is_recorded_as_estimated(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    messages = _user("fault=cut_stream reply_words=40")
    received: list[str] = []
    with (
        pytest.raises((anthropic.APIError, httpx2.HTTPError)),
        client.messages.stream(model=MODEL, max_tokens=256, messages=messages) as stream,
    ):
        for piece in stream.text_stream:
            received.append(piece)
    assert received, "the first half of the stream reached the client"

    entry = gateway.wait_for_entries(1)[0]
    assert entry["status"] == "upstream_error"
    assert entry["stream"] is True
    assert entry["usage_source"] == "estimated"
    # message_start carried the provider's exact input count; the output is counted locally.
    assert entry["usage"]["input_tokens"] == count_anthropic_input_tokens({"messages": messages})
    assert entry["usage"]["output_tokens"] > 1
    assert Decimal(entry["cost_usd"]) == _entry_cost(entry) > 0
    assert entry["error"]


def test_seed_paths_accept_the_key_in_the_body(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    marker = _marker()
    messages = _user(f"seed {marker}")
    response = httpx.post(
        gateway.url + "/api/v7/llm/v1/messages",
        json={"model": MODEL, "key": key, "max_tokens": 100, "messages": messages},
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == f"Echo: seed {marker}"
    sent = next(
        r for r in fake_upstream.requests if r.path == "/v1/messages" and marker in str(r.json)
    )
    assert "key" not in sent.json
    assert key not in sent.body.decode()
    entry = gateway.entry(response.headers["x-ledger-request-id"])
    assert entry["status"] == "ok"
    assert entry["endpoint"] == "messages"
    usage = response.json()["usage"]
    assert Decimal(entry["cost_usd"]) == _cost(usage["input_tokens"], usage["output_tokens"])

    response = httpx.post(
        gateway.url + "/api/v7/llm/v1/messages/count_tokens",
        json={"model_id": MODEL, "key": key, "messages": messages},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"input_tokens": count_anthropic_input_tokens({"messages": messages})}
    entry = gateway.entry(response.headers["x-ledger-request-id"])
    assert entry["endpoint"] == "count_tokens"
    assert entry["requested_model"] == MODEL
    assert Decimal(entry["cost_usd"]) == ZERO


def test_key_works_in_x_api_key_or_bearer_and_never_reaches_the_provider(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    raw_marker, sdk_marker = _marker(), _marker()
    by_header = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 50, "messages": _user(raw_marker)},
        headers={"x-api-key": key},
    )
    assert by_header.status_code == 200, by_header.text
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=key, max_retries=0)
    raw = bearer.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=_user(sdk_marker)
    )
    assert raw.http_request.headers["authorization"] == f"Bearer {key}"
    assert raw.parse().content[0].text == f"Echo: {sdk_marker}"

    for marker, version in [
        (raw_marker, "2023-06-01"),  # none sent: Ledger fills in the default
        (sdk_marker, raw.http_request.headers["anthropic-version"]),  # the SDK's, forwarded
    ]:
        sent = [r for r in fake_upstream.requests if marker in str(r.json)]
        assert [r.path for r in sent] == ["/v1/messages"]
        for request in sent:
            assert request.headers["x-api-key"] == fake_upstream.api_key
            assert "authorization" not in request.headers
            assert request.headers["anthropic-version"] == version
            assert key not in str(request.headers)
    entries = gateway.wait_for_entries(2)
    assert [e["status"] for e in entries] == ["ok", "ok"]


def test_mock_provider_answers_claude_models_without_any_upstream(
    mock_gateway: LiveServer,
) -> None:
    client = _client(mock_gateway, mock_gateway.team_key())
    messages = _user("What does Ledger do?")
    expected_input = approximate_anthropic_prompt({"model": MODEL, "messages": messages})

    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=200, messages=messages)
    message = raw.parse()
    assert message.content[0].text
    assert message.usage.input_tokens == expected_input
    entry = mock_gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["provider"] == "mock"
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    assert entry["estimated_input_tokens"] == expected_input
    assert Decimal(entry["cost_usd"]) == _cost(expected_input, message.usage.output_tokens) > 0

    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens == expected_input

    with client.messages.stream(model=MODEL, max_tokens=200, messages=messages) as stream:
        request_id = stream.response.headers["x-ledger-request-id"]
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == message.content[0].text  # the mock's reply depends only on the prompt
    entry = mock_gateway.entry(request_id)
    assert entry["stream"] is True
    assert entry["usage_source"] == "provider"
    assert Decimal(entry["cost_usd"]) == _cost(final.usage.input_tokens, final.usage.output_tokens)

    endpoints = sorted(e["endpoint"] for e in mock_gateway.wait_for_entries(3))
    assert endpoints == ["count_tokens", "messages", "messages"]
