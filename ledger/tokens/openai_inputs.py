"""Token counts of the OpenAI endpoints whose input is text or token ids, not messages.

``POST /v1/embeddings`` takes ``input`` and the legacy ``POST /v1/completions`` takes
``prompt``: a string, a list of strings, a list of token ids, or a list of such lists.
Token ids are counted as they are (one each); text in the model's encoding.
"""

from __future__ import annotations

from typing import Any

from ledger.tokens._values import count_tokens
from ledger.tokens.encodings import encoding_name_for_model, get_encoding

_FIELDS = {"embeddings": "input", "completions": "prompt"}


def measure_text_input(model: str, endpoint: str, body: dict[str, Any]) -> tuple[int, None]:
    """The tokens of an embeddings ``input`` or a completions ``prompt`` (nothing unbounded)."""
    return count_text_input(model, body.get(_FIELDS[endpoint])), None


def count_text_input(model: str, value: Any) -> int:
    """The tokens of a string, a token array, or a list of either."""
    encoding = get_encoding(encoding_name_for_model(model))
    if isinstance(value, str):
        return count_tokens(encoding, value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            total += 1
        elif isinstance(item, str):
            total += count_tokens(encoding, item)
        elif isinstance(item, list):
            total += len(item)
    return total
