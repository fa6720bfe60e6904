"""The one normalised token usage every provider is translated into."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The most tokens one request can plausibly have read (every input bucket together) or
# written (every choice together). The largest context windows are 1-10 million tokens
# and the largest output limits 128 thousand per choice: a count beyond these is not a
# count of anything a model did, so it is not believed (see ``implausibility``).
MAX_INPUT_TOKENS = 10_000_000
MAX_OUTPUT_TOKENS = 10_000_000
# The most one entry may cost, whatever prices an operator configures: $10,000, some
# ten times the dearest request the shipped catalog can price (10M input tokens at
# $15/M plus 10M output tokens at $75/M is $900). Why it matters: a ledger, budget or
# rollup sum is a 64-bit integer of nanos that holds $9.2 billion, so it could only
# overflow after 922,000 entries at this ceiling. Without a ceiling, 65 entries of
# 10**12 tokens per bucket overflowed PostgreSQL's bigint and the next ones were lost.
MAX_ENTRY_COST_NANOS = 10**13


class ImplausibleUsage(ValueError):
    """A provider's usage that cannot be a real count: why, and the usage as it came."""

    def __init__(self, reason: str, raw: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def reported_count(value: Any, name: str) -> int:
    """A token count as a provider reported it, or :class:`ImplausibleUsage`.

    A plausible count is a JSON integer from 0 to :data:`MAX_INPUT_TOKENS` (or an integral
    number such as ``12.0``, which some servers write). ``null`` means "not given" and
    counts 0. Anything else (a negative or fractional number, a string, a boolean, a
    count beyond any model's window) is not a count: usage holding it is not believed.
    """
    if value is None:
        return 0
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImplausibleUsage(f"{name} is {_shown(value)}, not a number of tokens")
    if value < 0:
        raise ImplausibleUsage(f"{name} is negative ({value})")
    if value > MAX_INPUT_TOKENS:
        raise ImplausibleUsage(f"{name} ({value}) is more than any model reads or writes")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in non-overlapping buckets, the same meaning for every provider.

    ``input_tokens`` is *uncached* input only: OpenAI's ``prompt_tokens`` minus its
    cached tokens, and Anthropic's ``input_tokens`` as it is. ``reasoning_tokens`` is
    the part of ``output_tokens`` spent on reasoning (it is not billed twice).
    ``tool_calls`` counts server-side tool uses by name (``web_search_call``,
    ``file_search_call``), which providers bill per call.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict, hash=False)

    @property
    def total_input_tokens(self) -> int:
        """Every prompt token, whether it was cached, written to cache or neither."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens


def implausibility(usage: Usage, *, max_output_tokens: int | None, choices: int = 1) -> str | None:
    """Why ``usage`` cannot be what one request used, or None when it can.

    ``max_output_tokens`` is the output cap the provider was sent (the client's, or the
    one Ledger added), if any: a provider writes at most that per choice.
    """
    if usage.total_input_tokens > MAX_INPUT_TOKENS:
        return (
            f"{usage.total_input_tokens} input tokens is more than any model reads "
            f"({MAX_INPUT_TOKENS})"
        )
    limit = MAX_OUTPUT_TOKENS
    if max_output_tokens is not None:
        limit = min(limit, max_output_tokens * max(choices, 1))
    if usage.output_tokens > limit:
        return f"{usage.output_tokens} output tokens is more than the request allowed ({limit})"
    return None
