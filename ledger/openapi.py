"""What the OpenAPI document says Ledger answers: documentation only.

Nothing here runs while a request is served. Litestar reads these declarations once, when
it first builds ``/schema/openapi.json``; the handlers keep returning their bytes as they
are (the gateway relays the provider's body unchanged, so it never re-serialises it).

- Every error Ledger sends is in its caller's protocol: OpenAI's shape
  (``{"error": {"message", "type", "param", "code"}}``) everywhere but the Anthropic
  routes, which answer ``{"type": "error", "error": {"type", "message"}}``. The
  :func:`errors` helper declares, per operation, the statuses it can answer with that
  body; Litestar's own 400 body (``status_code``, ``detail``) is never sent, so each
  operation that takes input redeclares 400 through it.
- The gateway's success bodies are the providers' own: the structs below name the fields
  clients rely on and leave the rest open (providers add fields over time). Streams are
  ``text/event-stream``; each event is described as Schemathesis and OpenAPI 3.2 read an
  event (``data``, ``event``), with ``data``'s JSON payload as its ``contentSchema``.
- What Litestar cannot derive from a handler whose body is read raw (the request body,
  a second media type for the same status, header parameters) is added by an
  :class:`~litestar.openapi.spec.Operation` subclass from :func:`documented`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import Parameter as Param

Protocol = Literal["openai", "anthropic", "either"]

# -- parameters, as declared and as checked ---------------------------------------------------
# Litestar enforces these constraints before the handler runs (a 400 otherwise), and the same
# constraints are what the schema says: a value the schema allows is one Ledger accepts.

INT64_MAX = 2**63 - 1
# ``schema_extra``: Litestar writes an annotated bound as a float, and 2^63-1 is not one.
ROW_ID = Annotated[
    int,
    Param(
        ge=1,
        le=INT64_MAX,
        description="A row id (1 to 2^63-1).",
        schema_extra={"minimum": 1, "maximum": INT64_MAX},
    ),
]
ROW_IDS = {"items": {"type": "integer", "minimum": 1, "maximum": INT64_MAX}}
"""The schema of a list of row ids (its items' bounds, which Litestar leaves out)."""
# Year 0 is no date, and 9999-12 has no end (its next month is past Python's last date).
MONTH_PATTERN = r"^([1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
MONTH = Annotated[
    str, Param(pattern=MONTH_PATTERN, description="A month, YYYY-MM (1000-01 to 9998-12).")
]
# RFC 3339 with its offset: what ``format: date-time`` means (a bare number is not a time).
DATE_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"


def instant(query: str, description: str) -> Any:
    """A query parameter holding an RFC 3339 date-time (read with :func:`parse_instant`)."""
    return Param(
        query=query,
        default=None,
        description=description,
        # Checked by parse_instant, whose message says what is missing (the UTC offset).
        schema_extra={"format": "date-time", "pattern": DATE_TIME_PATTERN},
    )


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """A struct that refuses unknown fields says so: ``additionalProperties: false``."""

    def to_openapi_schema(self, field_definition: Any, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if info.forbid_unknown_fields:  # type: ignore[union-attr]
            schema.additional_properties = False
        for field in info.fields:  # type: ignore[union-attr]
            prop = (schema.properties or {}).get(field.encode_name)
            if isinstance(prop, Schema):
                _constrain_items(prop, field.type)
        return schema


def _constrain_items(prop: Schema, field_type: msgspec.inspect.Type) -> None:
    """A list of constrained strings or integers says its items' constraints (Litestar
    leaves them out)."""
    types = field_type.types if isinstance(field_type, msgspec.inspect.UnionType) else (field_type,)
    for kind in types:
        if not isinstance(kind, msgspec.inspect.ListType):
            continue
        item = kind.item_type
        for branch in [prop, *(prop.one_of or [])]:
            if not (isinstance(branch, Schema) and isinstance(branch.items, Schema)):
                continue
            if isinstance(item, msgspec.inspect.StrType):
                branch.items.pattern = item.pattern
                branch.items.min_length = item.min_length
                branch.items.max_length = item.max_length
            elif isinstance(item, msgspec.inspect.IntType):
                branch.items.minimum = item.ge
                branch.items.maximum = item.le


# -- error bodies --------------------------------------------------------------------------


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """OpenAI's error shape: Ledger's own errors, and the OpenAI provider's, relayed."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    """Anthropic's error shape (the provider adds ``request_id``, which is relayed)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_ERROR_BODIES: dict[Protocol, Any] = {
    "openai": OpenAIError,
    "anthropic": AnthropicError,
    # GET /v1/models answers Anthropic clients (``anthropic-version``) in their shape.
    "either": OpenAIError | AnthropicError,
}

# Why each status is sent; an operation declares only the statuses it can answer with.
_WHY: dict[int, str] = {
    400: "The request is invalid (a body, parameter or value Ledger cannot accept).",
    401: "No key, or a key that is unknown or revoked.",
    403: "The key may not do this: a team key on an admin route, the admin key on a "
    "model route, or another team's data.",
    404: "Not found: the named model, team, key, budget or ledger entry does not exist.",
    409: "Conflict: the name is taken, or the month is already closed or has not ended.",
    413: "The request body is larger than Ledger's limit.",
    415: "The request body is not JSON (``Content-Type``).",
    422: "The provider could not process the request (relayed as it answered).",
    429: "Too many requests with invalid keys from this client (``retry-after``), a hard "
    "budget that cannot cover the request (``x-should-retry: false``), or the "
    "provider's rate limit (relayed).",
    500: "Ledger failed unexpectedly (or the provider did: relayed as it answered).",
    502: "The provider could not be reached, or answered with something unusable.",
    503: "Keys or budgets cannot be checked right now (the database is unreachable), or "
    "the provider is unavailable.",
    504: "The provider did not answer in time.",
    529: "The provider is overloaded (Anthropic's status, relayed).",
}

KEY_ERRORS = (401, 429, 503)
"""What any route that checks a key can answer: no valid key, throttled, keys unreadable."""

ADMIN_ERRORS = (*KEY_ERRORS, 403)
"""Admin routes also refuse team keys."""

GATEWAY_ERRORS: dict[Protocol, tuple[int, ...]] = {
    # Ledger's own refusals and upstream failures. A provider's own error is relayed with
    # its status: those, and 422 (unprocessable) on the OpenAI side, 529 (overloaded) on
    # Anthropic's.
    "openai": (*ADMIN_ERRORS, 400, 404, 413, 415, 422, 502, 504),
    "anthropic": (*ADMIN_ERRORS, 400, 404, 413, 415, 502, 504, 529),
}


def errors(protocol: Protocol, *statuses: int) -> dict[int, ResponseSpec]:
    """The error answers of one operation, each in ``protocol``'s shape; 500 is always one."""
    body = _ERROR_BODIES[protocol]
    return {
        status: ResponseSpec(body, description=_WHY[status], generate_examples=False)
        for status in sorted({*statuses, 500})
    }


def key_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The errors of a route for any valid key (OpenAI's shape), and ``statuses``."""
    return errors("openai", *KEY_ERRORS, *statuses)


def admin_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The errors of a route for the admin key only (OpenAI's shape), and ``statuses``."""
    return errors("openai", *ADMIN_ERRORS, *statuses)


def answers(success: Any, protocol: Protocol, *statuses: int) -> dict[int, ResponseSpec]:
    """The 200 body ``success``, and :func:`errors`."""
    return {
        200: ResponseSpec(success, description="OK", generate_examples=False),
        **errors(protocol, *statuses),
    }


# -- gateway success bodies -----------------------------------------------------------------
# Only the fields clients and Ledger rely on are named; providers add others.


class ChatCompletionMessage(msgspec.Struct):
    role: str
    content: str | None = None


class ChatCompletionChoice(msgspec.Struct):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None


class ChatCompletionUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(msgspec.Struct):
    """OpenAI's ``chat.completion`` object, as the provider sent it."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: ChatCompletionUsage | None = None


class ResponsesUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int | None = None


class ResponseObject(msgspec.Struct):
    """OpenAI's ``response`` object (Responses API), as the provider sent it."""

    id: str
    object: Literal["response"]
    status: str | None = None
    model: str | None = None
    output: list[dict[str, Any]] | None = None
    usage: ResponsesUsage | None = None


class ResponseDeleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool


class ResponseInputItems(msgspec.Struct):
    object: Literal["list"]
    data: list[dict[str, Any]]


class ResponseInputTokens(msgspec.Struct):
    object: str
    input_tokens: int


class AnthropicContentBlock(msgspec.Struct):
    type: str


class AnthropicUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class Embedding(msgspec.Struct):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # a base64 string with encoding_format "base64"


class EmbeddingList(msgspec.Struct):
    """OpenAI's embeddings list, as the provider sent it."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage | None = None


class TextCompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None


class TextCompletion(msgspec.Struct):
    """OpenAI's legacy ``text_completion`` object, as the provider sent it."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: ChatCompletionUsage | None = None


class AnthropicMessage(msgspec.Struct):
    """Anthropic's ``message`` object, as the provider sent it."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[AnthropicContentBlock]
    model: str
    stop_reason: str | None
    usage: AnthropicUsage


class MessageTokensCount(msgspec.Struct):
    """The provider's count, or Ledger's local estimate when the provider has none."""

    input_tokens: int


class OpenAIModel(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[OpenAIModel]


class AnthropicModel(msgspec.Struct):
    type: Literal["model"]
    id: str
    display_name: str
    created_at: str


class AnthropicModelList(msgspec.Struct):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Readiness(msgspec.Struct):
    """Ready (200), degraded (200: entries the database refused await an operator) or not
    ready (503), with the check that failed."""

    status: Literal["ready", "degraded", "not ready"]
    ledger_backlog: int
    database: str
    encodings: list[str] = []  # tokenizer encodings already built
    migrations: str | None = None
    ledger_writes: str | None = None
    ledger_unstored: int = 0
    ledger_salvaged: int = 0


# -- what Litestar cannot derive ---------------------------------------------------------------


def _component(name: str) -> Reference:
    # Components exist only for the structs Litestar registered from a ResponseSpec of the
    # same document (it replaces any given in OpenAPIConfig); the schema test resolves them.
    return Reference(ref=f"#/components/schemas/{name}")


def _object(
    properties: Mapping[str, Schema | Reference], *required: str, description: str | None = None
) -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        properties=dict(properties),
        required=list(required) or None,
        description=description,
    )


_STRING = Schema(type=OpenAPIType.STRING)
_BOOLEAN = Schema(type=OpenAPIType.BOOLEAN)
_OBJECT = Schema(type=OpenAPIType.OBJECT)
# What Ledger accepts for a token count or a number of choices.
_COUNT = Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=10_000_000)
_MODEL = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=200,
    pattern=r"\S",
    description="A model this gateway serves (GET /v1/models).",
)
_MESSAGES = Schema(
    type=OpenAPIType.ARRAY,
    min_items=1,
    items=_object(
        {
            "role": _STRING,
            "content": Schema(
                one_of=[_STRING, Schema(type=OpenAPIType.ARRAY), Schema(type=OpenAPIType.NULL)]
            ),
        },
        "role",
    ),
)

_SEED_FIELDS: dict[str, Schema | Reference] = {
    "model_id": replace(_MODEL, description="The seed API's name for ``model``; not forwarded."),
    "key": Schema(
        type=OpenAPIType.STRING,
        description="The team key, when no Authorization or x-api-key header is sent; "
        "not forwarded.",
    ),
}

_CHAT_FIELDS: dict[str, Schema | Reference] = {
    "model": _MODEL,
    "messages": _MESSAGES,
    "stream": _BOOLEAN,
    "stream_options": _object({"include_usage": _BOOLEAN}),
    "max_tokens": _COUNT,
    "max_completion_tokens": _COUNT,
    "n": _COUNT,
    "user": Schema(type=OpenAPIType.STRING, description="Recorded as the end user."),
}
CHAT_REQUEST = _object(
    _CHAT_FIELDS,
    "model",
    "messages",
    description="An OpenAI chat completion request; forwarded as sent, other fields included.",
)


_TEXT_OR_TOKENS = Schema(
    one_of=[
        _STRING,
        Schema(type=OpenAPIType.ARRAY, items=_STRING),
        Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.INTEGER)),
        Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.INTEGER)),
        ),
    ]
)
EMBEDDINGS_REQUEST = _object(
    {"model": _MODEL, "input": _TEXT_OR_TOKENS, "user": _CHAT_FIELDS["user"]},
    "model",
    "input",
    description="An OpenAI embeddings request; forwarded as sent, other fields included.",
)
COMPLETIONS_REQUEST = _object(
    {
        "model": _MODEL,
        "prompt": _TEXT_OR_TOKENS,
        "stream": _BOOLEAN,
        "stream_options": _CHAT_FIELDS["stream_options"],
        "max_tokens": _COUNT,
        "n": _COUNT,
        "best_of": _COUNT,
        "user": _CHAT_FIELDS["user"],
    },
    "model",
    description="An OpenAI legacy completions request; forwarded as sent, other fields "
    "included. Without max_tokens the provider writes at most 16 tokens.",
)


def _seed(fields: Mapping[str, Schema | Reference], *required: str) -> Schema:
    """The seed API's variant of a request: the model may be named ``model_id`` instead."""
    return replace(
        _object({**fields, **_SEED_FIELDS}, *required),
        any_of=[Schema(required=["model"]), Schema(required=["model_id"])],
    )


SEED_CHAT_REQUEST = _seed(_CHAT_FIELDS, "messages")

_MESSAGE_FIELDS: dict[str, Schema | Reference] = {
    "model": _MODEL,
    "messages": _MESSAGES,
    "max_tokens": _COUNT,
    "stream": _BOOLEAN,
    "metadata": _object(
        {"user_id": Schema(type=OpenAPIType.STRING, description="Recorded as the end user.")}
    ),
}
MESSAGE_REQUEST = _object(
    _MESSAGE_FIELDS,
    "model",
    "messages",
    "max_tokens",
    description="An Anthropic messages request; forwarded as sent, other fields included.",
)
SEED_MESSAGE_REQUEST = _seed(_MESSAGE_FIELDS, "messages", "max_tokens")
_COUNT_FIELDS = {k: v for k, v in _MESSAGE_FIELDS.items() if k not in ("max_tokens", "stream")}
COUNT_TOKENS_REQUEST = _object(_COUNT_FIELDS, "model", "messages")
SEED_COUNT_TOKENS_REQUEST = _seed(_COUNT_FIELDS, "messages")


def _json_data(payload: Schema | Reference) -> Schema:
    """An event's ``data``: JSON text whose value ``payload`` describes."""
    return Schema(
        type=OpenAPIType.STRING, content_media_type="application/json", content_schema=payload
    )


def _when_type(kind: str, properties: Mapping[str, Schema | Reference]) -> Schema:
    """An Anthropic event of type ``kind`` has these properties."""
    return Schema(
        schema_if=_object({"type": Schema(const=kind)}, "type"),
        then=_object(properties, *properties),
    )


_CHAT_COMPLETION_CHUNK = _object(
    {
        "id": _STRING,
        "object": Schema(type=OpenAPIType.STRING, const="chat.completion.chunk"),
        "created": Schema(type=OpenAPIType.INTEGER),
        "model": _STRING,
        "choices": Schema(
            type=OpenAPIType.ARRAY,
            items=_object({"index": Schema(type=OpenAPIType.INTEGER), "delta": _OBJECT}, "index"),
        ),
        "usage": Schema(one_of=[_component("ChatCompletionUsage"), Schema(type=OpenAPIType.NULL)]),
    },
    "id",
    "object",
    "created",
    "model",
    "choices",
    description="A ``chat.completion.chunk``; the last has empty choices and the usage when "
    "the client asked for it (``stream_options.include_usage``).",
)
CHAT_STREAM_EVENT = _object(
    {
        "data": Schema(
            schema_if=Schema(const="[DONE]"),
            schema_else=_json_data(
                Schema(any_of=[_CHAT_COMPLETION_CHUNK, _component("OpenAIError")])
            ),
            description="A chunk, an error (when the provider fails mid-stream), or "
            "``[DONE]`` last.",
        )
    },
    "data",
)
COMPLETION_STREAM_EVENT = _object(
    {
        "data": Schema(
            schema_if=Schema(const="[DONE]"),
            schema_else=_json_data(Schema(any_of=[_OBJECT, _component("OpenAIError")])),
            description="A ``text_completion`` chunk (``choices[].text``), an error, or "
            "``[DONE]`` last.",
        )
    },
    "data",
)
MESSAGE_STREAM_EVENT = _object(
    {
        "event": Schema(
            type=OpenAPIType.STRING,
            description="message_start, content_block_start, ping, content_block_delta, "
            "content_block_stop, message_delta, message_stop or error (and any the provider "
            "adds).",
        ),
        "data": _json_data(
            Schema(
                type=OpenAPIType.OBJECT,
                required=["type"],
                properties={"type": _STRING},
                all_of=[
                    _when_type("message_start", {"message": _component("AnthropicMessage")}),
                    _when_type(
                        "message_delta",
                        {"usage": _object({"output_tokens": Schema(type=OpenAPIType.INTEGER)})},
                    ),
                    _when_type("error", {"error": _component("AnthropicErrorDetail")}),
                ],
            )
        ),
    },
    "event",
    "data",
)


def header(name: str, description: str) -> Parameter:
    """An optional request header the handler reads itself."""
    return Parameter(
        name=name, param_in="header", required=False, schema=_STRING, description=description
    )


GATEWAY_HEADERS = (
    header("x-ledger-user", "The end user to record (else the body's ``user``)."),
    header("x-ledger-tags", "Comma-separated tags to record, for reports and budgets."),
)

CSV = {"text/csv": _STRING}
XLSX = {"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": None}


def documented(
    *,
    request_body: Schema | None = None,
    parameters: Sequence[Parameter] = (),
    content: Mapping[int, Mapping[str, Schema | None]] | None = None,
) -> type[Operation]:
    """An Operation that adds a raw body's schema, header parameters and media types.

    ``content`` maps a status to more media types of that (already declared) response.
    """
    more_content = dict(content or {})

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if request_body is not None:
                self.request_body = RequestBody(
                    content={"application/json": OpenAPIMediaType(schema=request_body)},
                    required=True,
                )
            if parameters:
                self.parameters = [*(self.parameters or []), *parameters]
            for status, media_types in more_content.items():
                response = (self.responses or {})[str(status)]
                assert not isinstance(response, Reference)
                response.content = {
                    **(response.content or {}),
                    **{name: OpenAPIMediaType(schema=s) for name, s in media_types.items()},
                }

    return DocumentedOperation
