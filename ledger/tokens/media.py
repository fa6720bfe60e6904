"""Upper bounds for the prompt tokens of parts that are not text: PDFs and audio.

A hard budget reserves a request's worst case before it is forwarded, so every part of a
prompt needs a bound, never a guess that may fall short. These bounds are deliberately
high; the provider's reported usage settles the actual cost.

- A PDF costs at most ``PDF_PAGE_TOKENS`` per page: Anthropic quotes 1,500-3,000 text
  tokens per page and both providers add an image of each page, so 3,000 tokens of text
  plus 1,600 for the image (Anthropic's per-image ceiling, above OpenAI's 1,445 for its
  largest tiled image). Pages are counted in the decoded file, compressed object streams
  included; a file whose pages cannot be found counts as ``PDF_PAGE_LIMIT`` pages, the
  most either provider accepts in one request.
- Audio costs at most ``AUDIO_TOKENS_PER_SECOND`` per second: OpenAI bills user audio at
  about one token per 100 ms, and we allow one per 50 ms. A PCM WAV file's duration is
  read from its header; any other file is assumed to run at ``AUDIO_MIN_BYTES_PER_SECOND``
  (8 kbit/s, the lowest MP3 bit rate), so its duration is at most its size over that.
"""

from __future__ import annotations

import binascii
import math
import re
import struct
import zlib
from base64 import b64decode
from typing import Any

PDF_PAGE_TOKENS = 3_000 + 1_600
PDF_PAGE_LIMIT = 100
AUDIO_TOKENS_PER_SECOND = 20
AUDIO_MIN_BYTES_PER_SECOND = 1_000

# Page objects (`/Type /Page`, not `/Pages`) and page-tree counts (`/Count 12`). The root
# page tree's /Count is the number of pages, so the larger of the two is taken.
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z0-9#])")
_PAGE_COUNT = re.compile(rb"/Count\s+(\d{1,7})")
_STREAM = re.compile(rb"(?<!end)stream\r?\n")
# Streams are inflated to look for page objects inside object streams. A file that would
# inflate to more than 32 times its size plus 1 MiB (PDFs inflate far less; a deflate bomb
# more), or 64 MiB, is not read further: its pages then count as the limit.
_MAX_INFLATED_BYTES = 64 * 1024 * 1024
_INFLATE_RATIO = 32
_INFLATE_ALLOWANCE = 1024 * 1024
# WAV format tags whose samples are uncompressed: PCM, IEEE float, A-law, mu-law, extensible.
_UNCOMPRESSED_WAV = frozenset({1, 3, 6, 7, 0xFFFE})


def decode_base64(data: Any, *, prefix_chars: int | None = None) -> bytes | None:
    """The bytes of a base64 string or a ``data:…;base64,`` URL, or None if it is neither.

    With ``prefix_chars`` (a multiple of 4), only that many characters are decoded.
    """
    payload = _base64_payload(data)
    if payload is None:
        return None
    if prefix_chars is not None:
        payload = payload[:prefix_chars]
    try:
        return b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


def _base64_payload(data: Any) -> str | None:
    if not isinstance(data, str):
        return None
    if data.startswith("data:"):
        _header, comma, data = data.partition(",")
        if not comma:
            return None
    return data


def pdf_pages(pdf: bytes) -> int | None:
    """The number of pages in a PDF file, erring high; None if none can be found.

    Counts page objects and page-tree counts, in the file and in every stream that inflates
    (PDF 1.5 object streams hold page objects compressed). A page object that hides from
    this scan (a missing ``/Type``, names spelled with ``#`` escapes) is not counted.
    """
    pages = _pages_in(pdf)
    view = memoryview(pdf)
    budget = min(_MAX_INFLATED_BYTES, _INFLATE_RATIO * len(pdf) + _INFLATE_ALLOWANCE)
    for match in _STREAM.finditer(pdf):
        end = pdf.find(b"endstream", match.end())
        end = end if end >= 0 else len(pdf)
        try:
            inflated = zlib.decompressobj().decompress(view[match.end() : end], budget)
        except zlib.error:
            continue  # not a Flate stream (an image, say): no page objects in it
        budget -= len(inflated)
        if budget <= 0:
            return None
        pages = max(pages, _pages_in(inflated))
    return pages or None


def _pages_in(data: bytes) -> int:
    objects = len(_PAGE_OBJECT.findall(data))
    counts = [int(count) for count in _PAGE_COUNT.findall(data)]
    return max(objects, max(counts, default=0))


def pdf_tokens(data: Any) -> int:
    """The most a base64 PDF (or ``data:`` URL) may cost as prompt tokens."""
    pdf = decode_base64(data)
    pages = pdf_pages(pdf) if pdf else None
    if pages is None:
        pages = PDF_PAGE_LIMIT
    return min(pages, PDF_PAGE_LIMIT) * PDF_PAGE_TOKENS


def is_pdf(data: Any) -> bool:
    """Whether a base64 string (or ``data:`` URL) decodes to a PDF file."""
    decoded = decode_base64(data, prefix_chars=64)
    return decoded is not None and b"%PDF-" in decoded[:48]


def audio_tokens(data: Any) -> int:
    """The most a base64 audio clip (or ``data:`` URL) may cost as prompt tokens."""
    audio = decode_base64(data)
    if not audio:
        return 0
    bytes_per_second = _wav_bytes_per_second(audio) or AUDIO_MIN_BYTES_PER_SECOND
    # Every byte counted as sound (the header too): duration = size / rate, rounded up.
    return math.ceil(len(audio) * AUDIO_TOKENS_PER_SECOND / bytes_per_second)


def _wav_bytes_per_second(audio: bytes) -> int | None:
    """The byte rate an uncompressed WAV file's header declares, if it is consistent."""
    if len(audio) < 36 or audio[:4] != b"RIFF" or audio[8:16] != b"WAVEfmt ":
        return None
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", audio, 20)
    if tag not in _UNCOMPRESSED_WAV or not channels or not rate or not bits:
        return None
    # A decoder plays `rate` samples of `block_align` bytes a second: a header whose byte
    # rate says otherwise is not trusted to shorten the clip.
    if block_align != channels * math.ceil(bits / 8) or byte_rate != rate * block_align:
        return None
    return max(byte_rate, AUDIO_MIN_BYTES_PER_SECOND)


# Enough of a base64 image to reach a JPEG's frame header behind its EXIF and ICC segments
# (which may hold 64 KiB each); an image whose size is not found there counts as unknown.
_IMAGE_HEADER_CHARS = 4 * 64 * 1024
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers, not DHT/JPG/DAC


def image_size(data: Any) -> tuple[int, int] | None:
    """(width, height) of a base64 PNG, JPEG, GIF or WebP image (or ``data:`` URL).

    Only the header is read, never the pixels; None when the format or size is not found.
    """
    head = decode_base64(data, prefix_chars=_IMAGE_HEADER_CHARS)
    if not head:
        return None
    size = _image_header_size(head)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _image_header_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        (length,) = struct.unpack(">H", head[at + 2 : at + 4])
        at += 2 + length
    return None
