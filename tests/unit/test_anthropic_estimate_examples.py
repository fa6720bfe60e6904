"""The local Anthropic estimate stays above the counts Anthropic publishes (issue 18, §4).

The examples are the token-counting guide's (docs.claude.com "Token counting", the
`count_tokens` examples shown with their responses, also quoted by langchain-anthropic's
reference for claude-sonnet-4-5): a system prompt with one short message (14 tokens) and
the get_weather tool with one question (403 tokens, the tool-use system prompt included).
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger.tokens import approximate_anthropic_prompt

GET_WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            }
        },
        "required": ["location"],
    },
}


@pytest.mark.parametrize(
    ("body", "published"),
    [
        (
            {
                "system": "You are a scientist",
                "messages": [{"role": "user", "content": "Hello, Claude"}],
            },
            14,
        ),
        (
            {
                "tools": [GET_WEATHER],
                "messages": [
                    {"role": "user", "content": "What's the weather like in San Francisco?"}
                ],
            },
            403,
        ),
    ],
    ids=["system-and-message", "tool-use"],
)
def test_the_local_estimate_is_at_least_anthropics_published_count(
    body: dict[str, Any], published: int
) -> None:
    assert approximate_anthropic_prompt(body) >= published
