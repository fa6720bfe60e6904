"""Reading what a client sent: body decoding, validation, and the fields Ledger needs.

The body itself is forwarded untouched but for a Ledger key in it; these functions only
look at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ledger.errors import InvalidRequest

OPENAI = "openai"
ANTHROPIC = "anthropic"
MODEL_CHARS = 200  # ledger_entries.requested_model: no longer name is routable


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The facts about a request that accounting needs; ``body`` is what goes upstream."""

    protocol: str  # openai | anthropic
    endpoint: str  # chat | messages | count_tokens | responses | embeddings | completions
    body: dict[str, Any]
    model: str
    stream: bool = False
    max_output_tokens: int | None = None
    choices: int = 1
    end_user: str | None = None
    include_usage: bool = False  # the client itself asked for the usage chunk
    rewritten: bool = False  # ``body`` is not the client's bytes: encode it again to forward
    writes_output: bool = True  # False for embeddings: only input tokens are billed
    background: bool = False  # (Responses) answered at once, finished and billed later
    # (Responses) ``previous_response_id`` or ``conversation``: context Ledger cannot see
    stored_context: bool = False


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a clear 400 saying what is wrong with it."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:  # msgspec's answer to some invalid UTF-8 in strings
        raise InvalidRequest("The request body is not valid UTF-8.") from exc
    except RecursionError as exc:  # msgspec's answer to deeply nested arrays or objects
        raise InvalidRequest("The request body is nested too deeply to be a request.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def key_from_body(body: Mapping[str, Any]) -> str | None:
    """The seed API's convention: the client key travels in the body as ``key``."""
    key = body.get("key")
    return key if isinstance(key, str) and key else None


def without_key(body: dict[str, Any]) -> dict[str, Any] | None:
    """``body`` without a Ledger key in it (None when it has none): it never goes upstream.

    Only the seed paths document ``key`` in the body, but every path accepts it, and a
    provider has no business seeing the key — nor a use for the field.
    """
    if "key" not in body:
        return None
    return {k: v for k, v in body.items() if k != "key"}


def stated_model(body: Mapping[str, Any]) -> str | None:
    """The model the body names, checked or not: recorded even when the body is refused."""
    model = body.get("model", body.get("model_id"))
    return model if isinstance(model, str) and model else None


def stated_end_user(protocol: str, body: Mapping[str, Any]) -> str | None:
    """The end user the body names (OpenAI ``user``, Anthropic ``metadata.user_id``), if any.

    Read before the body is validated, so that a refused request is still recorded for
    the end user who sent it.
    """
    if protocol == OPENAI:
        user = body.get("user")
    else:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) and user else None


def normalise_seed_body(body: dict[str, Any]) -> dict[str, Any]:
    """The seed's body names the model ``model_id`` and carries ``key``: neither goes upstream."""
    converted = {k: v for k, v in body.items() if k not in ("key", "model_id")}
    if "model" not in converted and "model_id" in body:
        converted["model"] = body["model_id"]
    return converted


def parse_openai_chat(body: dict[str, Any]) -> ParsedRequest:
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"messages[{index}] must be an object with a string 'role'.",
                param=f"messages[{index}]",
            )
    stream = _optional_bool(body, "stream")
    max_output = _optional_positive_int(body, "max_completion_tokens")
    if max_output is None:
        max_output = _optional_positive_int(body, "max_tokens")
    choices = _optional_positive_int(body, "n") or 1
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage") is True)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    _no_nul(user, "user")
    return ParsedRequest(
        protocol=OPENAI,
        endpoint="chat",
        body=body,
        model=model,
        stream=stream,
        max_output_tokens=max_output,
        choices=choices,
        end_user=user or None,
        include_usage=include_usage,
    )


def parse_openai_responses(body: dict[str, Any]) -> ParsedRequest:
    """A Responses API ``POST /v1/responses`` body."""
    model = _model(body)
    items = body.get("input")
    if items is not None and not isinstance(items, str | list):
        raise InvalidRequest("'input' must be a string or an array of items.", param="input")
    for name in ("instructions", "previous_response_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name)
    conversation = body.get("conversation")
    if conversation is not None and not isinstance(conversation, str | dict):
        raise InvalidRequest("'conversation' must be a string or an object.", param="conversation")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    _no_nul(user, "user")
    return ParsedRequest(
        protocol=OPENAI,
        endpoint="responses",
        body=body,
        model=model,
        stream=_optional_bool(body, "stream"),
        max_output_tokens=_optional_positive_int(body, "max_output_tokens"),
        end_user=user or None,
        background=_optional_bool(body, "background"),
        stored_context=bool(body.get("previous_response_id") or conversation),
    )


def parse_anthropic_messages(body: dict[str, Any], *, count_only: bool = False) -> ParsedRequest:
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages.{index}: must be an object with a string 'role'")
    max_tokens = _optional_positive_int(body, "max_tokens")
    if max_tokens is None and not count_only:
        raise InvalidRequest("max_tokens: field required", param="max_tokens")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object", param="metadata")
    user = metadata.get("user_id") if metadata else None
    _no_nul(user, "metadata.user_id")
    return ParsedRequest(
        protocol=ANTHROPIC,
        endpoint="count_tokens" if count_only else "messages",
        body=body,
        model=model,
        stream=False if count_only else _optional_bool(body, "stream"),
        max_output_tokens=max_tokens,
        end_user=user if isinstance(user, str) and user else None,
    )


def parse_openai_embeddings(body: dict[str, Any]) -> ParsedRequest:
    """``POST /v1/embeddings``: ``input`` is a string, strings, a token array or token arrays."""
    model = _model(body)
    if not _is_text_or_tokens(body.get("input")):
        raise InvalidRequest(
            "'input' must be a non-empty string, an array of strings, an array of token "
            "integers, or an array of such arrays.",
            param="input",
        )
    user = _openai_user(body)
    return ParsedRequest(
        protocol=OPENAI,
        endpoint="embeddings",
        body=body,
        model=model,
        end_user=user,
        writes_output=False,
    )


def parse_openai_completions(body: dict[str, Any]) -> ParsedRequest:
    """``POST /v1/completions`` (legacy): ``prompt`` as embeddings' ``input``; ``max_tokens``.

    OpenAI bills every one of ``best_of`` candidates, so the choices reserved for are the
    larger of ``n`` and ``best_of``.
    """
    model = _model(body)
    prompt = body.get("prompt")
    if prompt is not None and not _is_text_or_tokens(prompt, empty_ok=True):
        raise InvalidRequest(
            "'prompt' must be a string, an array of strings, an array of token integers, "
            "or an array of such arrays.",
            param="prompt",
        )
    stream = _optional_bool(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not _is_tokens(prompt) else 1
    n = _optional_positive_int(body, "n") or 1
    best_of = _optional_positive_int(body, "best_of") or 1
    return ParsedRequest(
        protocol=OPENAI,
        endpoint="completions",
        body=body,
        model=model,
        stream=stream,
        # OpenAI's own default when max_tokens is left out.
        max_output_tokens=_optional_positive_int(body, "max_tokens") or 16,
        choices=max(n, best_of) * prompts,
        end_user=_openai_user(body),
        include_usage=bool(stream_options and stream_options.get("include_usage") is True),
    )


def _openai_user(body: Mapping[str, Any]) -> str | None:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    _no_nul(user, "user")
    return user or None


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _is_text_or_tokens(value: Any, *, empty_ok: bool = False) -> bool:
    if isinstance(value, str):
        return empty_ok or bool(value)
    if not isinstance(value, list) or not value:
        return False
    if _is_tokens(value) or all(isinstance(item, str) for item in value):
        return True
    return all(_is_tokens(item) and item for item in value)


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    if len(model) > MODEL_CHARS:
        raise InvalidRequest("'model' is too long.", param="model")
    _no_nul(model, "model")
    return model


def _no_nul(value: Any, name: str) -> None:
    """Names that are stored (model, end user) cannot hold NUL: PostgreSQL text cannot."""
    if isinstance(value, str) and "\x00" in value:
        raise InvalidRequest(f"'{name}' must not contain NUL characters.", param=name)


def _optional_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return value


def _optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if value < 1:
        raise InvalidRequest(f"'{name}' must be at least 1, got {value}.", param=name)
    if value > 10_000_000:
        raise InvalidRequest(f"'{name}' is implausibly large ({value}).", param=name)
    return value
