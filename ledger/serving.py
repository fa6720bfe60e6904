"""How uvicorn serves Ledger: one place for the server's settings, used by ``ledger serve``.

Two things differ from uvicorn's defaults, both about clients that are not who or
what they claim:

- ``X-Forwarded-For`` is believed only from ``LEDGER_TRUSTED_PROXIES`` (none by
  default). uvicorn believes it from 127.0.0.1 unless told otherwise, so any local
  client could pick the address the failed-key throttle counts.
- A request head must arrive within ``LEDGER_HEADER_READ_TIMEOUT_S``
  (:class:`HeaderTimeoutProtocol`); uvicorn waits for it as long as the connection
  stays open.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from ledger.config import Settings

DEFAULT_HEADER_READ_TIMEOUT_S = 10.0
_TIMEOUT_MESSAGE = b"The request head did not arrive in time."
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TIMEOUT_MESSAGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TIMEOUT_MESSAGE
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head.

    The deadline starts when the connection opens, and again when a response ends and
    the connection waits for the next request; it is met once the head is complete.
    A connection that misses it is closed: with a 408 if part of a head had arrived,
    silently if nothing had (an idle keep-alive connection must not get an answer to
    a request it has not sent yet). The body has a deadline of its own, kept by the
    gateway (``LEDGER_BODY_READ_TIMEOUT_S``).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_timeout_s: float = getattr(
            config, "header_read_timeout_s", DEFAULT_HEADER_READ_TIMEOUT_S
        )
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting_for_head()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._head_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_waiting_for_head()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        next_head_pending = not self.pipeline  # a pipelined request's head is already in
        super().on_response_complete()
        if next_head_pending and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._stop_waiting_for_head()
        self._head_begun = False
        if self._head_timeout_s > 0:
            self._head_deadline = self.loop.call_later(self._head_timeout_s, self._head_too_slow)

    def _stop_waiting_for_head(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``settings``; ``options`` go to uvicorn."""
    trusted = settings.trusted_proxies
    config = uvicorn.Config(
        app,
        http=HeaderTimeoutProtocol,
        proxy_headers=bool(trusted),
        # Never None: uvicorn would then read FORWARDED_ALLOW_IPS from the environment.
        forwarded_allow_ips=trusted or "",
        **options,
    )
    # Read by HeaderTimeoutProtocol; travels with the configuration to worker processes.
    config.header_read_timeout_s = settings.header_read_timeout_s  # type: ignore[attr-defined]
    return config


def run(config: uvicorn.Config) -> None:
    """Serve ``config`` until stopped: in this process, or in ``config.workers`` processes."""
    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's own status for a server that could not start
