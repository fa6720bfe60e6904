"""HTTP/1.1 to a provider: keep-alive connections on asyncio protocols, parsed by httptools.

Ledger sends one kind of request (a POST with a JSON body) to a handful of hosts and
relays what comes back, so it needs a small part of what a general HTTP client does,
and it needs it on every request: aiohttp's client was about a quarter of the event
loop's time per proxied request (its request and response objects, header multidicts,
a task per request body). This module is that small part:

- one connection per request in flight, reused while the server keeps it alive (idle
  ones are dropped after ``keepalive_s``); TLS with the system's trust store;
- the response body as it arrives (a stream), or whole, with back-pressure: reading
  from the socket pauses while more than ``_HIGH_WATER`` bytes wait to be consumed;
- ``gzip``/``deflate`` bodies decoded, should a server send one although the request
  asks for none, a bounded piece at a time (:class:`BoundedDecoder`), so a small body that
  inflates to gigabytes is refused after its first megabyte;
- a connection that receives anything no request asked for — bytes while it is idle, or
  after the end of the response in the same read — is closed, never reused: those bytes
  would otherwise be read as the next request's answer, quite possibly another client's;
- no redirects, cookies, proxies or retries: a provider's API needs none of them, and
  a POST that may have been billed must never be sent twice.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import httptools

_HIGH_WATER = 256 * 1024  # buffered response bytes that pause reading from the socket
_LOW_WATER = 64 * 1024


class ConnectFailed(OSError):
    """The connection could not be made: the request never left."""


class ConnectTimeout(TimeoutError):
    """The connection was not accepted in time: the request never left."""


class ResponseBroken(OSError):
    """The connection broke, or the server sent what is not HTTP, before the response ended."""


class ResponseTooLarge(ResponseBroken):
    """The response (or, decoded, its compressed body) is larger than Ledger accepts."""


class _Unasked(Exception):
    """Raised inside the parser to stop it at a second response that nobody asked for."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port, parsed once."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Connection(asyncio.Protocol):
    """One connection to an origin; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._header_list: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._keep_alive = False
        self._awaiting = False  # a request was sent and its response has not ended
        self._unasked = False  # bytes came that no request asked for
        self._error: BaseException | None = None
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self._awaiting:
            # Idle, or the response has ended: nobody asked for these bytes. Read, they
            # would become the next request's answer (and its usage, its bill).
            self._refuse_unasked()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._unasked:
                raise
            self._refuse_unasked()
        except httptools.HttpParserUpgrade:
            self._fail(ResponseBroken("the server asked to switch protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ResponseBroken(f"the server's response is not valid HTTP ({exc})"))

    def _refuse_unasked(self) -> None:
        self._unasked = True
        if self._complete:
            self.close()  # the response already read stays whole; the connection goes
        else:
            self._fail(ResponseBroken("the server sent a response no request asked for"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete and exc is None and self._headers_done and self._delimited_by_close():
            self._complete = True  # an HTTP/1.0-style body: it ends with the connection
        if not self._complete and self._error is None:
            self._error = ResponseBroken("the server closed the connection")
        self._wake()

    def _delimited_by_close(self) -> bool:
        names = {name.lower() for name, _ in self._header_list}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # A second message behind the response, in the same read: stop the parser
            # before it adds that message's headers or body to this response.
            # (llhttp skips bare CR/LF between messages; nothing a response can start with.)
            self._unasked = True
            raise _Unasked()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._awaiting = False
        # Asked here: once the message is over, the parser no longer knows.
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # the request

    def send(self, head: bytes, body: bytes) -> None:
        """Write a request; its response is read with :meth:`response_head` and :meth:`next_chunk`."""
        assert self._transport is not None
        # A fresh parser per response: nothing of the last one carries over.
        self._parser = httptools.HttpResponseParser(self)
        self._header_list = []
        self._headers_done = self._complete = self._keep_alive = False
        self._body.clear()
        self._buffered = 0
        self._awaiting = True
        self._transport.writelines((head, body))

    async def response_head(self, timeout_s: float) -> tuple[int, list[tuple[bytes, bytes]]]:
        while not self._headers_done:
            await self._wait(timeout_s)
        return self._parser.get_status_code(), self._header_list

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next part of the body as it arrived, or None once the body has ended."""
        while not self._body:
            if self._complete:
                return None
            await self._wait(timeout_s)
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _LOW_WATER and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def reusable(self) -> bool:
        """Whether the parser saw one complete response, nothing beyond it, and may go on."""
        return self._complete and self._keep_alive and not self._unasked and not self.closed

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def _wait(self, timeout_s: float) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self.close()
        self._wake()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class ConnectionPool:
    """Keep-alive connections to one origin, the most recently used first."""

    def __init__(
        self,
        origin: Origin,
        *,
        connect_timeout_s: float,
        keepalive_s: float = 60.0,
    ) -> None:
        self.origin = origin
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._ssl: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl = ssl.create_default_context()  # SSL_CERT_FILE adds an authority
        self._idle: deque[Connection] = deque()  # the most recently used on the right
        self._all: set[Connection] = set()

    async def acquire(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection
            self._forget(connection)
        return await self._connect()

    def release(self, connection: Connection) -> None:
        """Keep ``connection`` for the next request if its response ended cleanly; else close it."""
        if connection.reusable:
            now = connection.idle_since = time.monotonic()
            self._idle.append(connection)
            # Connections left idle longest are at the left: close those past keep-alive.
            while now - self._idle[0].idle_since >= self._keepalive_s:
                self._forget(self._idle.popleft())
        else:
            self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        connection.close()
        self._all.discard(connection)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    Connection,
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout() from exc
        except OSError as exc:
            raise ConnectFailed(exc.errno, type(exc).__name__) from exc
        self._all.add(connection)
        return connection

    def close(self) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()
        self._idle.clear()


def request_head(
    origin: Origin,
    target: str,
    headers: Mapping[str, str],
    content_length: int,
    *,
    method: str = "POST",
) -> bytes:
    """A request's head (a POST unless told). Names and values holding CR, LF or NUL are refused."""
    lines = [
        f"{method} {target} HTTP/1.1\r\nhost: {origin.host_header}\r\n"
        f"content-length: {content_length}\r\n"
    ]
    for name, value in headers.items():
        if not _SAFE_NAME.issuperset(name) or _UNSAFE_VALUE.intersection(value):
            raise ValueError(f"header {name!r} holds a character HTTP does not allow there")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


_SAFE_NAME = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_UNSAFE_VALUE = frozenset("\r\n\x00")


_DECODED_PIECE = 64 * 1024  # decoded bytes produced per step, so one chunk cannot balloon
_RATIO_FREE_BYTES = 1024 * 1024  # decoded bytes allowed before the ratio bound applies


class BoundedDecoder:
    """Decodes a gzip or deflate body a bounded piece at a time.

    A compressed body that decodes to more than ``max_ratio`` times the bytes it took
    (once past its first MiB) is refused: real JSON and SSE compress about 5 to 20 times;
    a "gzip bomb" a thousand times. Memory stays at one piece per step either way.
    """

    def __init__(self, content_encoding: str, max_ratio: int) -> None:
        wbits = 16 + zlib.MAX_WBITS if content_encoding != "deflate" else zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(wbits)
        self._max_ratio = max_ratio
        self._encoded = 0
        self._decoded = 0

    def decode(self, chunk: bytes) -> list[bytes]:
        """What ``chunk`` decodes to, in pieces. Raises ``zlib.error`` or ResponseTooLarge."""
        pieces: list[bytes] = []
        data = chunk
        while data:
            piece = self._zlib.decompress(data, _DECODED_PIECE)
            tail = self._zlib.unconsumed_tail
            self._encoded += len(data) - len(tail)
            data = tail
            if piece:
                self._decoded += len(piece)
                self._check_ratio()
                pieces.append(piece)
            if self._zlib.eof:
                break
        return pieces

    def finish(self) -> bytes:
        """The last decoded bytes; raises ``zlib.error`` if the body was cut short."""
        if not self._zlib.eof:  # cut short: what was decoded cannot be trusted whole
            raise zlib.error("truncated")
        rest = self._zlib.flush()
        self._decoded += len(rest)
        self._check_ratio()
        return rest

    def _check_ratio(self) -> None:
        if self._decoded > _RATIO_FREE_BYTES and self._decoded > self._max_ratio * max(
            self._encoded, 1
        ):
            raise ResponseTooLarge(
                f"its compressed body inflates more than {self._max_ratio} times "
                "(LEDGER_MAX_DECOMPRESSION_RATIO)"
            )


def decoder_for(content_encoding: str | None, max_ratio: int) -> BoundedDecoder | None:
    """A decoder for a body sent with ``content_encoding`` (gzip or deflate), if needed."""
    if not content_encoding:
        return None
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return BoundedDecoder("gzip", max_ratio)
    if encoding == "deflate":
        return BoundedDecoder("deflate", max_ratio)
    if encoding == "identity":
        return None
    raise ResponseBroken(f"the server sent a body encoded as {encoding!r}")
