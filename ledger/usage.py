"""The one normalised token usage every provider is translated into."""

from __future__ import annotations

from dataclasses import dataclass, field

# The most tokens one bucket of one request can plausibly hold (a trillion); providers'
# counts beyond it are not believed, so money stays far inside 64-bit integers.
MAX_TOKENS = 10**12


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in non-overlapping buckets, the same meaning for every provider.

    ``input_tokens`` is *uncached* input only: OpenAI's ``prompt_tokens`` minus its
    cached tokens, and Anthropic's ``input_tokens`` as it is. ``reasoning_tokens`` is
    the part of ``output_tokens`` spent on reasoning (it is not billed twice): a provider
    that reports reasoning beside ``completion_tokens`` has it added to ``output_tokens``.

    Besides tokens, what the provider says about how it served the request, each priced
    by ``ledger.pricing.price_cost``: ``service_tier`` (OpenAI flex / priority / scale /
    default, Anthropic standard / priority / batch), ``inference_geo`` (Anthropic's data
    residency, ``"us"``), ``speed`` (Anthropic's ``"fast"`` mode), ``regional`` (OpenAI's
    regional processing), ``tool_calls`` (server-side tool uses by name, e.g.
    ``{"web_search": 2}``; calls, not tokens) and ``provider_cost_nanos`` (the cost the
    provider itself reported, e.g. OpenRouter's ``usage.cost``; kept beside Ledger's own).
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    regional: bool = False
    tool_calls: dict[str, int] = field(default_factory=dict, hash=False)
    provider_cost_nanos: int | None = None

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
