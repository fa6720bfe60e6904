"""The HTTP transport to real providers: HTTP/1.1 keep-alive connections (``http11``)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ledger.config import ProviderConfig
from ledger.errors import InvalidRequest, UpstreamFailed, UpstreamTimeout
from ledger.providers.base import UpstreamResponse, relayable_headers
from ledger.providers.http11 import (
    BoundedDecoder,
    ConnectFailed,
    Connection,
    ConnectionPool,
    ConnectTimeout,
    Origin,
    ResponseBroken,
    ResponseTooLarge,
    decoder_for,
    request_head,
)

# How long the body's end may trail a stream's last event before the connection is
# dropped instead of reused.
_BODY_END_WAIT_S = 1.0
TOO_LARGE = "upstream_response_too_large"  # the error code when a limit below is hit


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """How much a provider may send back (``LEDGER_MAX_RESPONSE_BYTES`` and the ratio).

    ``max_response_bytes`` bounds a response that is read whole (not streamed), as sent and
    as decoded; a stream has no total bound, its events are bounded one by one where
    they are parsed. ``max_decompression_ratio`` bounds both.
    """

    max_response_bytes: int = 32 * 1024 * 1024
    max_decompression_ratio: int = 100


class HttpTransport:
    """One connection pool per provider; the provider key is added here and nowhere else."""

    def __init__(
        self,
        config: ProviderConfig,
        auth_headers: Mapping[str, str],
        limits: ResponseLimits | None = None,
    ) -> None:
        self._config = config
        self._limits = limits or ResponseLimits()
        url = urlsplit(config.normalised_base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"provider {config.name!r}: base_url must be an http(s) URL")
        self._origin = Origin(
            url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80)
        )
        self._path_prefix = quote(url.path, safe="/%:@!$&'()*+,;=-._~")
        self._auth_headers = dict(auth_headers)
        self._pool: ConnectionPool | None = None

    def _connections(self) -> ConnectionPool:
        if self._pool is None:
            self._pool = ConnectionPool(
                self._origin, connect_timeout_s=self._config.connect_timeout_s
            )
        return self._pool

    async def send(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        method: str = "POST",
    ) -> UpstreamResponse:
        request_headers = {
            **headers,
            **self._auth_headers,
            "user-agent": "ledger",
            "accept-encoding": "identity",
        }
        try:
            head = request_head(
                self._origin, self._path_prefix + path, request_headers, len(body), method=method
            )
        except ValueError as exc:
            raise InvalidRequest(f"A request header cannot be forwarded: {exc}.") from exc
        name = self._config.name
        read_timeout_s = self._config.timeout_s
        pool = self._connections()
        try:
            connection = await pool.acquire()
        except ConnectTimeout as exc:
            raise UpstreamTimeout(
                f"Provider {name!r} did not accept the connection in time.", may_have_billed=False
            ) from exc
        except ConnectFailed as exc:
            # Refused, unresolvable, unroutable: the request never left Ledger.
            raise UpstreamFailed(
                f"Provider {name!r} could not be reached ({exc.strerror}).",
                may_have_billed=False,
            ) from exc
        try:
            connection.send(head, body)
            status, raw_headers = await connection.response_head(read_timeout_s)
            headers_in = {
                key.decode("latin-1").lower(): value.decode("latin-1") for key, value in raw_headers
            }
            decoder = decoder_for(
                headers_in.get("content-encoding"), self._limits.max_decompression_ratio
            )
            if not stream and _declared_length(headers_in) > self._limits.max_response_bytes:
                raise ResponseTooLarge(self._over_limit("its declared length"))
        except TimeoutError as exc:
            pool.release(connection)  # not reusable: closed
            # Connected and sent, but no response headers within the read timeout.
            raise UpstreamTimeout(
                f"Provider {name!r} did not answer within {read_timeout_s:g} s."
            ) from exc
        except ResponseTooLarge as exc:
            pool.release(connection)  # refused before its body was read: not reusable
            raise self._too_large(exc) from exc
        except ResponseBroken as exc:
            pool.release(connection)
            # The text says what broke, never the URL or the key.
            raise UpstreamFailed(f"Provider {name!r} could not be reached ({exc}).") from exc
        except BaseException:  # cancelled (the client left, shutdown): the answer is unread
            pool.release(connection)
            raise
        chunks = self._chunks(
            connection, decoder, None if stream else self._limits.max_response_bytes
        )

        async def release(finished: bool) -> None:
            if finished and not connection.complete:
                try:
                    async with asyncio.timeout(_BODY_END_WAIT_S):
                        while await connection.next_chunk(_BODY_END_WAIT_S) is not None:
                            pass
                except (TimeoutError, ResponseBroken):
                    pass
            # An unread body means the client left early: the connection is closed rather
            # than handed back half-read.
            pool.release(connection)

        return UpstreamResponse(
            status=status,
            headers=relayable_headers(headers_in),
            chunks=chunks,
            _close=release,
        )

    async def _chunks(
        self, connection: Connection, decoder: BoundedDecoder | None, max_bytes: int | None
    ) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded; at most ``max_bytes`` of it, if given."""
        timeout_s = self._config.timeout_s
        received = decoded = 0
        try:
            while (chunk := await connection.next_chunk(timeout_s)) is not None:
                received += len(chunk)
                pieces = decoder.decode(chunk) if decoder is not None else (chunk,)
                for piece in pieces:
                    decoded += len(piece)
                    if max_bytes is not None and max(received, decoded) > max_bytes:
                        raise ResponseTooLarge(self._over_limit("its body"))
                    yield piece
            if decoder is not None and (rest := decoder.finish()):
                decoded += len(rest)
                if max_bytes is not None and decoded > max_bytes:
                    raise ResponseTooLarge(self._over_limit("its body"))
                yield rest
        except (TimeoutError, ResponseBroken, zlib.error) as exc:
            connection.close()  # a broken connection never goes back to the pool
            name = self._config.name
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"Provider {name!r} stopped sending for {timeout_s:g} s."
                ) from exc
            if isinstance(exc, ResponseTooLarge):
                raise self._too_large(exc) from exc
            if isinstance(exc, zlib.error):
                raise UpstreamFailed(
                    f"Provider {name!r} sent a compressed body that does not decompress."
                ) from exc
            raise UpstreamFailed(
                f"Provider {name!r} broke the connection mid-response ({exc})."
            ) from exc

    def _too_large(self, exc: ResponseTooLarge) -> UpstreamFailed:
        # The provider has the request and may well have billed it: may_have_billed.
        return UpstreamFailed(
            f"Provider {self._config.name!r} sent a response Ledger does not accept: {exc}.",
            code=TOO_LARGE,
        )

    def _over_limit(self, what: str) -> str:
        limit = self._limits.max_response_bytes
        return f"{what} is over {limit} bytes (LEDGER_MAX_RESPONSE_BYTES)"

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _declared_length(headers: Mapping[str, str]) -> int:
    """The response's ``content-length``, or 0 when it has none (or not a number)."""
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
