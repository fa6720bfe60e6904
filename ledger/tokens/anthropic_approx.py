"""A local, deliberately high estimate of an Anthropic Messages prompt's input tokens.

Anthropic's tokenizer is not public. When the upstream offers no `count_tokens` endpoint (and
for the built-in mock provider) we count the prompt's text with o200k_base, add a safety margin
and fixed allowances for framing, images, documents and the tool-use system prompt.
"""

from __future__ import annotations

import math
from typing import Any

from ledger.tokens._values import as_dict, as_list, as_text, count_tokens, json_text
from ledger.tokens.encodings import O200K_BASE, get_encoding
from ledger.tokens.media import PDF_PAGE_TOKENS, pdf_tokens

# Claude's tokenizer produces more tokens than o200k_base for the same text, notably for code
# and non-English text; 15% on top keeps the estimate above the real count in most prompts.
_SAFETY_MARGIN = 1.15
# Framing around each message (role markers, turn separators) and around the whole request.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REQUEST = 3
# Anthropic adds a hidden system prompt whenever tools are given. This is the largest value in
# its published table (Claude 3 Opus, tool_choice auto).
_TOOL_USE_SYSTEM_PROMPT_TOKENS = 530
# Anthropic: tokens ≈ width * height / 750, and images are downscaled to about 1.15 megapixels,
# so about 1600 tokens is the most one image costs. Requests carry no image sizes, so every
# image is counted at that ceiling.
_IMAGE_PIXELS_PER_TOKEN = 750
_IMAGE_MAX_TOKENS = 1600
# A base64 PDF is bounded by its pages (`ledger.tokens.media`). One Ledger cannot read (a URL
# or a file id) counts as one page, and is reported as unbounded: a hard budget refuses it.
_UNREAD_DOCUMENT_TOKENS = PDF_PAGE_TOKENS
# Blocks whose text and nested content are all of their prompt; any other block counts
# every field but its nested content as JSON text, which errs high.
_TEXT_BLOCKS = frozenset({"text", "tool_result", "search_result"})
# tool_result and document blocks nest content blocks; deeper nesting is junk, not a prompt.
_MAX_NESTING = 8


def approximate_anthropic_prompt(body: dict[str, Any]) -> int:
    """Approximate the `input_tokens` of an Anthropic Messages request body, erring high.

    This is an approximation meant to over-estimate, not Anthropic's count: all text in
    `system`, `messages` (text, tool_use input JSON, tool_result content, thinking, text
    documents) and `tools` (name, description, input_schema JSON) is counted with o200k_base
    and multiplied by 1.15; then 4 tokens per message, 3 per request, 530 for the tool-use
    system prompt when tools are present, 1600 per image (Anthropic's per-image ceiling, as
    image sizes are unknown) and 4600 per PDF page (`ledger.tokens.media`) are added.

    Never raises on an odd body: values of the wrong type are skipped, and a body that is not
    a dict counts as 0.
    """
    return measure_anthropic_prompt(body)[0]


def measure_anthropic_prompt(body: dict[str, Any]) -> tuple[int, str | None]:
    """`approximate_anthropic_prompt`, and what in the prompt has no upper bound (None: nothing).

    The second value describes the first block whose cost Ledger cannot bound: a document
    by URL or file id, or a container upload.
    """
    if not isinstance(body, dict):
        return 0, None
    tally = _Tally()
    system = body.get("system")
    if isinstance(system, str):
        tally.texts.append(system)
    else:
        tally.add_blocks(system, depth=0)
    messages = as_list(body.get("messages"))
    for message in messages:
        content = as_dict(message).get("content")
        if isinstance(content, str):
            tally.texts.append(content)
        else:
            tally.add_blocks(content, depth=0)
    tools = [tool for tool in as_list(body.get("tools")) if isinstance(tool, dict)]
    for tool in tools:
        tally.add_tool(tool)

    encoding = get_encoding(O200K_BASE)
    text_tokens = sum(count_tokens(encoding, text) for text in tally.texts)
    tokens = math.ceil(text_tokens * _SAFETY_MARGIN) + tally.fixed_tokens
    tokens += _TOKENS_PER_REQUEST + _TOKENS_PER_MESSAGE * len(messages)
    if tools:
        tokens += _TOOL_USE_SYSTEM_PROMPT_TOKENS
    return tokens, (tally.unbounded[0] if tally.unbounded else None)


def _image_tokens(width: int | None = None, height: int | None = None) -> int:
    """Anthropic's image formula, capped at its per-image ceiling; unknown size → the ceiling."""
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return _IMAGE_MAX_TOKENS
    return min(_IMAGE_MAX_TOKENS, math.ceil(width * height / _IMAGE_PIXELS_PER_TOKEN))


class _Tally:
    """Collects the text of a request (to be tokenized) and fixed allowances (images, PDFs)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed_tokens = 0
        self.unbounded: list[str] = []

    def add_blocks(self, blocks: Any, depth: int) -> None:
        if depth > _MAX_NESTING:
            return
        for block in as_list(blocks):
            if isinstance(block, str):  # not valid, but clearly meant as text
                self.texts.append(block)
            elif isinstance(block, dict):
                self.add_block(block, depth)

    def add_block(self, block: dict[Any, Any], depth: int) -> None:
        block_type = block.get("type")
        if block_type == "image":
            self.fixed_tokens += _image_tokens()
        elif block_type == "document":
            self.add_document(block, depth)
        elif block_type in ("tool_use", "server_tool_use", "mcp_tool_use"):
            self.texts.append(as_text(block.get("name")))
            self.texts.append(json_text(block.get("input")))
        elif block_type == "thinking":
            # Earlier turns' thinking is usually dropped upstream; counting it errs high.
            self.texts.append(as_text(block.get("thinking")))
        elif block_type == "redacted_thinking":
            pass  # encrypted payload, not text
        elif block_type == "container_upload":
            self.unbounded.append("a container upload by file id, which Ledger cannot read")
        elif block_type in _TEXT_BLOCKS:
            self.texts.append(as_text(block.get("text")))
            if block_type == "search_result":
                self.texts.append(as_text(block.get("title")))
                self.texts.append(as_text(block.get("source")))
            self.add_content(block.get("content"), depth)
        else:
            # Server tool results and unknown blocks: every field as JSON (encrypted search
            # results decrypt to less text than their base64 tokenizes to), then the
            # nested content as blocks, so an image inside is an image.
            self.texts.append(json_text({k: v for k, v in block.items() if k != "content"}))
            self.add_content(block.get("content"), depth)

    def add_content(self, content: Any, depth: int) -> None:
        if isinstance(content, str):
            self.texts.append(content)
        else:
            self.add_blocks(content, depth + 1)

    def add_document(self, block: dict[Any, Any], depth: int) -> None:
        self.texts.append(as_text(block.get("title")))
        self.texts.append(as_text(block.get("context")))
        source = as_dict(block.get("source"))
        source_type = source.get("type")
        if source_type == "text":
            self.texts.append(as_text(source.get("data")))
        elif source_type == "content":
            self.add_content(source.get("content"), depth)
        elif source_type == "base64":
            self.fixed_tokens += pdf_tokens(source.get("data"))
        else:
            self.unbounded.append(
                f"a document with a {source_type!r} source, which Ledger cannot read"
            )
            self.fixed_tokens += _UNREAD_DOCUMENT_TOKENS

    def add_tool(self, tool: dict[Any, Any]) -> None:
        self.texts.append(as_text(tool.get("name")))
        self.texts.append(as_text(tool.get("description")))
        if "input_schema" in tool:
            self.texts.append(json_text(tool.get("input_schema")))
        else:
            # Server tools (web search, code execution...) are configured by other fields.
            rest = {k: v for k, v in tool.items() if k not in ("name", "description")}
            self.texts.append(json_text(rest))
