"""An incremental Server-Sent Events splitter that keeps each event's exact bytes.

Ledger relays provider streams unchanged, so events are never re-serialised: the
parser only finds the boundaries and decodes the ``event``/``data`` fields it needs.
An event that grows past ``max_event_bytes`` before it ends is refused
(:class:`ledger.errors.UpstreamFailed`): a stream has no total bound, so this is what
keeps a provider from filling Ledger's memory with one endless event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ledger.errors import UpstreamFailed

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
EVENT_TOO_LARGE = "upstream_event_too_large"

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

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._buffer = b""
        # Line-free parts of a long event, kept apart: joining each one to the buffer as
        # it came would copy a long event once per chunk.
        self._held: list[bytes] = []
        self._held_bytes = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if (self._buffer or self._held) and b"\n" not in chunk and b"\r" not in chunk:
            self._held.append(chunk)  # no line ends, so no boundary: the event goes on
            self._held_bytes += len(chunk)
            self._check_size(len(self._buffer) + self._held_bytes)
            return []
        if self._held:
            self._buffer += b"".join(self._held)
            self._held.clear()
            self._held_bytes = 0
        buffer = self._buffer + chunk
        events: list[SSEEvent] = []
        start = 0
        if b"\r" not in buffer:
            # What every provider sends: lines end in LF, so every boundary is a blank
            # line, found by bytes.find several times faster than by the regex.
            while (end := buffer.find(b"\n\n", start)) != -1:
                end += 2
                self._check_size(end - start)
                events.append(_decode(buffer[start:end]))
                start = end
        else:
            while match := _BOUNDARY.search(buffer, start):
                self._check_size(match.end() - start)
                events.append(_decode(buffer[start : match.end()]))
                start = match.end()
        self._buffer = buffer[start:]
        self._check_size(len(self._buffer))
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been completed (yet)."""
        return self._buffer + b"".join(self._held)

    def _check_size(self, pending: int) -> None:
        if pending > self._max_event_bytes:
            raise UpstreamFailed(
                f"The provider sent a stream event over {self._max_event_bytes} bytes "
                "(LEDGER_MAX_EVENT_BYTES).",
                code=EVENT_TOO_LARGE,
            )


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
