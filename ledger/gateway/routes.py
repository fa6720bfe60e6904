"""The gateway's HTTP routes: thin adapters from ASGI to :class:`Gateway`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, NoReturn

import anyio
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.middleware import DefineMiddleware
from litestar.openapi.spec import Operation, Schema
from litestar.types import ASGIApp, Receive, Scope, Send

from ledger.admin.identity import Authenticator, Principal
from ledger.errors import (
    AuthenticationFailed,
    InvalidRequest,
    LedgerError,
    PayloadTooLarge,
    RequestTimeout,
)
from ledger.gateway.lifecycle import END_OF_RESPONSE, Gateway, GatewayCall
from ledger.gateway.routing import ModelRouter
from ledger.http import (
    DisconnectWatch,
    client_address,
    credential_from_headers,
    credential_in,
    error_body,
    error_response,
    read_body,
    scope_headers,
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
    ResponseDeleted,
    ResponseInputItems,
    ResponseInputTokens,
    ResponseObject,
    answers,
    documented,
    header,
)
from ledger.providers import anthropic, openai

_ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain", "")
_FORWARDED_HEADERS = openai.FORWARDED_REQUEST_HEADERS + anthropic.FORWARDED_REQUEST_HEADERS


class ServeGateway:
    """Serves one gateway route at the ASGI level, as the route's own middleware.

    Litestar routes the request here, to the route's only middleware, which answers it
    and never calls the handler behind it: the handler is there for the route and its
    OpenAPI operation. Litestar's request parsing, dependency resolution and response
    objects cost about as much CPU per request as the whole accounting did, and the
    gateway needs none of them: it reads the body, hands a :class:`GatewayCall` to
    :class:`Gateway`, and sends back bytes.
    """

    def __init__(
        self, app: ASGIApp, *, protocol: str, endpoint: str, seed_body: bool = False
    ) -> None:
        self._protocol = protocol
        self._endpoint = endpoint
        self._seed_body = seed_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state["services"].gateway
        headers = scope_headers(scope)
        client = scope.get("client")
        address = client[0] if client else None
        credential = credential_in(headers)
        principal: Principal | None = None
        if credential is not None:
            # Authenticated on the headers, before the body is read: a caller without a
            # valid key cannot make Ledger buffer (or wait for) a body at all.
            try:
                principal = await gateway.authenticate(credential, address)
            except LedgerError as error:
                await self._refuse(send, error)
                return
        body_error: LedgerError | None = None
        raw = b""
        try:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in _ACCEPTED_CONTENT_TYPES and not content_type.endswith("+json"):
                body_error = InvalidRequest(
                    f"Content-Type must be application/json, not {content_type!r}."
                )
                body_error.status = 415
            limit = gateway.max_body_bytes if principal is not None else BODY_KEY_MAX_BYTES
            raw = await read_body(headers, receive, limit, timeout_s=gateway.body_read_timeout_s)
        except PayloadTooLarge as error:
            if principal is None:
                # Only a small body is read for the key it may carry.
                await self._refuse(send, AuthenticationFailed(_NO_KEY_FOR_LARGE_BODY))
                return
            body_error = error
        except RequestTimeout as error:
            if principal is None:  # nobody to charge: no entry
                await self._refuse(send, error)
                return
            body_error = error
        except LedgerError as error:
            body_error = error
        call = GatewayCall(
            protocol=self._protocol,
            endpoint=self._endpoint,
            raw_body=raw,
            credential=credential,
            seed_body=self._seed_body,
            end_user=headers.get("x-ledger-user"),
            tags=headers.get("x-ledger-tags"),
            forward_headers={h: v for h in _FORWARDED_HEADERS if (v := headers.get(h))},
            body_error=body_error,
            client=address,
            principal=principal,
            client_gone=(watch := DisconnectWatch(receive)),
        )
        try:
            if self._endpoint.startswith("responses."):  # about a stored response
                query = scope.get("query_string", b"").decode("latin-1")
                call = replace(
                    call,
                    method=scope["method"],
                    upstream_path=scope["path"].removeprefix("/v1")
                    + (f"?{query}" if query else ""),
                )
                reply = await gateway.handle_stored(call)
            else:
                reply = await gateway.handle(call)
        except LedgerError as error:
            watch.stop()
            body = error_body(error, self._protocol)
            await _send_whole(send, error.status, dict(error.headers), body)
            return
        if reply.stream is None:
            watch.stop()
            await _send_whole(send, reply.status, reply.headers, reply.body)
        else:
            await _send_stream(send, reply.status, reply.headers, reply.stream, watch)

    async def _refuse(self, send: Send, error: LedgerError) -> None:
        """Answer before the body was read (or in full); the connection ends with it.

        Otherwise the server would keep reading, and discarding, whatever the client
        still sends, on a connection held open for it.
        """
        headers = {**error.headers, "connection": "close"}
        await _send_whole(send, error.status, headers, error_body(error, self._protocol))


BODY_KEY_MAX_BYTES = 64 * 1024
_NO_KEY_FOR_LARGE_BODY = (
    "Missing API key. Send it as 'Authorization: Bearer <key>'; a key in the body is read "
    f"only from bodies of at most {BODY_KEY_MAX_BYTES // 1024} KiB."
)


def served(protocol: str, endpoint: str, *, seed_body: bool = False) -> DefineMiddleware:
    return DefineMiddleware(ServeGateway, protocol=protocol, endpoint=endpoint, seed_body=seed_body)


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.encode("latin-1"), value.encode("latin-1", "replace"))
        for name, value in headers.items()
    ]


async def _send_whole(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    headers = {"content-type": "application/json", **headers, "content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status, "headers": _raw_headers(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_stream(
    send: Send,
    status: int,
    headers: dict[str, str],
    stream: AsyncIterator[bytes],
    watch: DisconnectWatch,
) -> None:
    """Relay ``stream`` chunk by chunk; a client that leaves cancels it where it is."""
    headers = {key: value for key, value in headers.items() if key != "content-length"}
    chunks = aiter(stream)
    try:
        await send(
            {"type": "http.response.start", "status": status, "headers": _raw_headers(headers)}
        )
        # The first chunk is in hand already (see ``_started``): it goes out now, not once
        # the task group below has started its task.
        first = await anext(chunks, END_OF_RESPONSE)
        if first != END_OF_RESPONSE:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        async with anyio.create_task_group() as group:

            async def relay() -> None:
                if first != END_OF_RESPONSE:
                    async for chunk in chunks:
                        if chunk == END_OF_RESPONSE:
                            break  # the stream's own ending runs in ``aclose`` below
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()

            group.start_soon(relay)
            await watch.wait()
            group.cancel_scope.cancel()
    finally:
        if hasattr(stream, "aclose"):
            await stream.aclose()
        watch.stop()


def _served_by_middleware() -> NoReturn:
    raise RuntimeError("gateway routes are answered by ServeGateway, their middleware")


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
    middleware=[served("openai", "chat")],
    **_BODY,
)
async def chat_completions() -> Response[bytes]:
    """OpenAI-compatible chat completions, streaming or not."""
    _served_by_middleware()


@post(
    "/v1/messages",
    operation_id="createMessage",
    operation_class=_documented(MESSAGE_REQUEST, MESSAGE_STREAM_EVENT),
    **_MESSAGES,
    middleware=[served("anthropic", "messages")],
    **_BODY,
)
async def messages() -> Response[bytes]:
    """Anthropic-compatible messages, streaming or not."""
    _served_by_middleware()


@post(
    "/v1/messages/count_tokens",
    operation_id="countMessageTokens",
    operation_class=_documented(COUNT_TOKENS_REQUEST),
    **_COUNT_TOKENS,
    middleware=[served("anthropic", "count_tokens")],
    **_BODY,
)
async def count_tokens() -> Response[bytes]:
    """Anthropic-compatible token counting (the provider's, or a local estimate)."""
    _served_by_middleware()


@post(
    "/api/v7/llm/chat/completions",
    operation_id="seedChatCompletion",
    operation_class=_documented(SEED_CHAT_REQUEST, CHAT_STREAM_EVENT),
    **_CHAT,
    middleware=[served("openai", "chat", seed_body=True)],
    **_BODY,
)
async def seed_chat_completions() -> Response[bytes]:
    """The seed API's chat completions: ``model_id`` and ``key`` may travel in the body."""
    _served_by_middleware()


@post(
    "/api/v7/llm/v1/messages",
    operation_id="seedCreateMessage",
    operation_class=_documented(SEED_MESSAGE_REQUEST, MESSAGE_STREAM_EVENT),
    **_MESSAGES,
    middleware=[served("anthropic", "messages", seed_body=True)],
    **_BODY,
)
async def seed_messages() -> Response[bytes]:
    """The seed API's messages: ``model_id`` and ``key`` may travel in the body."""
    _served_by_middleware()


@post(
    "/api/v7/llm/v1/messages/count_tokens",
    operation_id="seedCountMessageTokens",
    operation_class=_documented(SEED_COUNT_TOKENS_REQUEST),
    **_COUNT_TOKENS,
    middleware=[served("anthropic", "count_tokens", seed_body=True)],
    **_BODY,
)
async def seed_count_tokens() -> Response[bytes]:
    """The seed API's token counting: ``model_id`` and ``key`` may travel in the body."""
    _served_by_middleware()


_RESPONSES = {
    "responses": answers(ResponseObject, "openai", *GATEWAY_ERRORS["openai"]),
    "status_code": 200,
    "tags": ["gateway"],
}


@post(
    "/v1/responses",
    operation_id="createResponse",
    operation_class=documented(parameters=GATEWAY_HEADERS),
    **_RESPONSES,
    middleware=[served("openai", "responses")],
    **_BODY,
)
async def create_response() -> Response[bytes]:
    """OpenAI-compatible Responses API, streaming or not, background too."""
    _served_by_middleware()


_STORED = {"tags": ["gateway"], "operation_class": documented(parameters=GATEWAY_HEADERS)}


def _stored(success: Any) -> dict[int, Any]:
    # What a call about a stored response answers: the provider's object, or an error.
    return answers(success, "openai", *GATEWAY_ERRORS["openai"], 404)


@get("/v1/responses/{response_id:str}", operation_id="getResponse", **_STORED, responses=_stored(ResponseObject),
     middleware=[served("openai", "responses.retrieve")])  # fmt: skip
async def get_response() -> Response[bytes]:
    """A stored response, as the provider has it (a background one settles when finished)."""
    _served_by_middleware()


@delete("/v1/responses/{response_id:str}", operation_id="deleteResponse", status_code=200, responses=_stored(ResponseDeleted),
        **_STORED, middleware=[served("openai", "responses.delete")])  # fmt: skip
async def delete_response() -> Response[bytes]:
    """Delete a stored response at the provider."""
    _served_by_middleware()


@post("/v1/responses/{response_id:str}/cancel", operation_id="cancelResponse", status_code=200, responses=_stored(ResponseObject),
      **_STORED, middleware=[served("openai", "responses.cancel")], **_BODY)  # fmt: skip
async def cancel_response() -> Response[bytes]:
    """Cancel a background response."""
    _served_by_middleware()


@get("/v1/responses/{response_id:str}/input_items", operation_id="listResponseInputItems", responses=_stored(ResponseInputItems),
     **_STORED, middleware=[served("openai", "responses.input_items")])  # fmt: skip
async def response_input_items() -> Response[bytes]:
    """The input items of a stored response."""
    _served_by_middleware()


@post("/v1/responses/input_tokens", operation_id="countResponseInputTokens", status_code=200, responses=_stored(ResponseInputTokens),
      **_STORED, middleware=[served("openai", "responses.input_tokens")], **_BODY)  # fmt: skip
async def response_input_tokens() -> Response[bytes]:
    """The provider's count of a Responses request's input tokens (nothing is billed)."""
    _served_by_middleware()


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
    """The models this key may use (routed, priced, allowed), in OpenAI's or Anthropic's shape."""
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
        principal = await authenticator.authenticate(
            credential_from_headers(request), client_address(request)
        )
    except LedgerError as error:
        return error_response(error, protocol)
    routes = router.models(principal)  # what this key may use, priced, and nothing else
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
    create_response,
    response_input_tokens,
    get_response,
    delete_response,
    cancel_response,
    response_input_items,
    messages,
    count_tokens,
    seed_chat_completions,
    seed_messages,
    seed_count_tokens,
    list_models,
    seed_list_models,
]
