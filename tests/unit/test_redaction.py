"""What a provider echoes of its key, and the usage counts Ledger believes."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from ledger.redaction import Redactor
from ledger.usage import ImplausibleUsage, Usage, implausibility, reported_count

KEY = "sk-proj-Ab3/xY+9_tail-0123456789abcdefXYZ"


@pytest.mark.parametrize(
    "spelling",
    [KEY, quote(KEY, safe=""), json.dumps(KEY)[1:-1].replace("/", "\\/"), KEY[:-6], KEY[7:]],
    ids=["as-is", "url-encoded", "json-escaped", "truncated", "without-prefix"],
)
def test_an_echoed_key_is_cut_out_however_it_is_spelt(spelling: str) -> None:
    redactor = Redactor([KEY])
    text = f'{{"error": "Incorrect API key provided: {spelling}. See docs."}}'
    redacted = redactor.text(text)
    assert "Incorrect API key provided: [REDACTED]. See docs." in redacted
    assert redactor.bytes(text.encode()) == redacted.encode()


def test_text_without_a_key_and_short_keys_are_left_alone() -> None:
    redactor = Redactor([KEY, "short", None])
    assert redactor.text("a short note about sk-proj-") == "a short note about sk-proj-"
    assert not Redactor([None, ""])


@pytest.mark.parametrize("value", [-1, "12", 12.5, True, [1], 10**7 + 1, float("nan")])
def test_a_count_that_is_not_a_count_is_not_believed(value: object) -> None:
    with pytest.raises(ImplausibleUsage):
        reported_count(value, "prompt_tokens")


def test_integral_numbers_and_null_are_counts() -> None:
    assert reported_count(12.0, "x") == 12
    assert reported_count(None, "x") == 0
    assert reported_count(10**7, "x") == 10**7


def test_output_beyond_the_cap_times_n_is_not_believed() -> None:
    usage = Usage(input_tokens=10, output_tokens=300)
    assert implausibility(usage, max_output_tokens=100, choices=3) is None
    assert "more than the request allowed (200)" in str(
        implausibility(usage, max_output_tokens=100, choices=2)
    )
    assert implausibility(
        Usage(input_tokens=6 * 10**6, cache_read_tokens=5 * 10**6), max_output_tokens=None
    )
