"""The one normalised token usage every provider is translated into."""

from __future__ import annotations

from dataclasses import dataclass

# The most tokens one bucket of one request can plausibly hold (a trillion); providers'
# counts beyond it are not believed, so money stays far inside 64-bit integers.
MAX_TOKENS = 10**12


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in non-overlapping buckets, the same meaning for every provider.

    ``input_tokens`` is *uncached* input only: OpenAI's ``prompt_tokens`` minus its
    cached tokens, and Anthropic's ``input_tokens`` as it is. ``reasoning_tokens`` is
    the part of ``output_tokens`` spent on reasoning (it is not billed twice). Audio
    tokens have buckets of their own beside the text ones (``input_audio_tokens``
    uncached, ``cache_read_audio_tokens``, ``output_audio_tokens``): audio models bill
    them at their own, higher prices.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    cache_read_audio_tokens: int = 0
    output_audio_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        """Every prompt token, whether it was cached, written to cache or neither."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.input_audio_tokens
            + self.cache_read_audio_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens + self.output_audio_tokens
