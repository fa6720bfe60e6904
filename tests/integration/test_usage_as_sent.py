"""Usage is read the way providers really send it (issue 18, section 3).

Anthropic streams spread usage over ``message_start`` and ``message_delta``: a ``null``
count there means "not given", an empty ``cache_creation`` split is no split, and the
5m/1h split survives a repeated total. OpenAI-compatible servers may use the Responses
API's names. Each case runs streamed and not where it can occur, on both databases.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.fake_upstream import count_openai_prompt_tokens, encoding_for_model
from tests.live import LiveServer

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4.1-mini"
MILLION = Decimal(1_000_000)
# claude-sonnet-4-5 per million tokens: $3 input, $0.30 cache read, $3.75 and $6 cache
# writes (5 minutes, 1 hour), $15 output. gpt-4.1-mini: $0.40 input, $0.10 cached, $1.60 out.
C_INPUT, C_READ, C_5M, C_1H, C_OUTPUT = (Decimal(p) for p in ("3", "0.30", "3.75", "6", "15"))
G_INPUT, G_CACHED, G_OUTPUT = Decimal("0.40"), Decimal("0.10"), Decimal("1.60")


def _claude_cost(usage: dict[str, int]) -> Decimal:
    return (
        usage["input_tokens"] * C_INPUT
        + usage["cache_read_tokens"] * C_READ
        + usage["cache_write_5m_tokens"] * C_5M
        + usage["cache_write_1h_tokens"] * C_1H
        + usage["output_tokens"] * C_OUTPUT
    ) / MILLION


def _ask_claude(gateway: LiveServer, text: str, *, stream: bool) -> tuple[Any, dict[str, Any]]:
    """One message through the official SDK; its usage as the SDK merged it, and the entry."""
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.team_key(), max_retries=0)
    messages: Any = [{"role": "user", "content": text}]
    if stream:
        with client.messages.stream(model=CLAUDE, max_tokens=100, messages=messages) as events:
            request_id = events.response.headers["x-ledger-request-id"]
            usage = events.get_final_message().usage
    else:
        raw = client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=100, messages=messages
        )
        request_id, usage = raw.headers["x-ledger-request-id"], raw.parse().usage
    return usage, gateway.entry(request_id)


def test_a_streamed_one_hour_write_keeps_its_price_when_message_delta_repeats_the_total(
    gateway: LiveServer,
) -> None:
    usage, entry = _ask_claude(gateway, "delta_usage=repeat cache_write_1h=5000 hi", stream=True)
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["cache_write_1h_tokens"] == 5000
    assert entry["usage"]["cache_write_5m_tokens"] == 0
    assert entry["usage"]["input_tokens"] == usage.input_tokens
    assert Decimal(entry["cost_usd"]) == _claude_cost(entry["usage"])


def test_null_counts_in_message_delta_keep_what_message_start_reported(
    gateway: LiveServer,
) -> None:
    # Issue 18: a null in message_delta overwrote message_start's counts with 0, and the
    # 5,000 one-hour writes were recorded as none ($0.010500 recorded, $0.046650 billed).
    usage, entry = _ask_claude(
        gateway, "delta_usage=null cache_write_1h=5000 cached=1000 hi", stream=True
    )
    # The SDK merges the same stream the same way: null is "not given".
    assert usage.cache_creation_input_tokens == 5000
    assert entry["usage_source"] == "provider"
    assert entry["usage"] == {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": 1000,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 5000,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": 0,
    }
    assert usage.input_tokens > 0
    assert Decimal(entry["cost_usd"]) == _claude_cost(entry["usage"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_empty_cache_creation_split_does_not_erase_the_reported_write_total(
    gateway: LiveServer, stream: bool
) -> None:
    # Issue 18: `cache_creation: {}` beside `cache_creation_input_tokens: 5000` was read
    # as no writes at all (5,000 writes -> 0).
    usage, entry = _ask_claude(gateway, "cache_split=empty cache_write=5000 hi", stream=stream)
    assert usage.cache_creation_input_tokens == 5000
    assert entry["usage_source"] == "provider"
    assert entry["usage"]["cache_write_5m_tokens"] == 5000  # a lone total: 5-minute writes
    assert entry["usage"]["cache_write_1h_tokens"] == 0
    assert Decimal(entry["cost_usd"]) == _claude_cost(entry["usage"])
    assert Decimal(entry["cost_usd"]) >= 5000 * C_5M / MILLION


def _ask_gpt(gateway: LiveServer, text: str, *, stream: bool) -> dict[str, Any]:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model=GPT, messages=[{"role": "user", "content": text}], stream=stream
    )
    parsed = raw.parse()
    if stream:
        for _ in parsed:
            pass
    return gateway.entry(raw.headers["x-ledger-request-id"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_usage_under_responses_names_is_priced_as_the_provider_reported_it(
    gateway: LiveServer, stream: bool
) -> None:
    # Issue 18: `input_tokens` / `output_tokens` were not read: 0 tokens, $0, "provider".
    text = "usage_names=responses cached=8 reasoning=7 reply_words=5"
    entry = _ask_gpt(gateway, text, stream=stream)
    prompt = count_openai_prompt_tokens(
        {"model": GPT, "messages": [{"role": "user", "content": text}]}
    )
    reply = len(encoding_for_model(GPT).encode_ordinary("word0 word1 word2 word3 word4"))
    assert entry["usage_source"] == "provider"
    assert entry["usage"] == {
        "input_tokens": prompt - 8,
        "cache_read_tokens": 8,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "output_tokens": reply + 7,
        "reasoning_tokens": 7,
    }
    expected = ((prompt - 8) * G_INPUT + 8 * G_CACHED + (reply + 7) * G_OUTPUT) / MILLION
    assert Decimal(entry["cost_usd"]) == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_string_count_under_responses_names_is_estimated_never_zero(
    gateway: LiveServer, stream: bool
) -> None:
    # `"output_tokens": "12"` is not a count: the entry is priced from Ledger's estimate.
    entry = _ask_gpt(gateway, "usage_names=responses usage=string reply_words=12", stream=stream)
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    assert entry["usage"]["output_tokens"] > 0
    assert Decimal(entry["cost_usd"]) > 0
    assert "not believed" in entry["error"]
