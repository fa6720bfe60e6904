"""The HTTP transport to real providers (aiohttp: measured ~7x httpx's throughput here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import yarl

from ledger.config import ProviderConfig
from ledger.errors import UpstreamFailed, UpstreamTimeout
from ledger.providers.base import UpstreamResponse, relayable_headers

# How long the body's end may trail a stream's last event before the connection is
# dropped instead of reused.
_BODY_END_WAIT_S = 1.0


class HttpTransport:
    """One connection pool per provider; the provider key is added here and nowhere else."""

    def __init__(self, config: ProviderConfig, auth_headers: Mapping[str, str]) -> None:
        self._config = config
        self._auth_headers = dict(auth_headers)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}  # parsed once per path, not per request

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._config.connect_timeout_s,
                    sock_read=self._config.timeout_s,
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                # A provider's cookies are neither kept nor sent back: API calls need none,
                # and one client's request must never carry state from another's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(
        self, path: str, body: bytes, headers: Mapping[str, str], *, stream: bool
    ) -> UpstreamResponse:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(self._config.normalised_base_url + path)
        request_headers = {**headers, **self._auth_headers, "user-agent": "ledger"}
        name = self._config.name
        try:
            response = await self._client().post(url, data=body, headers=request_headers)
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                f"Provider {name!r} did not accept the connection in time.", may_have_billed=False
            ) from exc
        except TimeoutError as exc:
            # Connected and sent, but no response headers within the read timeout.
            raise UpstreamTimeout(
                f"Provider {name!r} did not answer within {self._config.timeout_s:g} s."
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Refused, unresolvable, unroutable: the request never left Ledger.
            raise UpstreamFailed(
                f"Provider {name!r} could not be reached ({type(exc).__name__}).",
                may_have_billed=False,
            ) from exc
        except aiohttp.ClientError as exc:
            # The exception text can hold the URL but never the key; still, say only the kind.
            raise UpstreamFailed(
                f"Provider {name!r} could not be reached ({type(exc).__name__})."
            ) from exc

        async def release(finished: bool) -> None:
            if finished and not response.content.is_eof():
                try:
                    async with asyncio.timeout(_BODY_END_WAIT_S):
                        await response.content.read()
                except (TimeoutError, aiohttp.ClientError):
                    pass
            # An unread body means the client left early: drop the connection rather
            # than hand a half-read one back to the pool.
            if response.content.is_eof():
                response.release()
            else:
                response.close()

        async def read() -> bytes:
            try:
                return await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self._broken(response, exc) from exc

        return UpstreamResponse(
            status=response.status,
            headers=relayable_headers(response.headers),
            chunks=self._chunks(response),
            _close=release,
            _read=read,
        )

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(response, exc) from exc

    def _broken(self, response: aiohttp.ClientResponse, exc: BaseException) -> UpstreamFailed:
        """The error for a response that broke off; its connection is closed at once.

        A broken connection cannot go back to the pool: it is closed here rather than left
        to the garbage collector, whatever the caller does next.
        """
        response.close()
        name = self._config.name
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"Provider {name!r} stopped sending for {self._config.timeout_s:g} s."
            )
        return UpstreamFailed(
            f"Provider {name!r} broke the connection mid-response ({type(exc).__name__})."
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
