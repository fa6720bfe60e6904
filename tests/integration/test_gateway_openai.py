"""The OpenAI-compatible gateway, driven by the official ``openai`` SDK against a live server."""

from __future__ import annotations

import re
import time
from datetime import datetime
from decimal import Decimal

import anyio
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream, count_openai_prompt_tokens
from tests.live import LiveServer

MODEL = "gpt-4.1-mini"
# gpt-4.1-mini: $0.40 input, $0.10 cached input, $1.60 output per million tokens.
INPUT, CACHED, OUTPUT = Decimal("0.40"), Decimal("0.10"), Decimal("1.60")


def _cost(uncached: int, cached: int, output: int) -> Decimal:
    return (uncached * INPUT + cached * CACHED + output * OUTPUT) / Decimal(1_000_000)


def _client(gateway: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)


def test_non_streaming_completion_is_relayed_and_recorded_with_exact_cost(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    messages = [{"role": "user", "content": "Hello there, how are you today?"}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    completion = raw.parse()

    assert completion.choices[0].message.content == "Echo: Hello there, how are you today?"
    request_id = raw.headers["x-ledger-request-id"]
    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["http_status"] == 200
    assert entry["team"] == "research"
    assert entry["requested_model"] == MODEL
    assert entry["provider"] == "openai"
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["input_tokens"] == completion.usage.prompt_tokens
    assert entry["usage"]["output_tokens"] == completion.usage.completion_tokens
    expected = _cost(completion.usage.prompt_tokens, 0, completion.usage.completion_tokens)
    assert Decimal(entry["cost_usd"]) == expected
    assert Decimal(raw.headers["x-ledger-cost-usd"]) == expected
    # The estimate is made before forwarding and kept beside the provider's count.
    assert entry["estimated_input_tokens"] == count_openai_prompt_tokens(
        {"model": MODEL, "messages": messages}
    )


def test_request_ids_sort_in_the_order_requests_started(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    ids = []
    for number in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"question {number}"}]
        )
        ids.append(raw.headers["x-ledger-request-id"])
        time.sleep(0.002)  # ids carry the millisecond they were made in
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", request_id) for request_id in ids), ids
    assert ids == sorted(ids)
    # The millisecond comes first: an id says when its request started.
    started = datetime.fromisoformat(gateway.entry(ids[0])["started_at"])
    assert abs(int(ids[0][4:16], 16) - started.timestamp() * 1000) < 1000


def test_cached_and_reasoning_tokens_land_in_separate_buckets(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "cached=5 reasoning=7 please think"}],
    )
    usage = raw.parse().usage
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    # OpenAI's prompt_tokens includes the cached ones; Ledger's input bucket does not.
    assert entry["usage"]["cache_read_tokens"] == 5
    assert entry["usage"]["input_tokens"] == usage.prompt_tokens - 5
    assert entry["usage"]["reasoning_tokens"] == 7
    assert entry["usage"]["output_tokens"] == usage.completion_tokens
    assert Decimal(entry["cost_usd"]) == _cost(usage.prompt_tokens - 5, 5, usage.completion_tokens)


def test_everything_the_client_sends_reaches_the_provider_unchanged(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    client = _client(gateway, key)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    marker = "marker-7d1f"
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief", "name": "sys"},
            {"role": "user", "content": f"call_tool {marker}"},
        ],
        tools=tools,
        tool_choice="auto",
        temperature=0.3,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        stop=["\n\n"],
        response_format={"type": "json_object"},
        metadata={"purpose": "test"},
        user="alice@example.com",
        max_completion_tokens=300,
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert completion.choices[0].finish_reason == "tool_calls"

    sent = next(r for r in fake_upstream.requests if marker in str(r.json))
    assert sent.json["tools"] == tools
    for field, value in {
        "tool_choice": "auto",
        "temperature": 0.3,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ["\n\n"],
        "response_format": {"type": "json_object"},
        "metadata": {"purpose": "test"},
        "user": "alice@example.com",
        "max_completion_tokens": 300,
    }.items():
        assert sent.json[field] == value, field
    # The provider sees the provider key, never the client's key.
    assert sent.headers["authorization"] == f"Bearer {fake_upstream.api_key}"
    assert key not in str(sent.headers)

    entry = gateway.entries()[0]
    assert entry["end_user"] == "alice@example.com"


def test_stream_is_relayed_and_the_injected_usage_chunk_is_hidden(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
    ) as response:
        request_id = response.headers["x-ledger-request-id"]
        chunks = list(response.parse())
    # The client did not ask for usage, so it gets none, exactly as from OpenAI.
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Echo: one two three four five"

    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["stream"] is True
    assert entry["usage_source"] == "provider"  # Ledger asked the provider for usage itself
    assert entry["usage"]["output_tokens"] > 0
    assert entry["first_token_at"] is not None
    assert Decimal(entry["cost_usd"]) > 0


def test_a_usage_chunk_with_an_empty_delta_is_hidden_too(gateway: LiveServer) -> None:
    # LiteLLM sends the usage chunk with choices [{"index": 0, "delta": {}}], not [].
    client = _client(gateway, gateway.team_key())
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "usage_with_empty_delta one two"}],
        stream=True,
    ) as response:
        request_id = response.headers["x-ledger-request-id"]
        chunks = list(response.parse())
    assert all(chunk.usage is None for chunk in chunks)
    # Every chunk the client sees says something: content, a role or the finish.
    assert all(c.choices[0].delta.content or c.choices[0].finish_reason for c in chunks[1:])
    assert chunks[-1].choices[0].finish_reason == "stop"

    entry = gateway.entry(request_id)
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["output_tokens"] > 0


def test_stream_with_include_usage_keeps_the_usage_chunk(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    entries = gateway.wait_for_entries(1)
    assert entries[0]["usage"]["output_tokens"] == usage.completion_tokens
    assert Decimal(entries[0]["cost_usd"]) == _cost(usage.prompt_tokens, 0, usage.completion_tokens)


def test_a_stream_the_client_closes_on_done_is_recorded_complete(gateway: LiveServer) -> None:
    # The sync SDK closes its connection the moment it reads [DONE], often before the
    # response's last bytes: the stream was complete all the same, and is recorded so.
    client = _client(gateway, gateway.team_key())
    for index in range(20):
        for _ in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"closing {index}"}], stream=True
        ):
            pass
    entries = gateway.wait_for_entries(20)
    assert len(entries) == 20
    assert [e["status"] for e in entries] == ["ok"] * 20
    assert all(e["usage_source"] == "provider" for e in entries)


def test_a_stream_whose_body_ends_late_keeps_its_provider_connection(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    # A provider may end the body a moment after the last event; the client is not kept
    # waiting for it, and the connection still goes back to the pool rather than closed.
    client = _client(gateway, gateway.team_key())
    marker = f"late-end-{time.monotonic_ns()}"
    for sent in range(1, 5):
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"{marker} body_end_delay_ms=150"}],
                stream=True,
            )
        )
        assert chunks
        # Recorded at the last event, before the body has ended.
        entries = gateway.wait_for_entries(sent)
        assert [e["status"] for e in entries] == ["ok"] * sent
        time.sleep(0.5)  # the provider ends the body (150 ms): the connection is free again
    peers = {r.peer for r in fake_upstream.requests if marker in r.body.decode()}
    assert len(peers) == 1, peers


@pytest.mark.anyio
async def test_async_client_streams_and_non_streams(gateway: LiveServer) -> None:
    key = await anyio.to_thread.run_sync(gateway.team_key)
    client = openai.AsyncOpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "async hello"}]
        )
        assert completion.choices[0].message.content == "Echo: async hello"
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Echo: async stream"
    entries = await anyio.to_thread.run_sync(lambda: gateway.wait_for_entries(2))
    assert sorted(e["stream"] for e in entries) == [False, True]
    assert all(e["status"] == "ok" for e in entries)


def test_stream_cut_mid_way_is_recorded_as_estimated(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    received: list[str] = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "fault=cut_stream reply_words=40"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert received, "the first half of the stream reached the client"
    entry = gateway.wait_for_entries(1)[0]
    assert entry["status"] == "upstream_error"
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    assert entry["usage"]["output_tokens"] > 0
    assert Decimal(entry["cost_usd"]) > 0  # never $0 for a stream that was paid for


def test_seed_path_accepts_model_id_and_key_in_the_body(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    response = httpx.post(
        gateway.url + "/api/v7/llm/chat/completions",
        json={
            "model_id": MODEL,
            "key": key,
            "messages": [{"role": "user", "content": "seed marker-91ab"}],
            "max_tokens": 1000,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: seed marker-91ab"
    sent = next(r for r in fake_upstream.requests if "marker-91ab" in str(r.json))
    assert sent.json["model"] == MODEL
    assert "key" not in sent.json and "model_id" not in sent.json
    entry = gateway.entry(response.headers["x-ledger-request-id"])
    assert entry["status"] == "ok"


def test_models_are_listed_for_a_valid_key(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    names = {model.id for model in client.models.list()}
    assert {"gpt-4.1-mini", "gpt-4o", "claude-sonnet-4-5"} <= names
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-ledger-wrong").models.list()
