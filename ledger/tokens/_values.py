"""Tolerant readers for JSON request bodies of unknown shape.

Counting runs on bodies clients sent us before the upstream validated them, so every field may
be missing, null or of the wrong type. These helpers turn anything odd into an empty value
instead of raising.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import tiktoken


def as_dict(value: Any) -> dict[Any, Any]:
    """Return `value` if it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """Return `value` if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def as_text(value: Any) -> str:
    """Return `value` if it is a string, else an empty string."""
    return value if isinstance(value, str) else ""


def json_text(value: Any) -> str:
    """Return `value` as compact JSON, a string unchanged, or "" if it cannot be serialised."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):  # circular or absurdly deep junk
        return ""


# Long texts are counted in pieces of about this size: each call into tiktoken is bounded.
_PIECE_CHARS = 64 * 1024


def count_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    """Count the tokens of `text`, treating special-token strings as plain text."""
    if not text:
        return 0
    # encode_ordinary: user text containing "<|endoftext|>" is text, and encode() would raise.
    if len(text) <= _CACHED_CHARS:
        return _count_short(encoding, text)
    if len(text) <= _PIECE_CHARS:
        return _count_ordinary(encoding, text)
    return sum(_count_ordinary(encoding, piece) for piece in _pieces(text))


def _count_ordinary(encoding: tiktoken.Encoding, text: str) -> int:
    """``len(encoding.encode_ordinary(text))``, without the list of token ids.

    ``encode_ordinary`` lets go of the GIL to encode, then takes it back to build a Python
    int per token, and to free them: with a 1M-token prompt counted in a worker thread,
    some 25 ms per prompt during which the event loop could not run. tiktoken's buffer
    encoder (what ``encode_to_numpy`` uses, without needing numpy) returns the ids as
    one block of memory. With no special token allowed it encodes as ``encode_ordinary``
    does (``tests/unit/test_tokens.py``).
    """
    to_buffer = getattr(encoding._core_bpe, "encode_to_tiktoken_buffer", None)
    if to_buffer is None:  # a tiktoken without it: the list, as before
        return len(encoding.encode_ordinary(text))
    try:
        ids = to_buffer(text, _NO_SPECIAL_TOKENS)
    except UnicodeEncodeError:
        # Lone surrogates (JSON may carry them) are not UTF-8: replaced, as tiktoken does.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = to_buffer(text, _NO_SPECIAL_TOKENS)
    return memoryview(ids).nbytes // 4


_NO_SPECIAL_TOKENS: frozenset[str] = frozenset()


# Role names, system prompts and tool definitions come back with nearly every request of
# an application. Each tiktoken call also lets go of the GIL, and in a busy process getting
# it back can take up to the interpreter's switch interval: a short text seen before is not
# worth that. At most 8192 texts of 2,048 characters: under 20 MB in the worst case.
_CACHED_CHARS = 2048


@functools.lru_cache(maxsize=8192)
def _count_short(encoding: tiktoken.Encoding, text: str) -> int:
    return _count_ordinary(encoding, text)


def _pieces(text: str) -> list[str]:
    """Split before a space that follows a non-space: no pre-token of the cl100k or o200k
    patterns crosses such a point, so the pieces' counts add up to the whole's exactly."""
    pieces = []
    start = 0
    while len(text) - start > _PIECE_CHARS:
        cut = start + _PIECE_CHARS
        while cut < len(text) and not (text[cut] == " " and not text[cut - 1].isspace()):
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces
