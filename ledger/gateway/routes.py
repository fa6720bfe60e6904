"""The gateway's HTTP routes: thin adapters from ASGI to :class:`Gateway`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, NoReturn

import anyio
from litestar import Response, delete, get, post, route
from litestar.middleware import DefineMiddleware
from litestar.openapi.spec import Operation, Schema
from litestar.types import ASGIApp, Receive, Scope, Send

from ledger.admin.identity import Principal
from ledger.errors import (
    AuthenticationFailed,
    InvalidRequest,
    LedgerError,
    PayloadTooLarge,
    RequestTimeout,
)
from ledger.gateway.lifecycle import END_OF_RESPONSE, Gateway, GatewayCall
from ledger.http import (
    DisconnectWatch,
    credential_in,
    error_body,
    protocol_for_path,
    read_body,
    scope_headers,
)
from ledger.openapi import (
    CHAT_REQUEST,
    CHAT_STREAM_EVENT,
    COMPLETION_STREAM_EVENT,
    COMPLETIONS_REQUEST,
    COUNT_TOKENS_REQUEST,
    EMBEDDINGS_REQUEST,
    GATEWAY_ERRORS,
    GATEWAY_HEADERS,
    KEY_ERRORS,
    MESSAGE_REQUEST,
    MESSAGE_STREAM_EVENT,
    SEED_CHAT_REQUEST,
    SEED_COUNT_TOKENS_REQUEST,
    SEED_MESSAGE_REQUEST,
    AnthropicMessage,
    AnthropicModel,
    AnthropicModelList,
    ChatCompletion,
    EmbeddingList,
    MessageTokensCount,
    OpenAIModel,
    OpenAIModelList,
    ResponseDeleted,
    ResponseInputItems,
    ResponseInputTokens,
    ResponseObject,
    TextCompletion,
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
        protocol = self._protocol
        if protocol == AUTO:  # a route both SDKs call: Anthropic's when it sends its version
            anthropic_caller = "anthropic-version" in headers
            anthropic_path = protocol_for_path(scope["path"]) == "anthropic"
            protocol = "anthropic" if anthropic_caller or anthropic_path else "openai"
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
                await _refuse(send, error, protocol)
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
                await _refuse(send, AuthenticationFailed(_NO_KEY_FOR_LARGE_BODY), protocol)
                return
            body_error = error
        except RequestTimeout as error:
            if principal is None:  # nobody to charge: no entry
                await _refuse(send, error, protocol)
                return
            body_error = error
        except LedgerError as error:
            body_error = error
        resource = (scope.get("path_params") or {}).get("model_id")
        call = GatewayCall(
            protocol=protocol,
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
            method=scope.get("method", "POST"),
            path=scope["path"],
            resource=resource if isinstance(resource, str) else None,
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
            body = error_body(error, protocol)
            await _send_whole(send, error.status, dict(error.headers), body)
            return
        if reply.stream is None:
            watch.stop()
            await _send_whole(send, reply.status, reply.headers, reply.body)
        else:
            await _send_stream(send, reply.status, reply.headers, reply.stream, watch)


async def _refuse(send: Send, error: LedgerError, protocol: str) -> None:
    """Answer before the body was read (or in full); the connection ends with it.

    Otherwise the server would keep reading, and discarding, whatever the client
    still sends, on a connection held open for it.
    """
    headers = {**error.headers, "connection": "close"}
    await _send_whole(send, error.status, headers, error_body(error, protocol))


AUTO = "auto"  # the protocol of a route both SDKs call: chosen per request


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


@get("/v1/models", operation_id="listModels", middleware=[served(AUTO, "models")], **_MODELS)
async def list_models() -> Response[bytes]:
    """The models this key may use (routed, priced, allowed), in OpenAI's or Anthropic's shape."""
    _served_by_middleware()


# Its own handler: an OpenAPI operation id names one path, or the schema cannot be built.
@get(
    "/api/v7/llm/v1/models",
    operation_id="seedListModels",
    middleware=[served(AUTO, "models")],
    **_MODELS,
)
async def seed_list_models() -> Response[bytes]:
    """The seed API's model list; the same answer as ``GET /v1/models``."""
    _served_by_middleware()


@get(
    "/v1/models/{model_id:str}",
    operation_id="retrieveModel",
    middleware=[served(AUTO, "model")],
    responses=answers(OpenAIModel | AnthropicModel, "either", *KEY_ERRORS, 400, 404),
    operation_class=_MODELS["operation_class"],
    tags=["gateway"],
)
async def retrieve_model() -> Response[bytes]:
    """One model this key may use, in OpenAI's or Anthropic's shape; 404 for any other."""
    _served_by_middleware()


@post(
    "/v1/embeddings",
    operation_id="createEmbedding",
    operation_class=_documented(EMBEDDINGS_REQUEST),
    responses=answers(EmbeddingList, "openai", *GATEWAY_ERRORS["openai"]),
    status_code=200,
    tags=["gateway"],
    middleware=[served("openai", "embeddings")],
    **_BODY,
)
async def embeddings() -> Response[bytes]:
    """OpenAI-compatible embeddings, priced per input token."""
    _served_by_middleware()


@post(
    "/v1/completions",
    operation_id="createCompletion",
    operation_class=_documented(COMPLETIONS_REQUEST, COMPLETION_STREAM_EVENT),
    responses=answers(TextCompletion, "openai", *GATEWAY_ERRORS["openai"]),
    status_code=200,
    tags=["gateway"],
    middleware=[served("openai", "completions")],
    **_BODY,
)
async def completions() -> Response[bytes]:
    """OpenAI-compatible legacy text completions, streaming or not."""
    _served_by_middleware()


_EVERY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@route(
    "/v1/{rest:path}",
    http_method=_EVERY_METHOD,
    operation_id="unroutedV1",
    include_in_schema=False,
    middleware=[served(AUTO, "unrouted")],
    **_BODY,
)
async def unrouted() -> Response[bytes]:
    """Any other path under ``/v1/``: refused 404 in the caller's shape, and recorded.

    A route added for an endpoint Ledger learns to serve takes precedence over this one.
    """
    _served_by_middleware()


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
    retrieve_model,
    embeddings,
    completions,
    unrouted,
]
