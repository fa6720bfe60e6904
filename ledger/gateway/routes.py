"""The gateway's HTTP routes: thin adapters from Litestar to :class:`Gateway`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi.spec import Operation, Schema
from litestar.response import Stream

from ledger.admin.identity import Authenticator
from ledger.errors import InvalidRequest, LedgerError
from ledger.gateway.lifecycle import Gateway, GatewayCall, GatewayReply
from ledger.gateway.routing import ModelRouter
from ledger.http import (
    DisconnectWatch,
    client_address,
    credential_from_headers,
    error_response,
    read_body,
)
from ledger.openapi import (
    CHAT_REQUEST,
    CHAT_STREAM_EVENT,
    COUNT_TOKENS_REQUEST,
    GATEWAY_ERRORS,
    GATEWAY_HEADERS,
    KEY_ERRORS,
    MESSAGE_REQUEST,
    MESSAGE_STREAM_EVENT,
    SEED_CHAT_REQUEST,
    SEED_COUNT_TOKENS_REQUEST,
    SEED_MESSAGE_REQUEST,
    AnthropicMessage,
    AnthropicModelList,
    ChatCompletion,
    MessageTokensCount,
    OpenAIModelList,
    answers,
    documented,
    header,
)
from ledger.providers import anthropic, openai

_ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain", "")


async def _serve(
    request: Request[Any, Any, Any],
    *,
    protocol: str,
    endpoint: str,
    seed_body: bool = False,
) -> Response[bytes] | Stream:
    # Looked up here rather than injected: dependency resolution cost more than the rest
    # of this function on the hot path.
    gateway: Gateway = request.app.state["services"].gateway
    max_body_bytes = gateway.max_body_bytes
    body_error: LedgerError | None = None
    raw = b""
    try:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _ACCEPTED_CONTENT_TYPES and not content_type.endswith("+json"):
            body_error = InvalidRequest(
                f"Content-Type must be application/json, not {content_type!r}."
            )
            body_error.status = 415
        raw = await read_body(request, max_body_bytes)
    except LedgerError as error:
        body_error = error
    forwarded = openai.FORWARDED_REQUEST_HEADERS + anthropic.FORWARDED_REQUEST_HEADERS
    call = GatewayCall(
        protocol=protocol,
        endpoint=endpoint,
        raw_body=raw,
        credential=credential_from_headers(request),
        seed_body=seed_body,
        end_user=request.headers.get("x-ledger-user"),
        tags=request.headers.get("x-ledger-tags"),
        forward_headers={h: v for h in forwarded if (v := request.headers.get(h))},
        body_error=body_error,
        client=client_address(request),
        client_gone=(watch := DisconnectWatch(request.receive)),
    )
    try:
        reply = await gateway.handle(call)
    except LedgerError as error:
        watch.stop()
        return error_response(error, protocol)
    if reply.stream is None:
        watch.stop()
    else:
        reply.stream = _stop_when_done(reply.stream, watch)
    return _to_response(reply)


async def _stop_when_done(
    stream: AsyncIterator[bytes], watch: DisconnectWatch
) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        if hasattr(stream, "aclose"):
            await stream.aclose()
        watch.stop()


def _to_response(reply: GatewayReply) -> Response[bytes] | Stream:
    if reply.stream is not None:
        return Stream(reply.stream, status_code=reply.status, headers=reply.headers)
    headers = dict(reply.headers)
    media_type = headers.pop("content-type", "application/json")
    return Response(
        content=reply.body, status_code=reply.status, headers=headers, media_type=media_type
    )


_BODY = {"request_max_body_size": None}  # read_body enforces the gateway's own limit
_CHAT = {
    "responses": answers(ChatCompletion, "openai", *GATEWAY_ERRORS["openai"]),
    "status_code": 200,
    "tags": ["gateway"],
}
_MESSAGES = {
    "responses": answers(AnthropicMessage, "anthropic", *GATEWAY_ERRORS["anthropic"]),
    "status_code": 200,
    "tags": ["gateway"],
}
_COUNT_TOKENS = {
    "responses": answers(MessageTokensCount, "anthropic", *GATEWAY_ERRORS["anthropic"]),
    "status_code": 200,
    "tags": ["gateway"],
}


def _documented(request: Schema, stream_event: Schema | None = None) -> type[Operation]:
    return documented(
        request_body=request,
        parameters=GATEWAY_HEADERS,
        content={200: {"text/event-stream": stream_event}} if stream_event else None,
    )


@post(
    "/v1/chat/completions",
    operation_id="createChatCompletion",
    operation_class=_documented(CHAT_REQUEST, CHAT_STREAM_EVENT),
    **_CHAT,
    **_BODY,
)
async def chat_completions(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """OpenAI-compatible chat completions, streaming or not."""
    return await _serve(request, protocol="openai", endpoint="chat")


@post(
    "/v1/messages",
    operation_id="createMessage",
    operation_class=_documented(MESSAGE_REQUEST, MESSAGE_STREAM_EVENT),
    **_MESSAGES,
    **_BODY,
)
async def messages(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """Anthropic-compatible messages, streaming or not."""
    return await _serve(request, protocol="anthropic", endpoint="messages")


@post(
    "/v1/messages/count_tokens",
    operation_id="countMessageTokens",
    operation_class=_documented(COUNT_TOKENS_REQUEST),
    **_COUNT_TOKENS,
    **_BODY,
)
async def count_tokens(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """Anthropic-compatible token counting (the provider's, or a local estimate)."""
    return await _serve(request, protocol="anthropic", endpoint="count_tokens")


@post(
    "/api/v7/llm/chat/completions",
    operation_id="seedChatCompletion",
    operation_class=_documented(SEED_CHAT_REQUEST, CHAT_STREAM_EVENT),
    **_CHAT,
    **_BODY,
)
async def seed_chat_completions(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """The seed API's chat completions: ``model_id`` and ``key`` may travel in the body."""
    return await _serve(request, protocol="openai", endpoint="chat", seed_body=True)


@post(
    "/api/v7/llm/v1/messages",
    operation_id="seedCreateMessage",
    operation_class=_documented(SEED_MESSAGE_REQUEST, MESSAGE_STREAM_EVENT),
    **_MESSAGES,
    **_BODY,
)
async def seed_messages(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """The seed API's messages: ``model_id`` and ``key`` may travel in the body."""
    return await _serve(request, protocol="anthropic", endpoint="messages", seed_body=True)


@post(
    "/api/v7/llm/v1/messages/count_tokens",
    operation_id="seedCountMessageTokens",
    operation_class=_documented(SEED_COUNT_TOKENS_REQUEST),
    **_COUNT_TOKENS,
    **_BODY,
)
async def seed_count_tokens(
    request: Request[Any, Any, Any],
) -> Response[bytes] | Stream:
    """The seed API's token counting: ``model_id`` and ``key`` may travel in the body."""
    return await _serve(
        request,
        protocol="anthropic",
        endpoint="count_tokens",
        seed_body=True,
    )


_MODELS = {
    "responses": answers(OpenAIModelList | AnthropicModelList, "either", *KEY_ERRORS),
    "operation_class": documented(
        parameters=[
            header(
                "anthropic-version", "When sent, the list (and any error) is in Anthropic's shape."
            )
        ]
    ),
    "tags": ["gateway"],
}


@get("/v1/models", operation_id="listModels", **_MODELS)
async def list_models(
    request: Request[Any, Any, Any], router: ModelRouter, authenticator: Authenticator
) -> Response[bytes]:
    """The models this gateway serves, in OpenAI's shape or, for Anthropic clients, theirs."""
    return await _models(request, router, authenticator)


# Its own handler: an OpenAPI operation id names one path, or the schema cannot be built.
@get("/api/v7/llm/v1/models", operation_id="seedListModels", **_MODELS)
async def seed_list_models(
    request: Request[Any, Any, Any], router: ModelRouter, authenticator: Authenticator
) -> Response[bytes]:
    """The seed API's model list; the same answer as ``GET /v1/models``."""
    return await _models(request, router, authenticator)


async def _models(
    request: Request[Any, Any, Any], router: ModelRouter, authenticator: Authenticator
) -> Response[bytes]:
    protocol = "anthropic" if "anthropic-version" in request.headers else "openai"
    try:
        await authenticator.authenticate(credential_from_headers(request), client_address(request))
    except LedgerError as error:
        return error_response(error, protocol)
    routes = router.models()
    if protocol == "anthropic":
        data = [
            {
                "type": "model",
                "id": r.model,
                "display_name": r.model,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for r in routes
        ]
        body: dict[str, Any] = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        body = {
            "object": "list",
            "data": [
                {"id": r.model, "object": "model", "created": 0, "owned_by": r.provider.name}
                for r in routes
            ],
        }
    return Response(content=msgspec.json.encode(body), media_type="application/json")


ROUTES = [
    chat_completions,
    messages,
    count_tokens,
    seed_chat_completions,
    seed_messages,
    seed_count_tokens,
    list_models,
    seed_list_models,
]
