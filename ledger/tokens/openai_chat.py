"""Prompt token counting for OpenAI Chat Completions request bodies.

Messages and tool definitions are counted with the method of the OpenAI cookbook "How to count
tokens with tiktoken" (`num_tokens_from_messages` and `num_tokens_for_tools`), which matches the
`prompt_tokens` the API reports for its examples. Where the cookbook is silent (content parts,
images, tool calls, nested parameter schemas, structured-output schemas) we add a documented
best effort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import tiktoken

from ledger.tokens._values import as_dict, as_list, as_text, count_tokens, json_text
from ledger.tokens.encodings import CL100K_BASE, encoding_name_for_model, get_encoding
from ledger.tokens.media import PDF_PAGE_TOKENS, audio_tokens, image_size, is_pdf, pdf_tokens

# Cookbook: every message is framed as <|start|>{role/name}\n{content}<|end|>\n.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
# Cookbook: every reply is primed with <|start|>assistant<|message|>.
_REPLY_PRIMING_TOKENS = 3
# OpenAI does not publish how an assistant's tool calls are rendered. Each call is framed much
# like a message, so we allow the per-message framing for each one on top of name + arguments.
_TOKENS_PER_TOOL_CALL = 3

# OpenAI's published image rules (images guide, "Calculating costs"), by model family.
# Tile models: with detail "low", the base tokens only; otherwise the image is fitted in
# 2048x2048, its shortest side brought down to 768, and each 512px tile costs `tile`
# tokens on top of `base`. Patch models: one token per 32px patch, at most 1536 patches
# (a larger image is scaled down to fit), times the model's multiplier, whatever the detail.
_TILE_SIZE = 512
_TILE_MAX_SIDE = 2048
_TILE_SHORT_SIDE = 768
_PATCH_SIZE = 32
_PATCH_LIMIT = 1536


@dataclass(frozen=True)
class ImageRule:
    """How one model family counts an image: tiles (`base` + `tile` each) or patches."""

    base: int = 0
    tile: int = 0
    patch_multiplier: Fraction | None = None  # set for patch models

    def tokens(self, detail: Any, size: tuple[int, int] | None) -> int:
        """An image's prompt tokens; an unknown `size` gives the most any size can cost.

        `auto` and unknown details are counted as `high`, the dearer one.
        """
        if self.patch_multiplier is not None:
            if size is None:
                patches = _PATCH_LIMIT
            else:
                width, height = size
                # Below the limit this is exact; above it OpenAI scales the image down to at
                # most the limit, so the limit is an upper bound.
                patches = min(
                    _PATCH_LIMIT, _ceil_div(width, _PATCH_SIZE) * _ceil_div(height, _PATCH_SIZE)
                )
            return math.ceil(patches * self.patch_multiplier)
        if detail == "low":
            return self.base
        return self.base + self.tile * _tiles(size)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tiles(size: tuple[int, int] | None) -> int:
    if size is None:
        # The most: a 768px short side and a 2048px long one make 2 x 4 tiles.
        return _ceil_div(_TILE_SHORT_SIDE, _TILE_SIZE) * _ceil_div(_TILE_MAX_SIDE, _TILE_SIZE)
    # Exact fractions: float rounding could add a tile at an exact 512px boundary.
    w, h = Fraction(size[0]), Fraction(size[1])
    fit = min(Fraction(1), Fraction(_TILE_MAX_SIDE) / max(w, h))  # fit in 2048x2048
    w, h = w * fit, h * fit
    shrink = min(Fraction(1), Fraction(_TILE_SHORT_SIDE) / min(w, h))  # shortest side 768
    w, h = w * shrink, h * shrink
    return math.ceil(w / _TILE_SIZE) * math.ceil(h / _TILE_SIZE)


# Model families, most specific first; a model is in a family when its name (after any
# `provider/` prefix) is the family's or starts with it and a dash (a dated snapshot).
_IMAGE_RULES: tuple[tuple[str, ImageRule], ...] = (
    ("gpt-4o-mini", ImageRule(base=2833, tile=5667)),
    ("gpt-4.1-mini", ImageRule(patch_multiplier=Fraction("1.62"))),
    ("gpt-4.1-nano", ImageRule(patch_multiplier=Fraction("2.46"))),
    ("gpt-5-mini", ImageRule(patch_multiplier=Fraction("1.62"))),
    ("gpt-5-nano", ImageRule(patch_multiplier=Fraction("2.46"))),
    ("o4-mini", ImageRule(patch_multiplier=Fraction("1.72"))),
    ("gpt-5", ImageRule(base=70, tile=140)),
    ("o1", ImageRule(base=75, tile=150)),
    ("o3", ImageRule(base=75, tile=150)),
    ("computer-use-preview", ImageRule(base=65, tile=129)),
    ("gpt-4o", ImageRule(base=85, tile=170)),
    ("chatgpt-4o-latest", ImageRule(base=85, tile=170)),
    ("gpt-4.1", ImageRule(base=85, tile=170)),
    ("gpt-4.5", ImageRule(base=85, tile=170)),
    ("gpt-4-turbo", ImageRule(base=85, tile=170)),
)
# A model of no known family (a newer one, another host's) is counted with the patch rule
# at the largest published multiplier: at most 3,779 tokens an image, above every rule
# above but gpt-4o-mini's (whose low price is why its counts are so high).
UNKNOWN_IMAGE_RULE = ImageRule(patch_multiplier=Fraction("2.46"))


def image_rule_for(model: str) -> ImageRule:
    """The image token rule of `model`'s family, or `UNKNOWN_IMAGE_RULE`."""
    name = as_text(model).rsplit("/", 1)[-1].lower()
    for family, rule in _IMAGE_RULES:
        if name == family or name.startswith(family + "-"):
            return rule
    return UNKNOWN_IMAGE_RULE


@dataclass(frozen=True)
class _ToolConstants:
    """The per-model constants of the cookbook's `num_tokens_for_tools`."""

    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


# The cookbook gives the gpt-4o / gpt-4o-mini constants; we use them for every o200k model.
_O200K_TOOL_CONSTANTS = _ToolConstants(7, 3, 3, -3, 3, 12)
# The cookbook's gpt-3.5-turbo / gpt-4 constants, used for every cl100k model.
_CL100K_TOOL_CONSTANTS = _ToolConstants(10, 3, 3, -3, 3, 12)

# Keys of a parameter schema the cookbook formula reads; any others are counted as JSON.
_COOKBOOK_PROPERTY_KEYS = frozenset({"type", "description", "enum"})


def count_text_tokens(model: str, text: str) -> int:
    """Count the tokens of `text` in the encoding `model` uses (0 if `text` is not a string).

    Special-token strings such as "<|endoftext|>" are counted as ordinary text.
    """
    return count_tokens(get_encoding(encoding_name_for_model(model)), as_text(text))


def count_openai_chat_prompt(model: str, body: dict[str, Any]) -> int:
    """Estimate the `prompt_tokens` of a Chat Completions request body for `model`.

    Counts `messages` (string content and content parts: text, refusals, images), assistant
    `tool_calls` and legacy `function_call`, `tool` role messages, `tools` / legacy `functions`
    definitions and a `json_schema` `response_format`. Messages and tools follow the OpenAI
    cookbook exactly; images use the model family's published rule (`image_rule_for`), with
    the size read from a `data:` URL's header, or the most any size costs for a remote one. Inline PDF files and audio count at
    the upper bounds of `ledger.tokens.media`; a file Ledger cannot read (a `file_id`, a file
    that is not a PDF) counts as one PDF page.

    Never raises on an odd body: values of the wrong type are skipped, and a body that is not
    a dict counts as 0.
    """
    return measure_openai_chat_prompt(model, body)[0]


def measure_openai_chat_prompt(model: str, body: dict[str, Any]) -> tuple[int, str | None]:
    """`count_openai_chat_prompt`, and what in the prompt has no upper bound (None: nothing).

    The second value describes the first part whose cost Ledger cannot bound: a file sent
    by `file_id` (Ledger cannot see it) or a file that is not a PDF.
    """
    if not isinstance(body, dict):
        return 0, None
    encoding_name = encoding_name_for_model(model)
    encoding = get_encoding(encoding_name)
    unbounded: list[str] = []
    images = image_rule_for(model)
    tokens = sum(
        _count_message(encoding, message, unbounded, images)
        for message in as_list(body.get("messages"))
    )
    tokens += _REPLY_PRIMING_TOKENS
    constants = _CL100K_TOOL_CONSTANTS if encoding_name == CL100K_BASE else _O200K_TOOL_CONSTANTS
    tokens += _count_tool_definitions(encoding, body, constants)
    tokens += _count_response_format(encoding, body.get("response_format"))
    return tokens, (unbounded[0] if unbounded else None)


def _count_message(
    encoding: tiktoken.Encoding, message: Any, unbounded: list[str], images: ImageRule
) -> int:
    tokens = _TOKENS_PER_MESSAGE
    if not isinstance(message, dict):
        return tokens
    # Like the cookbook, every string field is counted (role, name, tool_call_id, refusal, ...).
    for key, value in message.items():
        if key == "content":
            tokens += _count_content(encoding, value, unbounded, images)
        elif key == "tool_calls":
            tokens += sum(_count_tool_call(encoding, call) for call in as_list(value))
        elif key == "audio" and isinstance(value, dict):
            # An assistant's earlier audio reply, sent back by id: the provider replays it.
            unbounded.append("an earlier audio reply referenced by id, which Ledger cannot read")
        elif key == "function_call":  # legacy single call: {"name": ..., "arguments": ...}
            tokens += _count_tool_call(encoding, {"function": value})
        elif key == "name":
            if isinstance(value, str) and value:
                tokens += count_tokens(encoding, value) + _TOKENS_PER_NAME
        elif isinstance(value, str):
            tokens += count_tokens(encoding, value)
    return tokens


def _count_content(
    encoding: tiktoken.Encoding, content: Any, unbounded: list[str], images: ImageRule
) -> int:
    if isinstance(content, str):
        return count_tokens(encoding, content)
    return sum(_count_content_part(encoding, part, unbounded, images) for part in as_list(content))


def _count_content_part(
    encoding: tiktoken.Encoding, part: Any, unbounded: list[str], images: ImageRule
) -> int:
    if isinstance(part, str):  # not valid, but clearly meant as text
        return count_tokens(encoding, part)
    if not isinstance(part, dict):
        return 0
    part_type = part.get("type")
    if part_type == "image_url":
        image = as_dict(part.get("image_url"))
        url = image.get("url")
        # Only a data: URL's size can be read; a remote image counts at its largest.
        size = image_size(url) if isinstance(url, str) and url.startswith("data:") else None
        return images.tokens(image.get("detail"), size)
    if part_type == "refusal":
        return count_tokens(encoding, as_text(part.get("refusal")))
    if part_type == "input_audio":
        return audio_tokens(as_dict(part.get("input_audio")).get("data"))
    if part_type == "file":
        file = as_dict(part.get("file"))
        tokens = count_tokens(encoding, as_text(file.get("filename")))
        data = file.get("file_data")
        if isinstance(data, str) and is_pdf(data):
            return tokens + pdf_tokens(data)
        if isinstance(data, str):
            unbounded.append("a file that is not a PDF")
        else:
            unbounded.append("a file sent by file_id, which Ledger cannot read")
        return tokens + PDF_PAGE_TOKENS
    return count_tokens(encoding, as_text(part.get("text")))


def _count_tool_call(encoding: tiktoken.Encoding, call: Any) -> int:
    call = as_dict(call)
    # Function calls carry {"name", "arguments"}; custom tool calls carry {"name", "input"}.
    function = as_dict(call.get("function")) or as_dict(call.get("custom"))
    if not function:
        return 0
    arguments = function.get("arguments", function.get("input"))
    return (
        _TOKENS_PER_TOOL_CALL
        + count_tokens(encoding, as_text(function.get("name")))
        + count_tokens(encoding, json_text(arguments))
    )


def _count_tool_definitions(
    encoding: tiktoken.Encoding, body: dict[str, Any], constants: _ToolConstants
) -> int:
    functions: list[tuple[dict[Any, Any], int]] = []
    for tool in as_list(body.get("tools")):
        tool = as_dict(tool)
        if isinstance(tool.get("function"), dict):
            functions.append((tool["function"], 0))
        elif isinstance(tool.get("custom"), dict):
            # Custom tools have no parameters but may carry a grammar: count it as JSON.
            custom = tool["custom"]
            functions.append((custom, count_tokens(encoding, json_text(custom.get("format")))))
    for function in as_list(body.get("functions")):  # legacy `functions` parameter
        if isinstance(function, dict):
            functions.append((function, 0))
    if not functions:
        return 0
    tokens = sum(_count_function(encoding, fn, constants) + extra for fn, extra in functions)
    return tokens + constants.func_end


def _count_function(
    encoding: tiktoken.Encoding, function: dict[Any, Any], constants: _ToolConstants
) -> int:
    """The cookbook's `num_tokens_for_tools` for one function, without its `func_end`."""
    tokens = constants.func_init
    name = as_text(function.get("name"))
    description = as_text(function.get("description")).removesuffix(".")
    tokens += count_tokens(encoding, f"{name}:{description}")
    properties = as_dict(as_dict(function.get("parameters")).get("properties"))
    if not properties:
        return tokens
    tokens += constants.prop_init
    for key, schema in properties.items():
        tokens += constants.prop_key
        schema = as_dict(schema)
        if "enum" in schema:
            tokens += constants.enum_init
            for item in as_list(schema["enum"]):
                tokens += constants.enum_item + count_tokens(encoding, json_text(item))
        p_type = _schema_type(schema.get("type"))
        p_description = as_text(schema.get("description")).removesuffix(".")
        tokens += count_tokens(encoding, f"{key}:{p_type}:{p_description}")
        # Beyond the cookbook: nested objects, array items, formats... are real prompt text.
        extra = {k: v for k, v in schema.items() if k not in _COOKBOOK_PROPERTY_KEYS}
        if extra:
            tokens += count_tokens(encoding, json_text(extra))
    return tokens


def _schema_type(value: Any) -> str:
    if isinstance(value, str):
        return value
    return " | ".join(item for item in as_list(value) if isinstance(item, str))


def _count_response_format(encoding: tiktoken.Encoding, response_format: Any) -> int:
    # Structured outputs put the schema in the prompt. OpenAI does not publish the rendering,
    # so we count the schema's name, description and compact JSON.
    json_schema = as_dict(as_dict(response_format).get("json_schema"))
    if not json_schema:
        return 0
    return (
        count_tokens(encoding, as_text(json_schema.get("name")))
        + count_tokens(encoding, as_text(json_schema.get("description")))
        + count_tokens(encoding, json_text(json_schema.get("schema")))
    )
