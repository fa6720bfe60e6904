"""Service tiers, tool fees, cache writes, reasoning and provider cost, priced from what the
provider's response reports: against the fake provider, streamed and not, on both databases."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from tests.live import LiveServer

NANO = Decimal("0.000000001")


def _openai(gateway: LiveServer, prompt: str, *, stream: bool, **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": prompt}], **extra}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {gateway.team_key()}"}
    with httpx.Client(timeout=30) as client:
        response = client.post(
            gateway.openai_base_url + "/chat/completions", json=body, headers=headers
        )
        assert response.status_code == 200, response.text
    return gateway.entry(response.headers["x-ledger-request-id"])


def _nanos(entry: dict[str, Any], key: str = "cost_usd") -> int:
    return int(Decimal(entry[key]) / NANO)


# gpt-5: $1.25 input and $10 output per million: 1,250 and 10,000 nanos a token.
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize(
    ("tier", "input_nanos", "output_nanos"),
    [("flex", 625, 5_000), ("priority", 2_500, 20_000), ("default", 1_250, 10_000)],
)
def test_openai_service_tier_in_the_response_prices_the_entry(
    gateway: LiveServer, stream: bool, tier: str, input_nanos: int, output_nanos: int
) -> None:
    # Before: flex was recorded at the list price (2x what is billed), priority at half.
    entry = _openai(gateway, f"service_tier={tier} hello", stream=stream)

    usage = entry["usage"]
    assert _nanos(entry) == (
        usage["input_tokens"] * input_nanos + usage["output_tokens"] * output_nanos
    )
    assert entry["service_tier"] == tier
    if tier != "default":
        factor = "1/2" if tier == "flex" else "2"
        assert entry["pricing_notes"] == [f"service_tier={tier} x{factor}"]


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_openai_cache_writes_are_their_own_bucket(gateway: LiveServer, stream: bool) -> None:
    entry = _openai(gateway, "cache_write=4 prompt_tokens=10 hello", stream=stream)

    usage = entry["usage"]
    assert (usage["input_tokens"], usage["cache_write_5m_tokens"]) == (6, 4)
    # gpt-5 has no write price: a write costs what input does.
    assert _nanos(entry) == 10 * 1_250 + usage["output_tokens"] * 10_000


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_reasoning_reported_beside_completion_tokens_is_billed_as_output(
    gateway: LiveServer, stream: bool
) -> None:
    inside = _openai(gateway, "reasoning=50 reply_words=3", stream=stream)
    outside = _openai(gateway, "reasoning=50 reply_words=3 reasoning_outside", stream=stream)

    assert outside["usage"]["output_tokens"] == inside["usage"]["output_tokens"]
    assert outside["usage"]["reasoning_tokens"] == 50
    assert outside["cost_breakdown_usd"]["output"] == inside["cost_breakdown_usd"]["output"]
    assert _nanos(outside) == (
        outside["usage"]["input_tokens"] * 1_250 + outside["usage"]["output_tokens"] * 10_000
    )


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_provider_reported_cost_is_kept_beside_ledgers_to_the_nano(
    gateway: LiveServer, stream: bool
) -> None:
    entry = _openai(gateway, "cost=0.0000123456789 prompt_tokens=10 hello", stream=stream)

    assert entry["provider_cost_usd"] == "0.000012346"  # rounded half up at the nano
    assert _nanos(entry, "cost_difference_usd") == _nanos(entry) - 12_346


# claude-sonnet-4-5: web search $10 per 1,000 requests (10,000,000 nanos a search).
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_anthropic_web_searches_are_billed_per_call(gateway: LiveServer, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.team_key(), max_retries=0)
    messages = [{"role": "user", "content": "web_searches=3 find it"}]
    plain = [{"role": "user", "content": "find it"}]
    if stream:
        with client.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages, stream=True
        ) as response:
            request_id = response.headers["x-ledger-request-id"]
            list(response.iter_lines())
        with client.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=plain, stream=True
        ) as response:
            plain_id = response.headers["x-ledger-request-id"]
            list(response.iter_lines())
    else:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages
        )
        request_id = raw.headers["x-ledger-request-id"]
        plain_raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=plain
        )
        plain_id = plain_raw.headers["x-ledger-request-id"]
    entry, without = gateway.entry(request_id), gateway.entry(plain_id)

    assert entry["tool_fees_usd"] == "0.030000000"
    assert entry["pricing_notes"] == ["web_search 3 x $0.010000000"]
    token_cost = _nanos(entry) - 30_000_000
    expected = entry["usage"]["input_tokens"] * 3_000 + entry["usage"]["output_tokens"] * 15_000
    assert token_cost == expected
    assert without["tool_fees_usd"] == "0.000000000"


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_anthropic_batch_tier_is_half_price(gateway: LiveServer, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.team_key(), max_retries=0)
    messages = [{"role": "user", "content": "service_tier=batch hello"}]
    if stream:
        with client.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages, stream=True
        ) as response:
            request_id = response.headers["x-ledger-request-id"]
            list(response.iter_lines())
    else:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages
        )
        request_id = raw.headers["x-ledger-request-id"]
    entry = gateway.entry(request_id)

    usage = entry["usage"]
    assert _nanos(entry) == usage["input_tokens"] * 1_500 + usage["output_tokens"] * 7_500
    assert entry["service_tier"] == "batch"
