"""A webhook receiver for alert tests: a real HTTP server on loopback that keeps what it gets.

Like ``tests/fake_upstream.py`` it runs an aiohttp server in a background thread with its
own event loop, on 127.0.0.1 and an ephemeral port::

    with WebhookReceiver(secret="s3cret", fail_first=3) as receiver:
        channel = AlertChannelConfig("ops", "webhook", receiver.url + "/hook", "s3cret")
        ...
        assert [call.json["threshold_percent"] for call in receiver.calls] == [50, 80, 100]

Every POST is recorded, whatever the answer. The first ``fail_first`` calls are answered
with HTTP 500 (and recorded as failed); the rest with 200. When a ``secret`` is given, each
call's ``x-ledger-signature`` is checked independently of Ledger's own code:
``"sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class WebhookCall:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int  # the HTTP status the receiver answered with
    signature_ok: bool | None  # None when the receiver has no secret

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, *, secret: str | None = None, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self._calls: list[WebhookCall] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> list[WebhookCall]:
        """Every call so far, oldest first (failed ones included)."""
        with self._lock:
            return list(self._calls)

    @property
    def delivered(self) -> list[WebhookCall]:
        """The calls that were accepted (answered 2xx)."""
        return [call for call in self.calls if call.answered < 300]

    def __enter__(self) -> WebhookReceiver:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if not self.port:
            raise RuntimeError("the webhook receiver did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        finally:
            self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        signature_ok = None
        if self.secret is not None:
            timestamp = headers.get("x-ledger-timestamp", "")
            digest = hmac.new(
                self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
            signature_ok = hmac.compare_digest(
                headers.get("x-ledger-signature", ""), "sha256=" + digest
            )
        with self._lock:
            status = 500 if len(self._calls) < self.fail_first else 200
            self._calls.append(WebhookCall(request.path, headers, body, status, signature_ok))
        return web.json_response({"ok": status == 200}, status=status)
