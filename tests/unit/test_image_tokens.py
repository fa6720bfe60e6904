"""OpenAI image prompt tokens by model family, and image sizes read from headers (issue 18, §4).

The figures are OpenAI's published rules ("Calculating costs" in the images guide): tile
models pay `base` + `tile` per 512px tile, patch models one token per 32px patch (at most
1536) times their multiplier.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest

from ledger.tokens import count_openai_chat_prompt
from ledger.tokens.media import image_size
from ledger.tokens.openai_chat import UNKNOWN_IMAGE_RULE, image_rule_for


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _jpeg(width: int, height: int) -> bytes:
    app0 = (
        b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    )
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + b"\x00" * 3000  # a large segment first
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def _webp_vp8x(width: int, height: int) -> bytes:
    payload = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _data_url(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


@pytest.mark.parametrize(
    ("image", "media_type"),
    [
        (_png(1024, 768), "image/png"),
        (_jpeg(1024, 768), "image/jpeg"),
        (_gif(1024, 768), "image/gif"),
        (_webp_vp8x(1024, 768), "image/webp"),
    ],
    ids=["png", "jpeg", "gif", "webp"],
)
def test_image_size_is_read_from_the_header_of_every_accepted_format(
    image: bytes, media_type: str
) -> None:
    assert image_size(_data_url(image, media_type)) == (1024, 768)


def test_an_image_that_is_not_one_has_no_size() -> None:
    assert image_size(_data_url(b"not an image at all")) is None
    assert image_size("data:image/png;base64,iVBORw0KGgo=") is None  # signature only
    assert image_size(None) is None


@pytest.mark.parametrize(
    ("model", "detail", "size", "tokens"),
    [
        # The figures: 2833 + 4 x 5667 and 75 + 4 x 150.
        ("gpt-4o-mini", "high", (1024, 1024), 25_501),
        ("gpt-4o-mini-2024-07-18", "low", (1024, 1024), 2_833),
        ("o3", "high", (1024, 1024), 675),
        ("o3-2025-04-16", "low", (1024, 1024), 75),
        ("gpt-4o", "high", (1024, 1024), 765),
        ("gpt-4.1", "auto", (2048, 4096), 1_105),
        ("gpt-5", "high", (1024, 1024), 630),  # 70 + 4 x 140
        # Patch models: ceil(w/32) x ceil(h/32) patches, capped at 1536, times the multiplier.
        ("gpt-4.1-mini", "high", (1024, 1024), 1_659),  # ceil(1024 x 1.62)
        ("gpt-4.1-mini", "low", (1024, 1024), 1_659),  # detail does not change patches
        ("gpt-4.1-nano", "high", (1024, 1024), 2_520),  # ceil(1024 x 2.46)
        ("o4-mini", "high", (1024, 1024), 1_762),  # ceil(1024 x 1.72)
        ("gpt-4.1-mini", "high", (4000, 1474), 2_489),  # at the cap: ceil(1536 x 1.62)
        ("openai/gpt-4.1-mini", "high", (100, 100), 26),  # ceil(16 patches x 1.62)
    ],
)
def test_image_tokens_follow_the_models_published_rule(
    model: str, detail: str, size: tuple[int, int], tokens: int
) -> None:
    assert image_rule_for(model).tokens(detail, size) == tokens


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("gpt-4o-mini", 2833 + 8 * 5667),
        ("gpt-4o", 85 + 8 * 170),
        ("o3", 75 + 8 * 150),
        ("gpt-4.1-mini", 2489),
        ("gpt-9-experimental", 3779),  # no known family: the largest multiplier at the cap
    ],
)
def test_an_image_of_unknown_size_counts_at_the_most_its_model_charges(
    model: str, tokens: int
) -> None:
    rule = image_rule_for(model)
    assert rule.tokens("high", None) == tokens
    for size in [(1, 1), (512, 512), (768, 2048), (4096, 4096), (20_000, 300)]:
        assert rule.tokens("high", size) <= tokens


def _body(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    return {"messages": [{"role": "user", "content": [part]}]}


def test_a_chat_request_counts_a_data_url_image_by_its_size_and_a_remote_one_at_its_largest() -> (
    None
):
    text_only = count_openai_chat_prompt(
        "gpt-4o-mini", {"messages": [{"role": "user", "content": []}]}
    )
    small = count_openai_chat_prompt("gpt-4o-mini", _body(_data_url(_png(512, 512))))
    remote = count_openai_chat_prompt("gpt-4o-mini", _body("https://example.com/cat.png"))
    assert small - text_only == 2833 + 5667  # one tile
    assert remote - text_only == 2833 + 8 * 5667
    assert UNKNOWN_IMAGE_RULE.tokens("high", None) == 3779
