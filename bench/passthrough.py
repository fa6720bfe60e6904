"""The baseline: a bare Litestar pass-through with no accounting.

It forwards every POST to the same path on the upstream with one shared aiohttp
``ClientSession`` (``--client ledger``: with Ledger's own provider transport instead,
``ledger/providers/http11.py``), and answers with the upstream's status, content type
and body; an event stream is relayed chunk by chunk as it arrives. No key check, no parsing, no estimate, no budget, no ledger. It runs under
uvicorn with the same settings as ``ledger serve`` (uvloop and httptools when installed,
no access log).

    python bench/passthrough.py --port 9200 --upstream http://127.0.0.1:9100
    python bench/passthrough.py --port 9201 --upstream http://127.0.0.1:9100 --client ledger
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream


def create_app(upstream: str, client: str = "aiohttp") -> Litestar:
    """A Litestar app that relays POST /{path} to ``upstream``/{path}."""
    if client == "ledger":
        return _create_app_on_ledger_transport(upstream)
    base = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        state["session"] = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            skip_auto_headers=("User-Agent",),
        )
        try:
            yield
        finally:
            await state["session"].close()

    @post("/{path:path}", status_code=200, request_max_body_size=None)
    async def relay(request: Request[Any, Any, Any], path: str) -> Response[bytes] | Stream:
        body = await request.body()
        upstream_response = await state["session"].post(
            base + path, data=body, headers={"content-type": "application/json"}
        )
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream_response.content.iter_any():
                        yield chunk
                finally:
                    upstream_response.release()

            return Stream(chunks(), status_code=upstream_response.status, media_type=content_type)
        payload = await upstream_response.read()
        upstream_response.release()
        return Response(payload, status_code=upstream_response.status, media_type=content_type)

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[relay, healthz], lifespan=[lifespan], debug=False)


def _create_app_on_ledger_transport(upstream: str) -> Litestar:
    from ledger.config import ProviderConfig
    from ledger.providers.http import HttpTransport

    transport = HttpTransport(ProviderConfig(name="upstream", kind="openai", base_url=upstream), {})

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await transport.aclose()

    @post("/{path:path}", status_code=200, request_max_body_size=None)
    async def relay(request: Request[Any, Any, Any], path: str) -> Response[bytes] | Stream:
        body = await request.body()
        upstream_response = await transport.send(
            path, body, {"content-type": "application/json"}, stream=False
        )
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream_response.chunks:
                        yield chunk
                finally:
                    await upstream_response.aclose(finished=True)

            return Stream(chunks(), status_code=upstream_response.status, media_type=content_type)
        payload = await upstream_response.read()
        await upstream_response.aclose(finished=True)
        return Response(payload, status_code=upstream_response.status, media_type=content_type)

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[relay, healthz], lifespan=[lifespan], debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    parser.add_argument(
        "--client", choices=("aiohttp", "ledger"), default="aiohttp", help="the upstream client"
    )
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.client),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
    )


if __name__ == "__main__":
    main()
