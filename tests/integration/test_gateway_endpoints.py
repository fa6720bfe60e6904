"""Embeddings, legacy completions, model retrieval and unknown routes, driven by the SDKs.

Each request a valid key makes leaves one ledger entry and an ``x-ledger-request-id``:
those Ledger forwards at the exact cost of the provider's usage, those it answers itself
(models) or refuses (a path it does not serve) at $0.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from decimal import Decimal

import anthropic
import anyio
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream, count_text_input_tokens
from tests.live import LiveServer, gateway_settings

EMBEDDING = "text-embedding-3-small"
INSTRUCT = "gpt-3.5-turbo-instruct"
# OpenAI's list prices (USD per million tokens), as the genai-prices catalog has them.
EMBEDDING_INPUT = Decimal("0.02")
INSTRUCT_INPUT, INSTRUCT_OUTPUT = Decimal("1.50"), Decimal("2.00")


@pytest.fixture
def server(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    settings = gateway_settings(database_url, fake_upstream)
    with LiveServer(settings) as live:
        yield live


def _client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)


def _per_million(tokens: int, price: Decimal) -> Decimal:
    return tokens * price / Decimal(1_000_000)


@pytest.mark.parametrize(
    "given",
    [
        "The quick brown fox jumps over the lazy dog",
        ["first sentence to embed", "and a second, rather longer, sentence to embed"],
        [1820, 25, 9339, 1101, 13],
        [[1820, 25], [9339, 1101, 13, 42]],
    ],
    ids=["string", "strings", "token_array", "token_arrays"],
)
def test_embeddings_are_relayed_and_priced_per_input_token(
    server: LiveServer, given: object
) -> None:
    raw = _client(server, server.team_key()).embeddings.with_raw_response.create(
        model=EMBEDDING, input=given
    )
    result = raw.parse()
    expected_inputs = (
        len(given) if isinstance(given, list) and isinstance(given[0], str | list) else 1
    )
    assert len(result.data) == expected_inputs
    tokens = count_text_input_tokens(EMBEDDING, given)
    assert result.usage.prompt_tokens == tokens
    entry = server.entry(raw.headers["x-ledger-request-id"])
    assert (entry["status"], entry["endpoint"], entry["usage_source"]) == (
        "ok",
        "embeddings",
        "provider",
    )
    assert entry["usage"]["input_tokens"] == tokens
    assert entry["usage"]["output_tokens"] == 0
    # Ledger's own tiktoken estimate, made before forwarding, agrees with the provider.
    assert entry["estimated_input_tokens"] == tokens
    assert Decimal(entry["cost_usd"]) == _per_million(tokens, EMBEDDING_INPUT)
    assert Decimal(raw.headers["x-ledger-cost-usd"]) == Decimal(entry["cost_usd"])


def test_base64_embeddings_reach_the_sdk_as_vectors(server: LiveServer) -> None:
    # The SDK asks for base64 by default (and decodes it): the bytes pass through unchanged.
    response = httpx.post(
        server.openai_base_url + "/embeddings",
        headers={"authorization": f"Bearer {server.team_key()}"},
        json={"model": EMBEDDING, "input": "hello", "encoding_format": "base64"},
    )
    assert response.status_code == 200, response.text
    vector = struct.unpack("<8f", base64.b64decode(response.json()["data"][0]["embedding"]))
    assert len(vector) == 8


def test_embeddings_without_usage_are_recorded_from_the_estimate(server: LiveServer) -> None:
    text = "fault=no_usage please embed these words"
    raw = _client(server, server.team_key()).embeddings.with_raw_response.create(
        model=EMBEDDING, input=text
    )
    entry = server.entry(raw.headers["x-ledger-request-id"])
    tokens = count_text_input_tokens(EMBEDDING, text)
    assert (entry["usage_source"], entry["usage"]["input_tokens"]) == ("estimated", tokens)
    assert Decimal(entry["cost_usd"]) == _per_million(tokens, EMBEDDING_INPUT)


def test_an_empty_embeddings_input_is_refused_in_openai_shape_and_recorded(
    server: LiveServer,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _client(server, server.team_key()).embeddings.create(model=EMBEDDING, input=[])
    assert refused.value.body["param"] == "input"
    entry = server.entry(refused.value.response.headers["x-ledger-request-id"])
    assert (entry["status"], Decimal(entry["cost_usd"])) == ("invalid_request", 0)


def test_async_embeddings_are_recorded(server: LiveServer) -> None:
    key = server.team_key()

    async def embed() -> str:
        async with openai.AsyncOpenAI(
            base_url=server.openai_base_url, api_key=key, max_retries=0
        ) as client:
            raw = await client.embeddings.with_raw_response.create(model=EMBEDDING, input="hi")
            return raw.headers["x-ledger-request-id"]

    entry = server.entry(anyio.run(embed))
    assert entry["status"] == "ok" and Decimal(entry["cost_usd"]) > 0


def test_legacy_completion_is_relayed_and_recorded_with_exact_cost(server: LiveServer) -> None:
    prompt = "Say this is a test of the legacy endpoint"
    raw = _client(server, server.team_key()).completions.with_raw_response.create(
        model=INSTRUCT, prompt=prompt, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].text == "Echo: Say this is a test of the legacy"
    entry = server.entry(raw.headers["x-ledger-request-id"])
    usage = completion.usage
    assert (entry["status"], entry["endpoint"]) == ("ok", "completions")
    assert entry["estimated_input_tokens"] == usage.prompt_tokens
    assert (entry["usage"]["input_tokens"], entry["usage"]["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert Decimal(entry["cost_usd"]) == _per_million(
        usage.prompt_tokens, INSTRUCT_INPUT
    ) + _per_million(usage.completion_tokens, INSTRUCT_OUTPUT)


def test_streamed_legacy_completion_gets_the_stream_it_asked_for_and_is_priced(
    server: LiveServer, fake_upstream: FakeUpstream
) -> None:
    prompt = "stream these words back to me"
    with _client(server, server.team_key()).completions.with_streaming_response.create(
        model=INSTRUCT, prompt=prompt, stream=True, max_tokens=50
    ) as response:
        request_id = response.headers["x-ledger-request-id"]
        chunks = list(response.parse())
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text == "Echo: stream these words back to me"
    # Ledger asked for the usage chunk on the client's behalf, and kept it from the client.
    assert all(chunk.usage is None for chunk in chunks)
    assert fake_upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    entry = server.entry(request_id)
    prompt_tokens = count_text_input_tokens(INSTRUCT, prompt)
    assert (entry["status"], entry["stream"], entry["usage_source"]) == ("ok", True, "provider")
    assert entry["usage"]["input_tokens"] == prompt_tokens
    output = entry["usage"]["output_tokens"]
    assert output > 0
    assert Decimal(entry["cost_usd"]) == _per_million(prompt_tokens, INSTRUCT_INPUT) + (
        _per_million(output, INSTRUCT_OUTPUT)
    )


def test_async_streamed_legacy_completion_is_recorded(server: LiveServer) -> None:
    key = server.team_key()

    async def complete() -> tuple[str, str]:
        async with (
            openai.AsyncOpenAI(
                base_url=server.openai_base_url, api_key=key, max_retries=0
            ) as client,
            client.completions.with_streaming_response.create(
                model=INSTRUCT,
                prompt="async words",
                stream=True,
                stream_options={"include_usage": True},
            ) as response,
        ):
            text = ""
            async for chunk in await response.parse():
                text += "".join(choice.text for choice in chunk.choices)
            return response.headers["x-ledger-request-id"], text

    request_id, text = anyio.run(complete)
    assert text == "Echo: async words"
    entry = server.entry(request_id)
    assert (entry["status"], entry["usage_source"]) == ("ok", "provider")
    assert Decimal(entry["cost_usd"]) > 0


def test_cut_completion_stream_is_recorded_as_estimated_never_free(server: LiveServer) -> None:
    client = _client(server, server.team_key())
    with client.completions.with_streaming_response.create(
        model=INSTRUCT, prompt="fault=cut_stream reply_words=20 go", stream=True, max_tokens=100
    ) as response:
        request_id = response.headers["x-ledger-request-id"]
        # Ledger tells the client in its own protocol that the provider broke off.
        with pytest.raises(openai.APIError, match="broke the connection"):
            list(response.parse())
    entry = server.entry(request_id)
    assert entry["usage_source"] == "estimated"
    assert Decimal(entry["cost_usd"]) > 0


def test_models_retrieve_answers_in_openai_shape_and_is_recorded(server: LiveServer) -> None:
    client = _client(server, server.team_key())
    raw = client.models.with_raw_response.retrieve(INSTRUCT)
    model = raw.parse()
    assert (model.id, model.object, model.owned_by) == (INSTRUCT, "model", "openai")
    entry = server.entry(raw.headers["x-ledger-request-id"])
    assert (entry["endpoint"], entry["requested_model"], Decimal(entry["cost_usd"])) == (
        "models.retrieve",
        INSTRUCT,
        0,
    )
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert server.entry(missing.value.response.headers["x-ledger-request-id"])["http_status"] == 404


def test_async_models_retrieve_answers(server: LiveServer) -> None:
    key = server.team_key()

    async def retrieve() -> str:
        async with openai.AsyncOpenAI(
            base_url=server.openai_base_url, api_key=key, max_retries=0
        ) as client:
            return (await client.models.retrieve(EMBEDDING)).id

    assert anyio.run(retrieve) == EMBEDDING


def test_anthropic_models_retrieve_answers_in_anthropic_shape(server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key=server.team_key(), max_retries=0)
    raw = client.models.with_raw_response.retrieve("claude-sonnet-4-5")
    model = raw.parse()
    assert (model.id, model.type) == ("claude-sonnet-4-5", "model")
    assert server.entry(raw.headers["x-ledger-request-id"])["status"] == "ok"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("claude-nonexistent")
    assert missing.value.body["error"]["type"] == "not_found_error"


def test_model_list_is_recorded_too(server: LiveServer) -> None:
    raw = _client(server, server.team_key()).models.with_raw_response.list()
    assert EMBEDDING in {model.id for model in raw.parse()}
    assert server.entry(raw.headers["x-ledger-request-id"])["endpoint"] == "models.list"


@pytest.mark.parametrize(
    ("method", "path", "headers", "shape"),
    [
        ("GET", "/v1/files", {}, "openai"),
        ("POST", "/v1/batches", {}, "openai"),
        ("DELETE", "/v1/assistants/asst_1", {}, "openai"),
        ("POST", "/v1/messages/batches", {"anthropic-version": "2023-06-01"}, "anthropic"),
        ("GET", "/v1/organizations/usage", {"anthropic-version": "2023-06-01"}, "anthropic"),
    ],
)
def test_an_unserved_path_with_a_valid_key_is_refused_404_and_recorded(
    server: LiveServer, method: str, path: str, headers: dict[str, str], shape: str
) -> None:
    key = server.team_key()
    response = httpx.request(
        method,
        server.url + path,
        headers={"authorization": f"Bearer {key}", **headers},
        json={"model": "x"} if method == "POST" else None,
    )
    assert response.status_code == 404
    error = response.json()
    if shape == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    else:
        assert error["error"]["type"] == "invalid_request_error"
    assert path in (error["error"]["message"])
    entry = server.entry(response.headers["x-ledger-request-id"])
    assert (entry["status"], entry["http_status"], entry["endpoint"]) == (
        "invalid_request",
        404,
        "unrouted",
    )
    assert Decimal(entry["cost_usd"]) == 0


def test_an_unserved_path_without_a_valid_key_is_refused_401_and_not_recorded(
    server: LiveServer,
) -> None:
    response = httpx.get(server.url + "/v1/files", headers={"authorization": "Bearer sk-nope"})
    assert response.status_code == 401
    assert "x-ledger-request-id" not in response.headers


@pytest.fixture
def mock_server(database_url: str) -> Iterator[LiveServer]:
    """No providers configured: the built-in mock answers, as on a first ``ledger serve``."""
    from ledger.config import Settings

    settings = Settings(database_url=database_url, admin_key="sk-admin-test-key")
    with LiveServer(settings) as live:
        yield live


def test_the_built_in_mock_serves_embeddings_and_legacy_completions(
    mock_server: LiveServer,
) -> None:
    client = _client(mock_server, mock_server.team_key())
    embedded = client.embeddings.with_raw_response.create(
        model=EMBEDDING, input=["one text", "two texts"]
    )
    assert len(embedded.parse().data) == 2
    entry = mock_server.entry(embedded.headers["x-ledger-request-id"])
    tokens = count_text_input_tokens(EMBEDDING, ["one text", "two texts"])
    assert (entry["provider"], entry["usage"]["input_tokens"]) == ("mock", tokens)
    assert Decimal(entry["cost_usd"]) == _per_million(tokens, EMBEDDING_INPUT)

    with client.completions.with_streaming_response.create(
        model=INSTRUCT, prompt="write a little", stream=True, max_tokens=5
    ) as response:
        text = "".join(c.choices[0].text for c in response.parse() if c.choices)
        request_id = response.headers["x-ledger-request-id"]
    entry = mock_server.entry(request_id)
    assert text and (entry["status"], entry["usage_source"]) == ("ok", "provider")
    assert entry["usage"]["output_tokens"] == 5  # the mock writes up to its cap


def test_embeddings_under_a_hard_budget_reserve_input_only_and_are_forwarded_unchanged(
    server: LiveServer, fake_upstream: FakeUpstream
) -> None:
    server.create_team("embedders")
    created = server.admin.post("/admin/keys", json={"team": "embedders"}).json()
    # Enough for the input, far too little for the default output cap a chat would reserve.
    budget = server.admin.post(
        "/admin/budgets", json={"key_id": created["id"], "limit_usd": "0.000001", "mode": "hard"}
    )
    assert budget.status_code == 201, budget.text
    raw = _client(server, created["key"]).embeddings.with_raw_response.create(
        model=EMBEDDING, input="a few words"
    )
    assert raw.http_response.status_code == 200
    # No output cap is added to a request that writes no output.
    assert fake_upstream.requests[-1].json == {
        "model": EMBEDDING,
        "input": "a few words",
        "encoding_format": "base64",
    }
    entry = server.entry(raw.headers["x-ledger-request-id"])
    assert Decimal(entry["cost_usd"]) == _per_million(
        count_text_input_tokens(EMBEDDING, "a few words"), EMBEDDING_INPUT
    )


def test_a_hostile_unserved_path_is_still_recorded(server: LiveServer) -> None:
    key = server.team_key()
    for path in ("/v1/files/%00evil", "/v1/models/%00", "/v1/" + "x" * 3000):
        response = httpx.get(server.url + path, headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 404, (path, response.text)
        entry = server.entry(response.headers["x-ledger-request-id"])
        assert entry["http_status"] == 404
