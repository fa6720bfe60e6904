"""The mock provider's parts that no gateway route reaches yet, and its schema generator."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jsonschema
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ledger.providers.mock import MockTransport
from ledger.providers.mock.cache import PrefixCache
from ledger.providers.mock.schema import instance_for

SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": 100, "multipleOf": 7},
    {"type": "number", "minimum": 10, "maximum": 20, "multipleOf": 0.25},
    {"type": "string", "minLength": 50, "maxLength": 60},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": ["null", "string"]},
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
    {"allOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]}, {"required": ["b"]}]},
    {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "integer"}]},
    {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["name", "children", "parent"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/Node",
    },
    {
        "definitions": {"Unit": {"type": "string", "enum": ["kg", "lb"]}},
        "type": "object",
        "properties": {"unit": {"$ref": "#/definitions/Unit"}, "n": {"type": "null"}},
    },
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[json.dumps(s)[:40] for s in SCHEMAS])
def test_generated_documents_are_valid_against_their_schema(schema: dict[str, Any]) -> None:
    for seed in range(5):
        value = instance_for(schema, seed)
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        assert instance_for(schema, seed) == value  # deterministic


def _send(transport: MockTransport, path: str, body: dict[str, Any], *, stream: bool) -> bytes:
    async def go() -> bytes:
        response = await transport.send(path, json.dumps(body).encode(), {}, stream=stream)
        return await response.read()

    return asyncio.run(go())


def test_responses_answers_in_the_responses_shape_streamed_or_not() -> None:
    transport = MockTransport(chunk_delay_s=0)
    schema = {
        "type": "object",
        "properties": {"total": {"type": "integer", "minimum": 1}},
        "required": ["total"],
        "additionalProperties": False,
    }
    body = {
        "model": "gpt-4.1-mini",
        "instructions": "Be brief.",
        "input": "Add up the invoice.",
        "text": {"format": {"type": "json_schema", "name": "sum", "schema": schema}},
    }
    response = Response.model_validate_json(_send(transport, "/v1/responses", body, stream=False))
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.usage is not None and response.usage.input_tokens > 0

    raw = _send(transport, "/v1/responses", body, stream=True).decode()
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = [
        adapter.validate_json(line.removeprefix("data: "))
        for line in raw.splitlines()
        if line.startswith("data: ")
    ]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == response.output_text
    assert events[-1].type == "response.completed"

    capped = {**body, "max_output_tokens": 3, "text": {"format": {"type": "text"}}}
    cut = Response.model_validate_json(_send(transport, "/v1/responses", capped, stream=False))
    assert cut.status == "incomplete" and cut.usage is not None and cut.usage.output_tokens == 3


def test_responses_calls_a_forced_function() -> None:
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"id": {"type": "integer"}},
            "required": ["id"],
        },
    }
    body = {"model": "gpt-4.1-mini", "input": "hi", "tools": [tool], "tool_choice": "required"}
    raw = _send(MockTransport(chunk_delay_s=0), "/v1/responses", body, stream=False)
    call = Response.model_validate_json(raw).output[0]
    assert call.type == "function_call" and call.name == "lookup"
    jsonschema.validate(json.loads(call.arguments), tool["parameters"])


def test_embeddings_are_deterministic_unit_vectors_with_usage() -> None:
    transport = MockTransport(chunk_delay_s=0)
    body = {"model": "text-embedding-3-small", "input": ["ledger", "budget"]}
    first = CreateEmbeddingResponse.model_validate_json(
        _send(transport, "/v1/embeddings", body, stream=False)
    )
    again = CreateEmbeddingResponse.model_validate_json(
        _send(transport, "/v1/embeddings", body, stream=False)
    )
    assert [len(d.embedding) for d in first.data] == [1536, 1536]
    assert first.data[0].embedding == again.data[0].embedding != first.data[1].embedding
    assert abs(sum(v * v for v in first.data[0].embedding) - 1) < 1e-9
    assert first.usage.prompt_tokens == 2

    packed = json.loads(
        _send(
            transport,
            "/v1/embeddings",
            {**body, "dimensions": 8, "encoding_format": "base64"},
            stream=False,
        )
    )
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 8 * 4


def test_prefix_cache_forgets_expired_and_least_recent_prefixes() -> None:
    now = [0.0]
    cache = PrefixCache(max_entries=2, clock=lambda: now[0])
    cache.store("a", 10)
    cache.store("b", 10)
    assert cache.hit("a")  # a is now the most recent
    cache.store("c", 10)
    assert not cache.hit("b") and cache.hit("a") and cache.hit("c")
    now[0] = 11.0
    assert not cache.hit("a")
    assert len(cache) == 1


def test_a_schema_demanding_the_impossible_still_gets_a_finite_answer() -> None:
    endless = {
        "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}},
        "type": "object",
        "properties": {
            "loop": {"$ref": "#/$defs/A"},
            "many": {"type": "array", "minItems": 10**9},
            "long": {"type": "string", "minLength": 10**9},
        },
        "required": ["loop", "many", "long"],
    }
    value = instance_for(endless)
    assert len(value["many"]) <= 64 and len(value["long"]) <= 4096
