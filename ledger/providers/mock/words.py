"""The mock's vocabulary: replies that depend only on the request, so runs are repeatable."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_WORDS = [
    "ledger",
    "counts",
    "every",
    "token",
    "so",
    "that",
    "the",
    "monthly",
    "report",
    "reconciles",
    "to",
    "the",
    "cent",
    "and",
    "no",
    "team",
    "spends",
    "more",
    "than",
    "its",
    "budget",
    "allows",
    "while",
    "requests",
    "stream",
    "through",
    "quickly",
]


def words(seed: int, count: int) -> list[str]:
    """``count`` words of the vocabulary, starting where ``seed`` says."""
    return [_WORDS[(seed + i) % len(_WORDS)] for i in range(max(0, count))]


def prose(seed: int) -> str:
    """A sentence of 12 to 35 words."""
    return " ".join(words(seed, 12 + seed % 24))


def seed_of(value: Any) -> int:
    """A stable number for any JSON value (the same across processes, unlike ``hash``)."""
    return int(digest(value)[:8], 16)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
