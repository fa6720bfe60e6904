"""Whatever arrives, from a client or from a provider, Ledger answers it and keeps counting.

- Hypothesis drives the request parsers (JSON decoding, OpenAI and Anthropic bodies) and
  the usage parsers and stream relays with invalid JSON, wrong types, deep nesting,
  invalid UTF-8, huge numbers, zero and negative ``max_tokens`` and unknown fields: the
  request parsers raise nothing but :class:`InvalidRequest`; usage parsers never raise and
  never produce a negative (or absurd) bucket; relays pass bytes through unchanged.
- The same kind of bodies reach a live Ledger (wrong content types, oversize bodies with a
  small limit): never a 5xx, and each one past authentication is one ledger entry.
- Schemathesis checks every operation of Ledger's own OpenAPI schema, gateway included, on
  each database: no 5xx, and each answer's status, content type and body (errors and
  stream events included) are the ones documented.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from ledger.app import create_app
from ledger.config import Settings
from ledger.db.engine import create_engine
from ledger.db.ledger import LedgerEntry
from ledger.db.migrate import upgrade
from ledger.db.writer import LedgerWriter
from ledger.errors import InvalidRequest
from ledger.gateway.requests import (
    decode_json_object,
    normalise_seed_body,
    parse_anthropic_messages,
    parse_openai_chat,
)
from ledger.http import protocol_for_path
from ledger.providers import anthropic, openai
from ledger.providers.sse import SSEParser
from ledger.usage import MAX_INPUT_TOKENS, ImplausibleUsage, Usage
from tests.fake_upstream import FakeUpstream
from tests.live import ADMIN_KEY, LiveServer, gateway_settings

PURE = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
LIVE = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

# -- strategies -------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 10_000_001, 2**63, -(2**63) - 1, 10**400 // 10**300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "system"]) | scalars},
            optional={"content": st.text(max_size=30) | json_values, "name": scalars},
        ),
        max_size=3,
    ),
    json_values,
)
request_fields = {
    "model": st.sampled_from(["gpt-4.1-mini", "claude-sonnet-4-5", "", " ", "x" * 300]) | scalars,
    "messages": messages,
    "max_tokens": numbers | scalars,
    "max_completion_tokens": numbers | scalars,
    "n": numbers | scalars,
    "stream": st.booleans() | scalars,
    "stream_options": st.fixed_dictionaries({"include_usage": scalars}) | scalars,
    "user": scalars,
    "metadata": st.fixed_dictionaries({"user_id": scalars}) | scalars,
    "model_id": scalars,
    "key": scalars,
    "tools": json_values,
    "an_unknown_field": json_values,
}
request_bodies = st.fixed_dictionaries({}, optional=request_fields)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    request_bodies.map(lambda body: json.dumps(body).encode()),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"\xff\xfe\x00", b'{"model": "\xc3\x28"}', b"1e999999", b"-" + b"9" * 5000]),
)


def _usage_is_sane(usage: Usage | None) -> None:
    if usage is None:
        return
    for bucket in (
        usage.input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    ):
        assert isinstance(bucket, int) and 0 <= bucket <= MAX_INPUT_TOKENS, usage
    assert usage.reasoning_tokens <= usage.output_tokens


# -- the request parsers ------------------------------------------------------------------


@PURE
@given(raw=raw_bodies)
def test_any_bytes_decode_to_an_object_or_a_400(raw: bytes) -> None:
    try:
        body = decode_json_object(raw)
    except InvalidRequest as error:
        assert error.status == 400 and error.message
        return
    assert isinstance(body, dict)


@PURE
@given(body=request_bodies, seed=st.booleans(), count_only=st.booleans())
def test_any_body_parses_or_is_refused_with_400(
    body: dict[str, Any], seed: bool, count_only: bool
) -> None:
    if seed:
        body = normalise_seed_body(body)
    for parse in (parse_openai_chat, lambda b: parse_anthropic_messages(b, count_only=count_only)):
        try:
            parsed = parse(body)
        except InvalidRequest as error:
            assert error.status == 400 and error.message
            continue
        assert isinstance(parsed.model, str) and parsed.model.strip()
        assert len(parsed.model) <= 200
        assert isinstance(parsed.stream, bool)
        assert parsed.max_output_tokens is None or 1 <= parsed.max_output_tokens <= 10_000_000
        assert 1 <= parsed.choices <= 10_000_000
        assert parsed.body is body  # what goes upstream is what was sent


# -- the usage parsers and stream relays ----------------------------------------------------

usage_like = st.fixed_dictionaries(
    {},
    optional={
        key: numbers | scalars
        for key in (
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
    }
    | {
        "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": numbers}) | scalars,
        "completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": numbers}) | scalars,
        "cache_creation": st.fixed_dictionaries(
            {"ephemeral_5m_input_tokens": numbers, "ephemeral_1h_input_tokens": numbers}
        )
        | scalars,
    },
)


@PURE
@given(payload=json_values | st.fixed_dictionaries({"usage": usage_like | json_values}))
def test_usage_parsers_give_sane_usage_or_say_why_not_and_never_go_negative(
    payload: Any,
) -> None:
    usage = payload.get("usage") if isinstance(payload, dict) else payload
    for parse, argument in (
        (openai.usage_from_payload, payload),
        (anthropic.usage_from_payload, payload),
        (anthropic.usage_from_mapping, usage),
    ):
        try:
            _usage_is_sane(parse(argument))
        except ImplausibleUsage as doubt:  # not believed: the reason, and the usage as it came
            assert doubt.reason and doubt.raw is not None


def _sse_events(payloads: list[Any], names: list[str | None]) -> bytes:
    out = []
    for payload, name in zip(payloads, names, strict=False):
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


stream_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        _sse_events,
        st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["message_start", "message_delta", "error", "ping"])},
                optional={
                    "usage": usage_like,
                    "message": st.fixed_dictionaries({"usage": usage_like}),
                    "choices": json_values,
                    "error": json_values,
                },
            )
            | st.sampled_from(["[DONE]", "{not json", "", "\u2028"])
            | json_values,
            max_size=6,
        ),
        st.lists(st.sampled_from([None, "message_start", "message_delta", "error"]), max_size=6),
    ),
)


@PURE
@given(data=stream_bytes, cuts=st.lists(st.integers(0, 400), max_size=5))
def test_stream_relays_pass_every_byte_through_and_never_raise(
    data: bytes, cuts: list[int]
) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    for relay in (anthropic.AnthropicStreamRelay(), openai.OpenAIStreamRelay(strip_usage=False)):
        relayed = b"".join(relay.feed(chunk) for chunk in chunks) + relay.finish()
        assert relayed == data
        _usage_is_sane(relay.usage)
    stripping = openai.OpenAIStreamRelay(strip_usage=True)
    for chunk in chunks:
        stripping.feed(chunk)
    stripping.finish()
    _usage_is_sane(stripping.usage)
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert b"".join(event.raw for event in events) + parser.pending == data


# -- a live Ledger ----------------------------------------------------------------------------

MAX_BODY_BYTES = 4096
GATEWAY_PATHS = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/api/v7/llm/chat/completions",
    "/api/v7/llm/v1/messages",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/vnd.api+json",
    "",
]


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> Iterator[tuple[LiveServer, str]]:
    """One SQLite Ledger for every example, with a small body limit."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}"
    settings_ = gateway_settings(url, fake_upstream, max_body_bytes=MAX_BODY_BYTES)
    with LiveServer(settings_) as server:
        yield server, server.team_key("fuzzers")


@LIVE
@given(
    raw=raw_bodies | st.binary(min_size=MAX_BODY_BYTES + 1, max_size=MAX_BODY_BYTES + 64),
    path=st.sampled_from(GATEWAY_PATHS),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_random_bodies_never_get_a_5xx_and_each_is_one_entry(
    fuzz_server: tuple[LiveServer, str], raw: bytes, path: str, content_type: str
) -> None:
    server, key = fuzz_server
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    if content_type:
        headers["content-type"] = content_type
    response = httpx.post(server.url + path, content=raw, headers=headers, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if len(raw) > MAX_BODY_BYTES:
        assert response.status_code == 413
    request_id = response.headers["x-ledger-request-id"]
    entry = server.entry(request_id)
    assert entry["http_status"] == response.status_code or entry["stream"]


def test_nul_characters_and_huge_numbers_are_recorded_on_every_database(
    gateway: LiveServer,
) -> None:
    """PostgreSQL text cannot hold NUL: such a value must not hold back the ledger."""
    key = gateway.team_key()
    headers = {"authorization": f"Bearer {key}"}
    sent = [
        {"model": "gpt-4.1-mini\u0000", "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "gpt-4.1-mini",
            "user": "a\u0000b",
            "messages": [{"role": "user", "content": "x"}],
        },
        {
            "model": "gpt-4.1-mini",
            "max_tokens": 2**80,
            "messages": [{"role": "user", "content": "x"}],
        },
        {"model": "gpt-4.1-mini", "n": 10**30, "messages": [{"role": "user", "content": "x"}]},
    ]
    for body in sent:
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)
        assert response.status_code < 500, response.text
        entry = gateway.entry(response.headers["x-ledger-request-id"])
        assert "\u0000" not in json.dumps(entry)
    assert len(gateway.entries()) == len(sent)
    assert httpx.get(gateway.url + "/readyz").status_code == 200


def test_an_entry_the_database_refuses_does_not_stop_the_ledger_writer(tmp_path: Path) -> None:
    async def run() -> tuple[bool, bool]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        await upgrade(engine)
        writer = LedgerWriter(engine)
        writer.start()
        results = []
        try:
            for tokens in (2**70, 1):
                entry = LedgerEntry(
                    request_id=f"req_{uuid.uuid4().hex}",
                    started_at=datetime.now(UTC),
                    endpoint="chat.completions",
                    input_tokens=tokens,
                )
                try:
                    await asyncio.wait_for(writer.record(entry), 3)
                    results.append(True)
                except TimeoutError:
                    results.append(False)
                except Exception:
                    results.append(True)  # refused, but answered
        finally:
            if writer._task is not None and not writer._task.done():
                await writer.stop()
            await engine.dispose()
        return results[0], results[1]

    first_answered, next_recorded = asyncio.run(run())
    assert first_answered and next_recorded


def test_a_report_over_decades_or_centuries_answers_promptly(gateway: LiveServer) -> None:
    """Found by Schemathesis: a far-past ``since`` held the event loop for minutes."""
    for params, status in (
        (
            {"since": "1990-01-01T00:00:00Z", "granularity": "month", "timezone": "Europe/Paris"},
            200,
        ),
        ({"since": "0001-01-01T00:00:00Z", "granularity": "none", "timezone": "Europe/Paris"}, 200),
        # Too many days: shown at the coarsest granularity that fits, here no series at all.
        ({"since": "0001-01-01T00:00:00Z", "granularity": "day"}, 200),
    ):
        started = time.monotonic()
        response = gateway.admin.get("/api/reports/spend", params=params)
        assert response.status_code == status, response.text
        assert time.monotonic() - started < 5, params
    assert response.json()["granularity"] is None and not response.json().get("series")


# -- Schemathesis ---------------------------------------------------------------------------

SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Which key each example sends: mostly the one the operation is for, sometimes the other
# kind (a team key on an admin route, the admin key on a model route) or none at all.
CREDENTIALS = st.sampled_from(["right", "right", "right", "other", "none"])


@dataclass
class LedgerUnderTest:
    server: LiveServer
    schema: Any
    models: dict[str, list[str]]  # provider name -> the catalog models it serves


@pytest.fixture
def ledger_schema(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LedgerUnderTest]:
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        key = server.team_key("schemathesis")
        listed = httpx.get(server.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
        models: dict[str, list[str]] = {}
        for model in listed.json()["data"]:
            models.setdefault(model["owned_by"], []).append(model["id"])
        schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
        schema.config.base_url = server.url
        yield LedgerUnderTest(server, schema, models)


# Schemathesis's pytest plugin does not run under pytest 9 yet: drive each operation's
# Hypothesis strategy directly instead.
def test_every_operation_of_the_openapi_schema(ledger_schema: LedgerUnderTest) -> None:
    """Every answer of every operation, gateway included, is one the schema documents.

    No 5xx; the status is declared for the operation; the content type is one declared for
    that status; the body matches its schema (errors in the protocol's shape, gateway
    bodies as the providers send them, and each event of a stream).
    """
    seen: dict[str, set[tuple[int, str]]] = {}
    failures: list[str] = []
    for result in ledger_schema.schema.get_all_operations():
        operation = result.ok()
        operation_id = operation.definition.raw["operationId"]
        check = _property_of(operation, ledger_schema, seen.setdefault(operation_id, set()))
        try:
            check()
        except (Exception, BaseExceptionGroup) as failure:
            failures.append(f"{operation.label}: {str(failure)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert len(seen) >= 30
    # The examples reach the provider and back, both protocols, streamed or not.
    for operation_id in ("createChatCompletion", "seedChatCompletion"):
        assert {(200, "application/json"), (200, "text/event-stream")} <= seen[operation_id]
    for operation_id in ("createMessage", "seedCreateMessage"):
        assert {(200, "application/json"), (200, "text/event-stream")} <= seen[operation_id]
    for operation_id in ("countMessageTokens", "listModels", "getSpendReport", "listTeams"):
        assert (200, "application/json") in seen[operation_id], seen[operation_id]
    assert (200, "text/csv") in seen["getSpendReport"]
    assert {status for status, _ in seen["listTeams"]} >= {200, 401, 403}


def _property_of(operation: Any, ledger: LedgerUnderTest, seen: set[tuple[int, str]]) -> Any:
    """A Hypothesis test of one operation: its generated cases, sent with some key."""
    definition = operation.definition.raw
    gateway = "gateway" in definition.get("tags", [])
    # A fresh key for each operation: an example of revokeKey may have revoked the last one.
    team_key = ledger.server.team_key("schemathesis")
    keys = {
        "right": team_key if gateway else ADMIN_KEY,
        "other": ADMIN_KEY if gateway else team_key,
    }
    provider = "anthropic" if "/messages" in operation.path else "openai"
    served = st.sampled_from([None, *ledger.models[provider]])

    def check(case: Any, credential: str, model: str | None) -> None:
        if isinstance(case.body, dict):
            if model is not None:
                # A generated name is almost never a served model: name one, most of the time,
                # so that the provider's answers (and streams) are checked too.
                case.body["model" if "model" in case.body else "model_id"] = model
            if "key" in case.body:
                # The seed API's key in the body: a generated one is never valid, and enough
                # bad keys from one client would get every later example a 429.
                case.body["key"] = team_key
        headers = {"authorization": f"Bearer {keys[credential]}"} if credential in keys else {}
        response = case.call_and_validate(headers=headers, checks=SCHEMA_CHECKS)
        media_type = response.headers.get("content-type", [""])[0].split(";")[0]
        seen.add((response.status_code, media_type))

    # Generated bodies reach the provider only by chance (any optional field may be one
    # Ledger refuses): these do, each way it can answer, whatever Hypothesis draws.
    for body in _requests_the_provider_answers(operation, ledger.models[provider][0]):
        check = example(case=operation.Case(body=body), credential="right", model=None)(check)
    check = given(case=operation.as_strategy(), credential=CREDENTIALS, model=served)(check)
    return settings(
        max_examples=25, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )(check)  # fmt: skip


def _requests_the_provider_answers(operation: Any, model: str) -> list[dict[str, Any]]:
    properties = _request_properties(operation)
    if "messages" not in properties:
        return []
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}]}
    body["model_id" if "model_id" in properties else "model"] = model
    if "max_tokens" in properties:
        body["max_tokens"] = 16
    if "stream" not in properties:
        return [body]
    return [body, {**body, "stream": True}]


def _request_properties(operation: Any) -> dict[str, Any]:
    content = operation.definition.raw.get("requestBody", {}).get("content", {})
    return content.get("application/json", {}).get("schema", {}).get("properties", {})


def test_the_schema_documents_errors_in_the_protocol_shapes(tmp_path: Path) -> None:
    """Litestar's own error body (status_code, detail) is never sent, so never documented."""
    settings_ = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    document = create_app(settings_, announce=False).openapi_schema.to_schema()
    shapes = {"#/components/schemas/OpenAIError", "#/components/schemas/AnthropicError"}
    operations = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operations += 1
            anthropic = protocol_for_path(path) == "anthropic"
            for status, response in operation["responses"].items():
                if status.startswith("2") or (path, status) == ("/readyz", "503"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                refs = {schema.get("$ref")} | {s.get("$ref") for s in schema.get("oneOf", [])}
                refs.discard(None)
                assert refs and refs <= shapes, (method, path, status, schema)
                if anthropic:
                    assert refs == {"#/components/schemas/AnthropicError"}, (method, path)
                elif path not in ("/v1/models", "/api/v7/llm/v1/models", "/v1/models/{model_id}"):
                    assert refs == {"#/components/schemas/OpenAIError"}, (method, path)
    assert operations >= 30


def test_only_the_anthropic_routes_answer_errors_in_anthropic_shape() -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/api/v7/llm/v1/messages"):
        assert protocol_for_path(path) == "anthropic", path
    # A parameter that happens to spell "messages" does not make a route Anthropic's.
    for path in ("/api/usage/messages-1", "/api/reports/monthly/messages", "/v1/chat/completions"):
        assert protocol_for_path(path) == "openai", path
