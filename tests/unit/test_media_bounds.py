"""Upper bounds for PDFs and audio: counted from the files, never below what they may cost."""

from __future__ import annotations

import math
import zlib

import pytest

from ledger.tokens import approximate_anthropic_prompt, count_openai_chat_prompt
from ledger.tokens.anthropic_approx import measure_anthropic_prompt
from ledger.tokens.media import (
    AUDIO_MIN_BYTES_PER_SECOND,
    AUDIO_TOKENS_PER_SECOND,
    PDF_PAGE_LIMIT,
    PDF_PAGE_TOKENS,
    audio_tokens,
    pdf_pages,
    pdf_tokens,
)
from ledger.tokens.openai_chat import measure_openai_chat_prompt
from tests.media_samples import b64, pdf_data_url, pdf_with_pages, wav

MODEL = "gpt-4.1-mini"


@pytest.mark.parametrize("object_stream", [False, True])
@pytest.mark.parametrize("pages", [1, 6, 40])
def test_a_pdf_is_bounded_by_its_pages_even_in_compressed_object_streams(
    pages: int, object_stream: bool
) -> None:
    pdf = pdf_with_pages(pages, object_stream=object_stream)
    assert pdf_pages(pdf) == pages
    assert pdf_tokens(b64(pdf)) == pages * PDF_PAGE_TOKENS
    assert pdf_tokens(pdf_data_url(pdf)) == pages * PDF_PAGE_TOKENS


def test_a_page_tree_count_above_the_page_objects_found_is_believed() -> None:
    pdf = pdf_with_pages(2).replace(b"/Count 2", b"/Count 9")
    assert pdf_pages(pdf) == 9


@pytest.mark.parametrize(
    "data",
    [
        b64(b"not a pdf at all"),
        "%%% not base64 %%%",
        b64(pdf_with_pages(3).replace(b"/Type /Page ", b"").replace(b"/Count 3", b"")),
        # A deflate bomb: far more inflated bytes than any PDF of its size holds.
        b64(b"%PDF-1.5\n1 0 obj\n<< >>\nstream\n" + zlib.compress(bytes(200 * 2**20), 9)),
    ],
    ids=["not-a-pdf", "not-base64", "no-pages-found", "deflate-bomb"],
)
def test_a_pdf_whose_pages_cannot_be_counted_costs_the_providers_page_limit(data: str) -> None:
    assert pdf_tokens(data) == PDF_PAGE_LIMIT * PDF_PAGE_TOKENS


def test_more_pages_than_the_providers_accept_are_bounded_by_the_limit() -> None:
    assert pdf_tokens(b64(pdf_with_pages(PDF_PAGE_LIMIT + 20))) == PDF_PAGE_LIMIT * PDF_PAGE_TOKENS


def test_a_pcm_wav_is_bounded_by_its_duration_from_the_header() -> None:
    clip = wav(60, rate=16000, bits=16)  # one minute: OpenAI bills about 600 tokens
    assert audio_tokens(b64(clip)) == math.ceil(len(clip) * AUDIO_TOKENS_PER_SECOND / 32000)
    assert (
        60 * AUDIO_TOKENS_PER_SECOND <= audio_tokens(b64(clip)) <= 60 * AUDIO_TOKENS_PER_SECOND + 1
    )


def test_audio_without_a_trusted_header_runs_at_the_lowest_bit_rate() -> None:
    mp3_like = bytes(48_000)  # 48 kB: at most 48 s at 8 kbit/s
    assert audio_tokens(b64(mp3_like)) == 48 * AUDIO_TOKENS_PER_SECOND
    # A WAV header whose byte rate disagrees with its sample rate cannot shorten the clip.
    lying = bytearray(wav(10))
    lying[28:32] = (10**9).to_bytes(4, "little")
    assert audio_tokens(b64(bytes(lying))) == math.ceil(
        len(lying) * AUDIO_TOKENS_PER_SECOND / AUDIO_MIN_BYTES_PER_SECOND
    )


def _openai_body(*parts: dict[str, object]) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(parts)}]}


def test_openai_file_and_audio_parts_count_at_their_bounds() -> None:
    text = {"type": "text", "text": "Summarise this."}
    base = count_openai_chat_prompt(MODEL, _openai_body(text))
    pdf = {"type": "file", "file": {"file_data": pdf_data_url(pdf_with_pages(6))}}
    assert count_openai_chat_prompt(MODEL, _openai_body(text, pdf)) == base + 6 * PDF_PAGE_TOKENS
    clip = wav(30)
    audio = {"type": "input_audio", "input_audio": {"data": b64(clip), "format": "wav"}}
    assert count_openai_chat_prompt(MODEL, _openai_body(text, audio)) == base + audio_tokens(
        b64(clip)
    )
    assert measure_openai_chat_prompt(MODEL, _openai_body(text, pdf, audio))[1] is None


@pytest.mark.parametrize(
    ("file", "unbounded"),
    [
        ({"file_id": "file-abc123"}, "file_id"),
        ({"file_data": "data:text/plain;base64," + b64(b"hello"), "filename": "a.txt"}, "PDF"),
    ],
)
def test_an_openai_file_ledger_cannot_read_is_reported_as_unbounded(
    file: dict[str, str], unbounded: str
) -> None:
    _tokens, found = measure_openai_chat_prompt(MODEL, _openai_body({"type": "file", "file": file}))
    assert found is not None and unbounded in found


def _anthropic_body(*blocks: dict[str, object]) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


def test_an_anthropic_pdf_document_counts_its_pages() -> None:
    text = {"type": "text", "text": "Summarise this."}
    base = approximate_anthropic_prompt(_anthropic_body(text))
    source = {"type": "base64", "media_type": "application/pdf", "data": b64(pdf_with_pages(6))}
    document = {"type": "document", "source": source}
    tokens, unbounded = measure_anthropic_prompt(_anthropic_body(text, document))
    assert tokens == base + 6 * PDF_PAGE_TOKENS and unbounded is None
    # Inside a tool result too.
    nested = {"type": "tool_result", "tool_use_id": "t1", "content": [document]}
    assert approximate_anthropic_prompt(_anthropic_body(text, nested)) == tokens


@pytest.mark.parametrize(
    "block",
    [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "document", "source": {"type": "file", "file_id": "file_011"}},
        {"type": "container_upload", "file_id": "file_011"},
    ],
    ids=["document-url", "document-file", "container-upload"],
)
def test_an_anthropic_block_ledger_cannot_read_is_reported_as_unbounded(
    block: dict[str, object],
) -> None:
    assert measure_anthropic_prompt(_anthropic_body(block))[1] is not None


def test_search_results_and_unknown_blocks_count_their_text() -> None:
    words = "the quarterly figures " * 50
    bare = approximate_anthropic_prompt(_anthropic_body())
    search = {"type": "search_result", "source": "https://a", "title": "Q3", "content": []}
    assert approximate_anthropic_prompt(_anthropic_body({**search, "title": words})) > bare + 100
    unknown = {"type": "web_fetch_tool_result", "tool_use_id": "t1", "result": {"text": words}}
    assert approximate_anthropic_prompt(_anthropic_body(unknown)) > bare + 100
