"""Usage in a Responses API body or its final stream event."""

from __future__ import annotations

import json

from ledger.providers.openai_responses import ResponsesStreamRelay, usage_from_payload
from ledger.usage import Usage

RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "output": [
        {"type": "web_search_call", "id": "ws_1"},
        {"type": "web_search_call", "id": "ws_2"},
        {"type": "file_search_call", "id": "fs_1"},
        {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
    ],
    "usage": {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 10},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 20},
    },
}


def test_usage_splits_cached_and_written_input_and_counts_built_in_tool_calls() -> None:
    assert usage_from_payload(RESPONSE) == Usage(
        input_tokens=60,
        cache_read_tokens=30,
        cache_write_5m_tokens=10,
        output_tokens=50,
        reasoning_tokens=20,
        tool_calls={"web_search_call": 2, "file_search_call": 1},
    )


def test_the_relay_passes_events_unchanged_and_takes_usage_from_an_incomplete_response() -> None:
    relay = ResponsesStreamRelay()
    events = [
        {"type": "response.created", "response": {**RESPONSE, "usage": None, "output": []}},
        {"type": "response.output_text.delta", "delta": "hi"},
        {"type": "response.incomplete", "response": {**RESPONSE, "status": "incomplete"}},
    ]
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    assert relay.feed(raw) == raw
    assert relay.done and relay.response_id == "resp_1" and relay.text == ["hi"]
    assert relay.usage is not None and relay.usage.output_tokens == 50
