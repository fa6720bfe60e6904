"""Anthropic usage merged event by event as the official SDK merges it (issue 18, section 3)."""

from __future__ import annotations

from ledger.providers.anthropic import usage_from_mapping
from ledger.usage import Usage

START = {
    "input_tokens": 10,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 5000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 5000},
    "output_tokens": 1,
}
STARTED = Usage(
    input_tokens=10, cache_read_tokens=1000, cache_write_1h_tokens=5000, output_tokens=1
)


def test_message_start_usage_is_read_as_it_came() -> None:
    assert usage_from_mapping(START) == STARTED


def test_null_counts_are_not_given_and_keep_earlier_values() -> None:
    delta = {
        "input_tokens": None,
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": None,
        "cache_creation": None,
        "output_tokens": 42,
    }
    assert usage_from_mapping(delta, STARTED) == Usage(
        input_tokens=10, cache_read_tokens=1000, cache_write_1h_tokens=5000, output_tokens=42
    )


def test_a_repeated_total_without_split_keeps_the_known_split() -> None:
    delta = {"cache_creation_input_tokens": 5000, "output_tokens": 42}
    merged = usage_from_mapping(delta, STARTED)
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (0, 5000)


def test_a_larger_total_without_split_files_the_extra_as_five_minute_writes() -> None:
    merged = usage_from_mapping({"cache_creation_input_tokens": 6000}, STARTED)
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (1000, 5000)


def test_a_lone_total_is_priced_as_five_minute_writes() -> None:
    merged = usage_from_mapping({"cache_creation_input_tokens": 5000, "cache_creation": {}})
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (5000, 0)


def test_a_complete_split_wins_over_a_total_that_disagrees() -> None:
    usage = {
        "cache_creation_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
    }
    merged = usage_from_mapping(usage)
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (300, 200)


def test_a_partial_split_is_fitted_to_the_total() -> None:
    usage = {
        "cache_creation_input_tokens": 5000,
        "cache_creation": {"ephemeral_1h_input_tokens": 2000},
    }
    merged = usage_from_mapping(usage)
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (3000, 2000)
    too_big = {
        "cache_creation_input_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 900},
    }
    merged = usage_from_mapping(too_big)
    assert merged is not None
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (500, 0)
