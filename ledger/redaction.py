"""Provider keys cut out of anything Ledger relays, stores or logs.

A provider may echo the key it was sent ("Incorrect API key provided: sk-…"). Ledger
holds every configured provider key, so it can find them in a provider's words before
they reach a client, a ledger entry or a log line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TypeVar
from urllib.parse import quote

REDACTED = "[REDACTED]"
# A key shorter than this is no secret worth the name, and cutting it out of every text
# would cut common words too.
_MIN_SECRET = 8
# Any run of this many consecutive characters of a key is cut out, with as much of the
# key as continues on either side: a provider that echoes a truncated or partly masked key
# still gives nothing away. Windows start every _STEP characters, so any run of at least
# _WINDOW + _STEP - 1 characters contains one.
_WINDOW = 16
_STEP = 4

_Text = TypeVar("_Text", str, bytes)


class Redactor:
    """Cuts the given secrets (as written, URL-encoded or JSON-escaped) out of text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET:
                forms.update(_spellings(secret))
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._windows = tuple(
            (form, offset, form[offset : offset + _WINDOW])
            for form in self._forms
            for offset in _offsets(len(form))
        )
        self._bytes = tuple((f.encode(), o, w.encode()) for f, o, w in self._windows)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, value: str) -> str:
        """``value`` with every secret in it replaced by ``[REDACTED]``."""
        return _redact(value, self._windows, REDACTED) if self._forms else value

    def bytes(self, value: bytes) -> bytes:
        """The same for bytes (a relayed body or stream event)."""
        return _redact(value, self._bytes, REDACTED.encode()) if self._forms else value

    def maybe(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)


def _spellings(secret: str) -> set[str]:
    escaped = json.dumps(secret)[1:-1]
    return {secret, quote(secret, safe=""), escaped, escaped.replace("/", "\\/")}


def _offsets(length: int) -> list[int]:
    if length <= _WINDOW:
        return [0]
    offsets = list(range(0, length - _WINDOW + 1, _STEP))
    if offsets[-1] != length - _WINDOW:
        offsets.append(length - _WINDOW)  # the key's last characters too
    return offsets


def _redact(value: _Text, windows: tuple[tuple[_Text, int, _Text], ...], mark: _Text) -> _Text:
    spans: list[tuple[int, int]] = []
    for form, offset, window in windows:
        start = value.find(window)
        while start != -1:
            # Grow the match over whatever more of the key surrounds it.
            low, high = start, start + len(window)
            key_low, key_high = offset, offset + len(window)
            while low > 0 and key_low > 0 and value[low - 1] == form[key_low - 1]:
                low, key_low = low - 1, key_low - 1
            while high < len(value) and key_high < len(form) and value[high] == form[key_high]:
                high, key_high = high + 1, key_high + 1
            spans.append((low, high))
            start = value.find(window, high)
    if not spans:
        return value
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    parts: list[_Text] = []
    position = 0
    for low, high in merged:
        parts.append(value[position:low])
        parts.append(mark)
        position = high
    parts.append(value[position:])
    return value[:0].join(parts)
