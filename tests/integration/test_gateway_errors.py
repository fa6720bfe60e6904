"""Bad input and failures, on both protocols: the caller's error shape, and one ledger entry.

Once the key is known every request ends as exactly one entry, whatever went wrong; before
that there is no one to charge and no entry. No answer is ever a 500, and no error body ever
holds the provider's key.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ledger.config import ModelConfig, ProviderConfig, Settings
from tests.fake_upstream import DEFAULT_API_KEY, FakeUpstream
from tests.live import ADMIN_KEY, LiveServer, gateway_settings

OPENAI, ANTHROPIC = "openai", "anthropic"
PROTOCOLS = [OPENAI, ANTHROPIC]
MODELS = {OPENAI: "gpt-4.1-mini", ANTHROPIC: "claude-sonnet-4-5"}
PATHS = {OPENAI: "/v1/chat/completions", ANTHROPIC: "/v1/messages"}
SEED_PATHS = {OPENAI: "/api/v7/llm/chat/completions", ANTHROPIC: "/api/v7/llm/v1/messages"}
# Dollars per million tokens: gpt-4.1-mini $0.40 / $1.60, claude-sonnet-4-5 $3 / $15.
INPUT_PRICE = {OPENAI: Decimal("0.40"), ANTHROPIC: Decimal("3.00")}
OUTPUT_PRICE = {OPENAI: Decimal("1.60"), ANTHROPIC: Decimal("15.00")}
ZERO = Decimal(0)
SDKS: dict[str, Any] = {OPENAI: openai, ANTHROPIC: anthropic}

APIStatusError = openai.APIStatusError | anthropic.APIStatusError


# -- helpers ------------------------------------------------------------------------------


def _body(protocol: str, text: str = "hello", **fields: Any) -> dict[str, Any]:
    """A valid request body for `protocol`, with `fields` set on top."""
    body: dict[str, Any] = {
        "model": MODELS[protocol],
        "messages": [{"role": "user", "content": text}],
    }
    if protocol == ANTHROPIC:
        body["max_tokens"] = 100
    return {**body, **fields}


def _auth(protocol: str, key: str | None) -> dict[str, str]:
    """The headers the protocol's own SDK would send."""
    if protocol == OPENAI:
        return {"authorization": f"Bearer {key}"} if key else {}
    headers = {"anthropic-version": "2023-06-01"}
    return {**headers, "x-api-key": key} if key else headers


def _post(
    http: httpx.Client,
    base_url: str,
    protocol: str,
    key: str | None,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> httpx.Response:
    """One raw request: `body` as JSON, or `content` as it is (declared application/json)."""
    all_headers = _auth(protocol, key)
    if content is not None:
        all_headers["content-type"] = "application/json"
    all_headers.update(headers or {})
    return http.post(
        base_url + (path or PATHS[protocol]),
        json=body if content is None else None,
        content=content,
        headers=all_headers,
    )


def _sdk_error(
    gateway: LiveServer, protocol: str, key: str, *, model: str | None = None, text: str = "hello"
) -> APIStatusError:
    """Make a request through the protocol's official SDK and return the error it raised."""
    model = model or MODELS[protocol]
    messages: Any = [{"role": "user", "content": text}]
    if protocol == OPENAI:
        client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as openai_error:
            client.chat.completions.create(model=model, messages=messages)
        return openai_error.value
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as anthropic_error:
        claude.messages.create(model=model, max_tokens=100, messages=messages)
    return anthropic_error.value


def _assert_clean(response: httpx.Response) -> None:
    """What holds for every answer: never a 500, never the provider's key."""
    assert response.status_code != 500, response.text
    assert DEFAULT_API_KEY not in response.text
    assert DEFAULT_API_KEY not in str(response.headers)


def _ledger_error(
    response: httpx.Response,
    protocol: str,
    status: int,
    *,
    openai_type: str = "invalid_request_error",
    anthropic_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> str:
    """Assert Ledger's own error in the caller's protocol's exact shape; return its message."""
    _assert_clean(response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if protocol == OPENAI:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == openai_type
        if code is not None:
            assert error["code"] == code
        if param is not None:
            assert error["param"] == param
    else:
        assert set(body) == {"type", "error"}, body
        assert body["type"] == "error"
        error = body["error"]
        assert set(error) == {"type", "message"}, error
        assert error["type"] == anthropic_type
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def _entry(gateway: LiveServer, response: httpx.Response) -> dict[str, Any]:
    return gateway.entry(response.headers["x-ledger-request-id"])


def _assert_refused(entry: dict[str, Any], http_status: int, message: str) -> None:
    """A request Ledger refused before forwarding: recorded, with its error, at no cost."""
    assert entry["status"] == "invalid_request"
    assert entry["http_status"] == http_status
    assert entry["error"] == message
    assert entry["usage_source"] == "none"
    assert Decimal(entry["cost_usd"]) == ZERO


def _catalog_cost(protocol: str, entry: dict[str, Any]) -> Decimal:
    """What the entry's input and output tokens come to at the catalog prices."""
    usage = entry["usage"]
    return (
        usage["input_tokens"] * INPUT_PRICE[protocol]
        + usage["output_tokens"] * OUTPUT_PRICE[protocol]
    ) / Decimal(1_000_000)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the raw requests: building an httpx client costs more than a request."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def key(gateway: LiveServer) -> str:
    return gateway.team_key()


@pytest.fixture
def slow_gateway(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    """A gateway that waits 0.3 s for the provider before giving up."""
    with LiveServer(gateway_settings(database_url, fake_upstream, timeout_s=0.3)) as server:
        yield server


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_is_refused_400_model_not_priced_in_the_callers_protocol(
    gateway: LiveServer, key: str, protocol: str
) -> None:
    # Before: 404 model_not_found, as if the name were mistyped rather than unpriced.
    error = _sdk_error(gateway, protocol, key, model="no-such-model-9")
    assert isinstance(error, SDKS[protocol].BadRequestError)
    message = _ledger_error(error.response, protocol, 400, code="model_not_priced", param="model")
    assert "no-such-model-9" in message
    assert "POST /admin/prices" in message and "unknown_models" in message
    entry = _entry(gateway, error.response)
    _assert_refused(entry, 400, message)
    assert entry["requested_model"] == "no-such-model-9"
    assert entry["provider"] is None
    assert len(gateway.entries()) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_required_fields_are_refused_with_400(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    required = ["model", "messages"] + (["max_tokens"] if protocol == ANTHROPIC else [])
    for field in required:
        body = _body(protocol)
        del body[field]
        response = _post(http, gateway.url, protocol, key, body)
        message = _ledger_error(response, protocol, 400, param=field)
        assert field in message
        _assert_refused(_entry(gateway, response), 400, message)
    response = _post(http, gateway.url, protocol, key, _body(protocol, messages=[]))
    assert "messages" in _ledger_error(response, protocol, 400, param="messages")
    assert len(gateway.entries()) == len(required) + 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_body_that_is_not_a_json_object_is_refused_with_400(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    for content, says in [
        (b'{"model": "gpt-4.1-mini", "messages": [', "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"just a string"', "JSON object"),
        (b"", "empty"),
    ]:
        response = _post(http, gateway.url, protocol, key, content=content)
        message = _ledger_error(response, protocol, 400)
        assert says in message
        entry = _entry(gateway, response)
        _assert_refused(entry, 400, message)
        assert entry["requested_model"] is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fields_of_the_wrong_type_are_refused_with_400(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    for field, value in [
        ("stream", "yes"),
        ("max_tokens", "10"),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 2.5),
        ("model", 123),
        ("messages", "hello"),
    ]:
        response = _post(http, gateway.url, protocol, key, _body(protocol, **{field: value}))
        message = _ledger_error(response, protocol, 400, param=field)
        assert field in message, (field, value, message)
        _assert_refused(_entry(gateway, response), 400, message)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_missing_and_revoked_keys_get_401_and_leave_no_entry(
    gateway: LiveServer, protocol: str, http: httpx.Client
) -> None:
    gateway.create_team("research")
    created = gateway.admin.post("/admin/keys", json={"team": "research", "name": "leaver"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert _post(http, gateway.url, protocol, key, _body(protocol)).status_code == 200
    revoked = gateway.admin.delete(f"/admin/keys/{created.json()['id']}")
    assert revoked.status_code == 200, revoked.text
    assert len(gateway.entries()) == 1

    error = _sdk_error(gateway, protocol, "sk-ledger-not-a-real-key")
    assert isinstance(error, SDKS[protocol].AuthenticationError)
    for response in [
        error.response,
        _post(http, gateway.url, protocol, None, _body(protocol)),
        _post(http, gateway.url, protocol, key, _body(protocol)),
        _post(
            http, gateway.url, protocol, None, _body(protocol, key=key), path=SEED_PATHS[protocol]
        ),
    ]:
        _ledger_error(
            response, protocol, 401, anthropic_type="authentication_error", code="invalid_api_key"
        )
        assert "x-ledger-request-id" not in response.headers
    assert len(gateway.entries()) == 1  # nobody to charge: no entry


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_key_cannot_make_model_requests(
    gateway: LiveServer, protocol: str, http: httpx.Client
) -> None:
    response = _post(http, gateway.url, protocol, ADMIN_KEY, _body(protocol))
    message = _ledger_error(
        response,
        protocol,
        403,
        openai_type="permission_error",
        anthropic_type="permission_error",
        code="permission_denied",
    )
    assert "/admin/keys" in message
    assert gateway.entries() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_body_over_the_size_limit_is_refused_with_413_and_recorded(
    database_url: str, fake_upstream: FakeUpstream, protocol: str, http: httpx.Client
) -> None:
    settings = gateway_settings(database_url, fake_upstream, max_body_bytes=2048)
    with LiveServer(settings) as gateway:
        key = gateway.team_key()
        big = _body(protocol, "many words " * 400)
        declared = _post(http, gateway.url, protocol, key, big)
        # Without a Content-Length the limit is enforced while reading.
        chunked = http.post(
            gateway.url + PATHS[protocol],
            content=iter([json.dumps(big).encode()]),
            headers={**_auth(protocol, key), "content-type": "application/json"},
        )
        for response in (declared, chunked):
            message = _ledger_error(
                response,
                protocol,
                413,
                anthropic_type="request_too_large",
                code="request_too_large",
            )
            assert "2048" in message
            _assert_refused(_entry(gateway, response), 413, message)
        small = _post(http, gateway.url, protocol, key, _body(protocol))
        assert small.status_code == 200, small.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_content_type_is_refused_with_415(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    response = _post(
        http,
        gateway.url,
        protocol,
        key,
        _body(protocol),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    message = _ledger_error(response, protocol, 415)
    assert "application/json" in message
    _assert_refused(_entry(gateway, response), 415, message)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_sent_to_the_other_protocol_is_told_where_to_go(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    other = ANTHROPIC if protocol == OPENAI else OPENAI
    response = _post(http, gateway.url, protocol, key, _body(protocol, model=MODELS[other]))
    message = _ledger_error(response, protocol, 400, param="model")
    assert PATHS[other] in message
    entry = _entry(gateway, response)
    _assert_refused(entry, 400, message)
    assert entry["requested_model"] == MODELS[other]


# -- models and prices ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_without_a_price_is_refused_unless_configured_free(
    database_url: str, fake_upstream: FakeUpstream, protocol: str, http: httpx.Client
) -> None:
    # Configured models replace the catalog's, and no price is known for "mystery-x1".
    models = tuple(
        ModelConfig(name=f"mystery-{kind}{suffix}", provider=kind, upstream_model="mystery-x1",
                    free=suffix == "-free")
        for kind in PROTOCOLS
        for suffix in ("", "-free")
    ) + tuple(
        ModelConfig(name=f"alias-{kind}", provider=kind, upstream_model=MODELS[kind])
        for kind in PROTOCOLS
    )  # fmt: skip
    settings = gateway_settings(database_url, fake_upstream, models=models)
    with LiveServer(settings) as gateway:
        key = gateway.team_key()
        model = f"mystery-{protocol}"
        response = _post(http, gateway.url, protocol, key, _body(protocol, model=model))
        message = _ledger_error(response, protocol, 400, code="model_not_priced", param="model")
        assert model in message
        assert "/admin/prices" in message
        entry = _entry(gateway, response)
        _assert_refused(entry, 400, message)
        assert entry["requested_model"] == model

        response = _post(http, gateway.url, protocol, key, _body(protocol, model=model + "-free"))
        assert response.status_code == 200, response.text
        entry = _entry(gateway, response)
        assert entry["status"] == "ok"
        assert entry["served_model"] == "mystery-x1"
        assert entry["usage_source"] == "provider"
        assert entry["usage"]["input_tokens"] > 0
        assert entry["usage"]["output_tokens"] > 0
        assert Decimal(entry["cost_usd"]) == ZERO

        # A name of one's own for a catalog model is charged the catalog model's price.
        response = _post(
            http, gateway.url, protocol, key, _body(protocol, model=f"alias-{protocol}")
        )
        assert response.status_code == 200, response.text
        entry = _entry(gateway, response)
        assert entry["served_model"] == MODELS[protocol]
        assert Decimal(entry["cost_usd"]) == _catalog_cost(protocol, entry) > 0


# -- the provider fails ---------------------------------------------------------------------


PROVIDER_ERRORS = {
    "http_400": (400, "invalid_request_error", "invalid_request_error", "Bad request."),
    "http_500": (500, "server_error", "api_error", "The server had an error."),
    "http_502": (502, "server_error", "api_error", "Bad gateway."),
    "http_503": (503, "server_error", "overloaded_error", "Overloaded."),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_provider_errors_are_relayed_unchanged_and_cost_nothing(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    for fault, (status, openai_type, anthropic_type, text) in PROVIDER_ERRORS.items():
        response = _post(http, gateway.url, protocol, key, _body(protocol, f"fault={fault}"))
        assert response.status_code == status, response.text
        assert DEFAULT_API_KEY not in response.text
        body = response.json()
        if protocol == OPENAI:
            assert body == {
                "error": {"message": text, "type": openai_type, "param": None, "code": None}
            }
        else:
            assert body.pop("request_id").startswith("req_")  # the provider's, relayed
            assert body == {"type": "error", "error": {"type": anthropic_type, "message": text}}
        entry = _entry(gateway, response)
        assert entry["status"] == "upstream_error"
        assert entry["http_status"] == status
        assert entry["error"] == text
        assert Decimal(entry["cost_usd"]) == ZERO


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rate_limit_is_relayed_with_its_retry_after(
    gateway: LiveServer, key: str, protocol: str
) -> None:
    error = _sdk_error(gateway, protocol, key, text="fault=http_429")
    assert isinstance(error, SDKS[protocol].RateLimitError)
    response = error.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    body = response.json()
    message = "Rate limit reached. Please try again in 7s."
    if protocol == OPENAI:
        assert body["error"]["code"] == "rate_limit_exceeded"
    else:
        assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"] == message
    entry = _entry(gateway, response)
    assert entry["status"] == "upstream_error"
    assert entry["http_status"] == 429
    assert entry["error"] == message
    assert Decimal(entry["cost_usd"]) == ZERO


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_provider_is_a_502_that_costs_nothing(
    database_url: str, protocol: str, http: httpx.Client
) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    providers = tuple(
        ProviderConfig(name=kind, kind=kind, base_url=closed + ("/v1" if kind == OPENAI else ""),
                       api_key=DEFAULT_API_KEY, timeout_s=2.0, connect_timeout_s=2.0)
        for kind in (OPENAI, ANTHROPIC)
    )  # fmt: skip
    settings = Settings(database_url=database_url, admin_key=ADMIN_KEY, providers=providers)
    with LiveServer(settings) as gateway:
        response = _post(http, gateway.url, protocol, gateway.team_key(), _body(protocol))
        message = _ledger_error(
            response, protocol, 502, openai_type="api_error", anthropic_type="api_error",
            code="upstream_error",
        )  # fmt: skip
        assert "could not be reached" in message
        entry = _entry(gateway, response)
    assert entry["status"] == "upstream_error"
    assert entry["http_status"] == 502
    assert entry["error"] == message
    # Nothing reached the provider, so nothing can have been billed.
    assert entry["usage_source"] == "none"
    assert Decimal(entry["cost_usd"]) == ZERO


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_provider_that_stops_answering_times_out_with_504(
    slow_gateway: LiveServer, protocol: str, http: httpx.Client
) -> None:
    key = slow_gateway.team_key()
    started = time.monotonic()
    response = _post(
        http, slow_gateway.url, protocol, key, _body(protocol, "fault=stall stall_s=5")
    )
    assert time.monotonic() - started < 4, "the 0.3 s read timeout was not applied"
    message = _ledger_error(
        response, protocol, 504, openai_type="api_error", anthropic_type="api_error",
        code="upstream_timeout",
    )  # fmt: skip
    assert "did not answer within 0.3 s" in message
    entry = _entry(slow_gateway, response)
    assert entry["status"] == "timeout"
    assert entry["http_status"] == 504
    assert entry["error"] == message
    # The provider may have billed the prompt: the estimate is recorded, never $0.
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    assert Decimal(entry["cost_usd"]) == _catalog_cost(protocol, entry) > 0


@pytest.mark.parametrize("fault", ["reset", "malformed_json"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broken_provider_response_is_a_502_recorded_at_the_catalog_cost(
    gateway: LiveServer, key: str, protocol: str, fault: str, http: httpx.Client
) -> None:
    response = _post(http, gateway.url, protocol, key, _body(protocol, f"fault={fault}"))
    message = _ledger_error(
        response, protocol, 502, openai_type="api_error", anthropic_type="api_error",
        code="upstream_error",
    )  # fmt: skip
    entry = _entry(gateway, response)
    assert entry["status"] == "upstream_error"
    assert entry["http_status"] == 502
    assert entry["error"] == message
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    assert Decimal(entry["cost_usd"]) == _catalog_cost(protocol, entry) > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_response_without_usage_is_served_and_recorded_with_estimated_usage(
    gateway: LiveServer, key: str, protocol: str, http: httpx.Client
) -> None:
    plain = _post(http, gateway.url, protocol, key, _body(protocol, "fault=no_usage tell me more"))
    assert plain.status_code == 200, plain.text
    assert "usage" not in plain.json()
    with http.stream(
        "POST",
        gateway.url + PATHS[protocol],
        json=_body(protocol, "fault=no_usage stream it", stream=True),
        headers=_auth(protocol, key),
    ) as streamed:
        assert streamed.status_code == 200
        streamed.read()
    for response in (plain, streamed):
        entry = _entry(gateway, response)
        assert entry["status"] == "ok"
        assert entry["usage_source"] == "estimated"
        assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
        assert entry["usage"]["output_tokens"] > 0
        assert Decimal(entry["cost_usd"]) == _catalog_cost(protocol, entry) > 0


# -- whatever is sent -----------------------------------------------------------------------


JUNK_FIELDS: list[dict[str, Any]] = [
    {"model": None},
    {"model": "m" * 500},
    {"model": ["gpt-4.1-mini"]},
    {"messages": {"role": "user"}},
    {"messages": [None]},
    {"messages": [{"role": 5, "content": "x"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [1, None, {"type": "text"}]}]},
    {"stream": 1},
    {"max_tokens": True},
    {"max_tokens": 10**30},
    {"n": 0},
    {"user": 5},
    {"stream_options": "yes"},
    {"metadata": "yes"},
    {"system": 5},
    {"tools": "junk"},
    {"tools": [None, 5]},
]
JUNK_CONTENT: list[bytes] = [
    b"\xff\xfe\x00",
    b"[" * 20_000 + b"]" * 20_000,
    b'{"model": NaN}',
    b'{"model": 1e400}',
    b'{"model": "\\ud800"}',
    b"null",
]
ENDPOINTS = [
    (OPENAI, PATHS[OPENAI]),
    (OPENAI, SEED_PATHS[OPENAI]),
    (ANTHROPIC, PATHS[ANTHROPIC]),
    (ANTHROPIC, SEED_PATHS[ANTHROPIC]),
    (ANTHROPIC, "/v1/messages/count_tokens"),
]


def test_no_request_ever_gets_a_500_or_sees_the_provider_key(
    gateway: LiveServer, key: str, http: httpx.Client
) -> None:
    sent = 0
    for protocol, path in ENDPOINTS:
        for fields in JUNK_FIELDS:
            response = _post(http, gateway.url, protocol, key, _body(protocol, **fields), path=path)
            _assert_clean(response)
            assert "x-ledger-request-id" in response.headers, (path, fields)
            sent += 1
        for content in JUNK_CONTENT:
            response = _post(http, gateway.url, protocol, key, content=content, path=path)
            _ledger_error(response, protocol, 400)
            sent += 1
        if path in PATHS.values():
            tagged = _post(
                http,
                gateway.url,
                protocol,
                key,
                _body(protocol),
                headers={"x-ledger-tags": "bad tag!"},
            )
            assert "x-ledger-tags" in _ledger_error(tagged, protocol, 400)
            sent += 1
    # Each request with a known key ended as exactly one entry.
    assert len(gateway.wait_for_entries(sent)) == sent
