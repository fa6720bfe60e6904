"""Which models a request may use: ``allowed_models`` patterns, globally, per team, per key.

A pattern is a shell-style glob (``gpt-4.1*``, ``claude-*``, ``o3``) matched, case-sensitively,
against the name the client sent and the canonical name of the model it resolves to, so
allowing ``gpt-4.1-mini`` allows its dated snapshot ``gpt-4.1-mini-2025-04-14`` too. Each
level that has a list must allow the model; a level without one (``None``) allows anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

Patterns = tuple[str, ...]

MAX_PATTERNS = 100
_MAX_PATTERN_LENGTH = 200


class PatternError(ValueError):
    """An ``allowed_models`` value that cannot be used; the message says why."""


def parse_patterns(value: object) -> Patterns:
    """Patterns from a list of strings or one comma-separated string, checked.

    An empty list is refused rather than read as "nothing allowed" or "anything allowed":
    the two readings are opposite, and leaving the setting out already means the latter.
    """
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise PatternError("allowed_models must be a list of model name patterns")
    patterns: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise PatternError(f"allowed_models: {item!r} is not a model name pattern")
        pattern = item.strip()
        if "," in pattern or any(c.isspace() for c in pattern):
            raise PatternError(f"allowed_models: {pattern!r} may not hold commas or spaces")
        if len(pattern) > _MAX_PATTERN_LENGTH:
            raise PatternError(f"allowed_models: {pattern[:40]!r}… is too long")
        if pattern not in patterns:
            patterns.append(pattern)
    if not patterns:
        raise PatternError(
            "allowed_models must name at least one pattern; leave it out (or null) to allow "
            "every model"
        )
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(f"allowed_models holds at most {MAX_PATTERNS} patterns")
    return tuple(patterns)


def stored_patterns(text: str | None) -> Patterns | None:
    """Patterns as kept in the database (comma-separated), ``None`` when unrestricted."""
    if not text:
        return None
    return tuple(part for part in text.split(",") if part)


def storable(patterns: Patterns | None) -> str | None:
    return ",".join(patterns) if patterns else None


def allows(patterns: Patterns | None, names: Iterable[str]) -> bool:
    """Whether ``patterns`` (``None``: no restriction) match any of a model's ``names``."""
    if patterns is None:
        return True
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)
