"""Small, valid PDF and WAV files built in memory, for the tests of non-text prompt parts."""

from __future__ import annotations

import base64
import struct
import zlib


def pdf_with_pages(pages: int, *, object_stream: bool = False) -> bytes:
    """A PDF of ``pages`` blank Letter pages, each with a line of text.

    With ``object_stream``, the page objects live in a compressed object stream (PDF 1.5),
    as most PDF writers store them today: no page object is visible in the file's bytes.
    """
    page_ids = [4 + 2 * i for i in range(pages)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % i for i in page_ids), pages),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    pages_objects: dict[int, bytes] = {}
    for number, page_id in enumerate(page_ids, start=1):
        content = b"BT /F1 12 Tf 72 720 Td (Page %d of the report) Tj ET" % number
        compressed = zlib.compress(content)
        objects[page_id + 1] = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (
            len(compressed),
            compressed,
        )
        pages_objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
    if object_stream:
        # Pages and the page tree go into one compressed object stream.
        packed = {2: objects.pop(2), **pages_objects}
        offsets, body = [], b""
        for number, data in packed.items():
            offsets.append(b"%d %d" % (number, len(body)))
            body += data + b"\n"
        header = b" ".join(offsets) + b"\n"
        stream = zlib.compress(header + body)
        stream_id = 4 + 2 * pages
        objects[stream_id] = (
            b"<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\n"
            b"stream\n%s\nendstream" % (len(packed), len(header), len(stream), stream)
        )
    else:
        objects.update(pages_objects)
    out = b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"
    for number in sorted(objects):
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    return out + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


def wav(seconds: float, *, rate: int = 8000, channels: int = 1, bits: int = 8) -> bytes:
    """An uncompressed PCM WAV file of ``seconds`` of silence."""
    block_align = channels * bits // 8
    data = bytes(int(seconds * rate) * block_align)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block_align, block_align, bits)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pdf_data_url(pdf: bytes) -> str:
    """A PDF as OpenAI's ``file_data`` takes it."""
    return "data:application/pdf;base64," + b64(pdf)
