"""What every provider transport returns, whatever carried it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Provider response headers a client may rely on; everything else (cookies, hop-by-hop
# headers, the provider's own infrastructure headers) stays behind.
RELAYED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "anthropic-organization-id",
    }
)
RELAYED_RESPONSE_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def relayable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of a provider's response headers that is passed on to the client."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in RELAYED_RESPONSE_HEADERS or lower.startswith(RELAYED_RESPONSE_HEADER_PREFIXES):
            kept[lower] = value
    return kept


@dataclass
class UpstreamResponse:
    """A provider's answer: status and headers now, body later (read whole or chunk by chunk)."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]
    _close: Callable[[bool], Awaitable[None]] | None = field(default=None, repr=False)
    # The whole body at once, where the transport has a quicker way than chunk by chunk.
    _read: Callable[[], Awaitable[bytes]] | None = field(default=None, repr=False)

    async def read(self) -> bytes:
        if self._read is not None:
            return await self._read()
        parts = [chunk async for chunk in self.chunks]
        return b"".join(parts)

    async def aclose(self, *, finished: bool = False) -> None:
        """Let go of the response.

        ``finished``: the provider has sent its last event, so what may remain of the body
        (its end marker) is worth a moment's wait to keep the connection for reuse.
        Otherwise the rest is abandoned at once.
        """
        close_chunks = getattr(self.chunks, "aclose", None)
        if close_chunks is not None:
            await close_chunks()
        if self._close is not None:
            close, self._close = self._close, None
            await close(finished)


class Transport(Protocol):
    """Sends one request to a provider. Raises :class:`ledger.errors.UpstreamFailed` on I/O errors."""

    async def send(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        method: str = "POST",
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...
