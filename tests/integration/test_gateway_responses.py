"""The OpenAI Responses API through Ledger, driven by the official ``openai`` SDK."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from ledger.tokens import count_text_tokens
from tests.fake_responses import count_responses_input_tokens
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer

MODEL = "gpt-4.1-mini"
# gpt-4.1-mini: $0.40 input, $0.10 cached input, $1.60 output per million tokens.
INPUT, CACHED, OUTPUT = Decimal("0.40"), Decimal("0.10"), Decimal("1.60")


def _cost(uncached: int, cached: int, output: int) -> Decimal:
    return (uncached * INPUT + cached * CACHED + output * OUTPUT) / Decimal(1_000_000)


def _client(gateway: LiveServer, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=key or gateway.team_key(), max_retries=0
    )


def test_a_response_is_relayed_and_recorded_once_at_the_exact_cost(gateway: LiveServer) -> None:
    raw = _client(gateway).responses.with_raw_response.create(
        model=MODEL, instructions="Be brief.", input="cached=3 reasoning=5 Hello there"
    )
    response = raw.parse()

    assert response.output_text == "Echo: cached=3 reasoning=5 Hello there"
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["endpoint"] == "responses"
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    usage = response.usage
    assert usage is not None
    assert entry["usage"]["input_tokens"] == usage.input_tokens - 3
    assert entry["usage"]["cache_read_tokens"] == 3
    assert entry["usage"]["output_tokens"] == usage.output_tokens
    assert entry["usage"]["reasoning_tokens"] == 5
    expected = _cost(usage.input_tokens - 3, 3, usage.output_tokens)
    assert Decimal(entry["cost_usd"]) == expected
    assert Decimal(raw.headers["x-ledger-cost-usd"]) == expected
    assert entry["estimated_input_tokens"] > 0
    assert len(gateway.entries()) == 1


def test_a_streamed_response_is_relayed_event_for_event_and_priced_from_its_last_event(
    gateway: LiveServer,
) -> None:
    client = _client(gateway)
    with client.responses.with_streaming_response.create(
        model=MODEL, input="Stream this answer please", stream=True
    ) as raw:
        request_id = raw.headers["x-ledger-request-id"]
        events = [event for event in raw.parse()]

    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in types
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Echo: Stream this answer please"
    usage = events[-1].response.usage
    entry = gateway.entry(request_id)
    assert entry["stream"] is True
    assert entry["status"] == "ok"
    assert entry["usage_source"] == "provider"
    assert Decimal(entry["cost_usd"]) == _cost(usage.input_tokens, 0, usage.output_tokens)


def test_a_cut_stream_is_recorded_as_estimated_from_what_was_seen_never_zero(
    gateway: LiveServer,
) -> None:
    body = {"model": MODEL, "input": "fault=cut_stream reply_words=40", "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            gateway.openai_base_url + "/responses",
            json=body,
            headers={"authorization": f"Bearer {gateway.team_key()}"},
        ) as response,
    ):
        request_id = response.headers["x-ledger-request-id"]
        seen = b"".join(response.iter_bytes())
    assert b"response.completed" not in seen  # the client saw the stream end early
    entry = gateway.entry(request_id)
    assert entry["status"] == "upstream_error"
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    whole = count_text_tokens(MODEL, " ".join(f"word{i}" for i in range(40)))
    assert 0 < entry["usage"]["output_tokens"] < whole  # about half of it was seen
    assert Decimal(entry["cost_usd"]) > 0


def test_the_prompt_is_estimated_from_instructions_input_items_and_tools(
    gateway: LiveServer,
) -> None:
    small = {"model": MODEL, "input": "hi"}
    big = {
        "model": MODEL,
        "instructions": "You are a careful assistant. " * 20,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "look " * 50}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "result " * 30},
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
        ],
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }
    client = _client(gateway)
    estimates = []
    for body in (small, big):
        raw = client.responses.with_raw_response.create(**body)
        estimates.append(
            gateway.entry(raw.headers["x-ledger-request-id"])["estimated_input_tokens"]
        )
    assert estimates[0] < 20
    # Instructions (~120), texts (~80), an image (765 at high detail), the tool.
    assert estimates[1] > count_responses_input_tokens(big) + 765


def test_ledger_with_no_providers_answers_responses_from_its_mock(mock_gateway: LiveServer) -> None:
    client = _client(mock_gateway)
    raw = client.responses.with_raw_response.create(model=MODEL, input="Say something")
    assert raw.parse().output_text
    with client.responses.stream(model=MODEL, input="Say something else") as stream:
        final = stream.get_final_response()
    assert final.output_text
    entries = mock_gateway.entries()
    assert [e["endpoint"] for e in entries] == ["responses", "responses"]
    assert all(e["status"] == "ok" and e["usage_source"] == "provider" for e in entries)


def test_retrieve_input_items_input_tokens_and_delete_are_proxied_and_recorded_at_zero(
    gateway: LiveServer,
) -> None:
    client = _client(gateway)
    created = client.responses.create(model=MODEL, input="Keep this one")

    retrieved = client.responses.with_raw_response.retrieve(created.id)
    assert retrieved.parse().output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    counted = client.responses.input_tokens.count(model=MODEL, input="Keep this one")
    assert counted.input_tokens == count_responses_input_tokens({"input": "Keep this one"})
    deleted = client.responses.with_raw_response.delete(created.id)
    assert deleted.http_request.method == "DELETE"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)

    entries = {e["endpoint"]: e for e in gateway.entries()}
    assert len(gateway.entries()) == 6  # one each, the refused retrieve too
    for name in ("responses.retrieve", "responses.input_items", "responses.input_tokens"):
        assert Decimal(entries[name]["cost_usd"]) == 0
    assert gateway.entry(deleted.headers["x-ledger-request-id"])["status"] == "ok"
    assert gateway.entry(retrieved.headers["x-ledger-request-id"])["http_status"] == 200
    assert Decimal(entries["responses"]["cost_usd"]) > 0


def _hard_budget(gateway: LiveServer, limit_usd: str) -> None:
    gateway.team_key()  # the team exists once it has a key
    response = gateway.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": limit_usd, "name": "cap"}
    )
    assert response.status_code == 201, response.text


def test_a_hard_budget_refuses_a_response_before_forwarding(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    _hard_budget(gateway, "0.000001")
    fake_upstream.reset()
    with pytest.raises(openai.APIStatusError) as refused:
        _client(gateway).responses.create(model=MODEL, input="word " * 500)
    assert refused.value.status_code == 429
    assert not [r for r in fake_upstream.requests if r.path == "/v1/responses"]
    (entry,) = gateway.entries()
    assert entry["status"] == "blocked" and entry["endpoint"] == "responses"


def test_under_a_hard_budget_ledger_caps_a_responses_output_with_max_output_tokens(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    _hard_budget(gateway, "5")
    fake_upstream.reset()
    _client(gateway).responses.create(model=MODEL, input="Hello")
    (sent,) = [r for r in fake_upstream.requests if r.path == "/v1/responses"]
    assert sent.json["max_output_tokens"] == 4096  # LEDGER_DEFAULT_MAX_OUTPUT_TOKENS
    assert "max_completion_tokens" not in sent.json


def test_previous_response_id_reserves_the_stated_context_bound(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    client = _client(gateway)
    first_raw = client.responses.with_raw_response.create(model=MODEL, input="Hello")
    first = first_raw.parse()
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="And then?", previous_response_id=first.id
    )
    plain = gateway.entry(first_raw.headers["x-ledger-request-id"])["estimated_input_tokens"]
    chained = gateway.entry(raw.headers["x-ledger-request-id"])["estimated_input_tokens"]
    # 200,000 tokens: LEDGER_RESPONSES_CONTEXT_BOUND_TOKENS, the README's stated bound.
    assert chained - plain >= 200_000 - 10
    # A hard budget that covers a plain request cannot cover the unseen context.
    _hard_budget(gateway, "0.02")
    client.responses.create(model=MODEL, input="Hello")
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model=MODEL, input="And then?", previous_response_id=first.id)
    assert refused.value.status_code == 429


def test_the_async_sdk_streams_and_parses_responses_through_ledger(gateway: LiveServer) -> None:
    import asyncio

    from pydantic import BaseModel

    class City(BaseModel):
        city: str

    async def run() -> tuple[str, str, City | None]:
        client = openai.AsyncOpenAI(
            base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
        )
        created = await client.responses.create(model=MODEL, input="async hello")
        async with client.responses.stream(model=MODEL, input="async stream") as stream:
            final = await stream.get_final_response()
        tools = [{"type": "function", "name": "City", "parameters": City.model_json_schema()}]
        parsed = await client.responses.parse(
            model=MODEL, input="call_tool where?", tools=tools, text_format=City
        )
        calls = [item for item in parsed.output if item.type == "function_call"]
        await client.close()
        return created.output_text, final.output_text, City.model_validate_json(calls[0].arguments)

    created, streamed, city = asyncio.run(run())
    assert created == "Echo: async hello"
    assert streamed == "Echo: async stream"
    assert city == City(city="Paris")
    entries = gateway.entries()
    assert len(entries) == 3 and all(e["status"] == "ok" for e in entries)
    assert all(Decimal(e["cost_usd"]) > 0 for e in entries)


def test_a_streamed_function_call_as_codex_makes_it_relays_every_event(
    gateway: LiveServer,
) -> None:
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}}]
    with _client(gateway).responses.stream(
        model=MODEL, input=[{"role": "user", "content": "call_tool"}], tools=tools
    ) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    assert types[-1] == "response.completed"
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "shell"
    (entry,) = gateway.entries()
    assert entry["usage_source"] == "provider" and entry["usage"]["output_tokens"] > 0


def test_built_in_web_search_calls_are_relayed_and_counted(gateway: LiveServer) -> None:
    raw = _client(gateway).responses.with_raw_response.create(
        model=MODEL, input="web_search_calls=2 weather?", tools=[{"type": "web_search"}]
    )
    response = raw.parse()
    assert [item.type for item in response.output][:2] == ["web_search_call"] * 2
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["status"] == "ok" and entry["usage_source"] == "provider"
