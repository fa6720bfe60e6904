"""Tolerant readers for JSON request bodies of unknown shape.

Counting runs on bodies clients sent us before the upstream validated them, so every field may
be missing, null or of the wrong type. These helpers turn anything odd into an empty value
instead of raising.
"""

from __future__ import annotations

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


def count_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    """Count the tokens of `text`, treating special-token strings as plain text."""
    if not text:
        return 0
    # encode_ordinary: user text containing "<|endoftext|>" is text, and encode() would raise.
    return len(encoding.encode_ordinary(text))
