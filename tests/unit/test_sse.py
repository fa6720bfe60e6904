"""The SSE splitter: the same events whatever the chunking, and every byte kept."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.providers.openai import OpenAIStreamRelay
from ledger.providers.sse import SSEEvent, SSEParser


def _feed_all(chunks: list[bytes]) -> tuple[list[SSEEvent], bytes]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events, parser.pending


def _split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


OPENAI_STREAM = (
    b"".join(
        f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n".encode()
        for word in ["Hello", " wörld", " ✓", " 👋"]
    )
    + b"data: [DONE]\n\n"
)

ANTHROPIC_STREAM = (
    b"event: message_start\r\n"
    b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 12}}}\r\n\r\n'
    b": keep-alive comment\r\n\r\n"
    b"event: content_block_delta\r\n"
    b'data: {"type": "content_block_delta", "delta": {"text": "h\xc3\xa9"}}\r\n\r\n'
    b"event: message_stop\r\n"
    b'data: {"type": "message_stop"}\r\n\r\n'
)

STREAMS = [OPENAI_STREAM, ANTHROPIC_STREAM, OPENAI_STREAM.replace(b"\n", b"\r")]


def test_an_openai_stream_splits_into_its_events() -> None:
    events, pending = _feed_all([OPENAI_STREAM])
    assert pending == b""
    assert [e.event for e in events] == [None] * 5
    assert [json.loads(e.data)["choices"][0]["delta"]["content"] for e in events[:4]] == [
        "Hello",
        " wörld",
        " ✓",
        " 👋",
    ]
    assert events[-1].data == "[DONE]"
    assert b"".join(e.raw for e in events) == OPENAI_STREAM


def test_crlf_events_keep_their_names_and_data() -> None:
    events, pending = _feed_all([ANTHROPIC_STREAM])
    assert pending == b""
    assert [e.event for e in events] == [
        "message_start",
        None,
        "content_block_delta",
        "message_stop",
    ]
    assert json.loads(events[0].data)["message"]["usage"]["input_tokens"] == 12
    assert events[1].data == ""  # a comment carries no data
    assert json.loads(events[2].data)["delta"]["text"] == "hé"
    assert not any("\r" in e.data or "\r" in (e.event or "") for e in events)
    assert b"".join(e.raw for e in events) == ANTHROPIC_STREAM


def test_bare_cr_line_endings_are_events_too() -> None:
    events, _ = _feed_all([b"event: ping\rdata: {}\r\r"])
    assert [(e.event, e.data) for e in events] == [("ping", "{}")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events, _ = _feed_all([b"data: one\ndata:two\ndata:  three\n\n"])
    assert events[0].data == "one\ntwo\n three"


def test_an_unfinished_event_waits_in_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a": 1}\n') == []
    assert parser.pending == b'data: {"a": 1}\n'
    (event,) = parser.feed(b"\ndata: next")
    assert event.data == '{"a": 1}'
    assert parser.pending == b"data: next"


def test_data_with_unicode_line_separators_is_not_cut() -> None:
    # JSON may carry U+2028, U+2029, U+0085 and form feeds raw; SSE lines end only at CR or LF.
    payload = json.dumps({"text": "a\u2028b\u2029c\x85d\x0ce\x1cf"}, ensure_ascii=False)
    events, _ = _feed_all([f"data: {payload}\n\n".encode()])
    assert events[0].data == payload
    assert json.loads(events[0].data)["text"] == "a\u2028b\u2029c\x85d\x0ce\x1cf"


@given(
    stream=st.sampled_from(STREAMS),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
)
def test_any_chunking_gives_identical_events_and_bytes(stream: bytes, points: list[int]) -> None:
    whole, whole_pending = _feed_all([stream])
    events, pending = _feed_all(_split(stream, points))
    assert events == whole
    assert pending == whole_pending == b""
    assert b"".join(e.raw for e in events) == stream


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_arbitrary_bytes_lose_nothing_at_any_chunking(data: bytes, points: list[int]) -> None:
    whole, whole_pending = _feed_all([data])
    events, pending = _feed_all(_split(data, points))
    assert [e.raw for e in events] == [e.raw for e in whole]
    assert pending == whole_pending
    assert b"".join(e.raw for e in events) + pending == data


def test_byte_by_byte_feeding_splits_multibyte_characters_safely() -> None:
    events, _ = _feed_all([bytes([b]) for b in OPENAI_STREAM])
    assert events == _feed_all([OPENAI_STREAM])[0]


@pytest.mark.parametrize("spelling", [b',"usage":null', b', "usage": null', b',"usage" :  null'])
def test_the_usage_ledger_asked_for_is_taken_out_however_the_provider_spaces_it(
    spelling: bytes,
) -> None:
    # The content quotes the same words: escaped, so they are text and stay.
    delta = b'{"id":"c1","choices":[{"delta":{"content":"say \\"usage\\":null"}}]'
    usage = b'{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
    stream = b"data: " + delta + spelling + b"}\n\ndata: " + usage + b"\n\ndata: [DONE]\n\n"
    relay = OpenAIStreamRelay(strip_usage=True)
    relayed = relay.feed(stream)
    assert relayed == b"data: " + delta + b"}\n\ndata: [DONE]\n\n"
    assert json.loads(relayed[6 : relayed.index(b"\n")])["choices"][0]["delta"] == {
        "content": 'say "usage":null'
    }
    assert relay.usage is not None and relay.usage.output_tokens == 2


def test_an_event_over_the_size_limit_is_refused_whatever_the_chunking() -> None:
    from ledger.errors import UpstreamFailed

    event = b"data: " + b"x" * 2000 + b"\n\n"
    for pieces in ([event], _split(event, [7, 300, 1500]), [event[:-2], event[-2:]]):
        parser = SSEParser(max_event_bytes=1024)
        with pytest.raises(UpstreamFailed, match="LEDGER_MAX_EVENT_BYTES"):
            for piece in pieces:
                parser.feed(piece)


def test_an_event_within_the_size_limit_is_whole_however_it_was_split() -> None:
    event = b"data: " + b"x" * 1000 + b"\n\n"
    parser = SSEParser(max_event_bytes=len(event))
    events = [
        e for piece in _split(event + event, [3, 500, 1001, 1500]) for e in parser.feed(piece)
    ]
    assert [e.raw for e in events] == [event, event] and parser.pending == b""
