"""An incremental Server-Sent Events splitter that keeps each event's exact bytes.

Ledger relays provider streams unchanged, so events are never re-serialised: the
parser only finds the boundaries and decodes the ``event``/``data`` fields it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# SSE lines end at CRLF, LF or CR only. ``str.splitlines`` would also split at U+2028,
# U+0085, form feeds and more, which JSON data may carry raw.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    raw: bytes  # the event exactly as received, boundary included
    event: str | None
    data: str


class SSEParser:
    """Feed bytes as they arrive; get back every event completed by them."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk
        events: list[SSEEvent] = []
        start = 0
        if b"\r" not in buffer:
            # What every provider sends: lines end in LF, so every boundary is a blank
            # line, found by bytes.find several times faster than by the regex.
            while (end := buffer.find(b"\n\n", start)) != -1:
                end += 2
                events.append(_decode(buffer[start:end]))
                start = end
        else:
            while match := _BOUNDARY.search(buffer, start):
                events.append(_decode(buffer[start : match.end()]))
                start = match.end()
        self._buffer = buffer[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been completed (yet)."""
        return self._buffer


def _decode(raw: bytes) -> SSEEvent:
    if raw.startswith(b"data: ") and raw.find(b"\n") == len(raw) - 2 and b"\r" not in raw:
        # One "data: …" line and its blank line: most events of every stream.
        return SSEEvent(raw=raw, event=None, data=raw[6:-2].decode("utf-8", errors="replace"))
    event: str | None = None
    data_lines: list[str] = []
    for line in _LINE_END.split(raw.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data_lines.append(value)
    return SSEEvent(raw=raw, event=event, data="\n".join(data_lines))
