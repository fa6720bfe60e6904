"""The OpenAI Responses API through Ledger, driven by the official ``openai`` SDK."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai

from ledger.tokens import count_text_tokens
from tests.fake_responses import count_responses_input_tokens
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
