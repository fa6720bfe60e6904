"""The provider transport against a real HTTP server on loopback that answers as scripted.

Each test scripts the bytes a provider's server sends (keep-alive, ``Connection: close``,
chunked, gzip, a body that ends with the connection, a stall, a reset) and checks what
Ledger's transport makes of them, and how many connections it opened.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trustme

from ledger.config import ProviderConfig
from ledger.errors import InvalidRequest, UpstreamFailed, UpstreamTimeout
from ledger.providers.http import HttpTransport
from ledger.providers.http11 import ConnectionPool, Origin, request_head

pytestmark = pytest.mark.anyio

Responder = Callable[["Received", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Received:
    head: str
    body: bytes
    connection: int  # which of the server's connections carried it, from 1


@dataclass
class ScriptedServer:
    respond: Responder
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = int(_header(head, "content-length") or 0)
                received = Received(head, await reader.readexactly(length), number)
                self.requests.append(received)
                await self.respond(received, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()


def _header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@asynccontextmanager
async def scripted(
    respond: Responder, tls: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(respond)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


def transport_to(
    server: ScriptedServer, *, scheme: str = "http", timeout_s: float = 5.0, prefix: str = "/v1"
) -> HttpTransport:
    config = ProviderConfig(
        name="scripted",
        kind="openai",
        base_url=f"{scheme}://localhost:{server.port}{prefix}",
        timeout_s=timeout_s,
        connect_timeout_s=2.0,
    )
    return HttpTransport(config, {"authorization": "Bearer sk-provider-secret"})


def json_reply(body: bytes = b'{"ok": true}', extra: str = "") -> Responder:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + extra.encode()
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return respond


async def post(transport: HttpTransport, body: bytes = b'{"q": 1}', **headers: str) -> bytes:
    response = await transport.send(
        "/chat/completions", body, {"content-type": "application/json", **headers}, stream=False
    )
    try:
        return await response.read()
    finally:
        await response.aclose(finished=True)


async def test_requests_share_one_keep_alive_connection_and_arrive_whole() -> None:
    async with scripted(json_reply()) as server:
        transport = transport_to(server)
        try:
            for number in range(3):
                assert await post(transport, b'{"n": %d}' % number) == b'{"ok": true}'
        finally:
            await transport.aclose()
    assert server.connections == 1
    assert [r.body for r in server.requests] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    first = server.requests[0].head
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert _header(first, "host") == f"localhost:{server.port}"
    assert _header(first, "authorization") == "Bearer sk-provider-secret"
    assert _header(first, "content-type") == "application/json"


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    async def respond(received: Received, writer: asyncio.StreamWriter) -> None:
        await json_reply(extra="connection: close\r\n")(received, writer)
        writer.close()

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            for _ in range(3):
                assert await post(transport) == b'{"ok": true}'
        finally:
            await transport.aclose()
    assert server.connections == 3


async def test_an_idle_connection_closed_by_the_server_is_replaced_without_an_error() -> None:
    async def respond(received: Received, writer: asyncio.StreamWriter) -> None:
        await json_reply()(received, writer)
        writer.close()  # as a server does when its keep-alive timeout ends: no header says so

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            assert await post(transport) == b'{"ok": true}'
            await asyncio.sleep(0.1)  # the close reaches the idle connection
            assert await post(transport) == b'{"ok": true}'
        finally:
            await transport.aclose()
    assert server.connections == 2


async def test_a_chunked_stream_is_relayed_as_it_arrives() -> None:
    release_rest = asyncio.Event()

    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nx-request-id: req-9\r\nset-cookie: a=b\r\n\r\n"
        )
        writer.write(b"a\r\ndata: one\n\r\n")
        await writer.drain()
        await release_rest.wait()  # the rest only once the client has the first event
        writer.write(b"a\r\ndata: two\n\r\n0\r\n\r\n")
        await writer.drain()

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            response = await transport.send("/chat/completions", b"{}", {}, stream=True)
            assert response.status == 200
            # Only headers a client may rely on are passed on (no cookies).
            assert response.headers == {
                "content-type": "text/event-stream",
                "x-request-id": "req-9",
            }
            chunks = aiter(response.chunks)
            assert await anext(chunks) == b"data: one\n"
            release_rest.set()
            assert await anext(chunks) == b"data: two\n"
            with pytest.raises(StopAsyncIteration):
                await anext(chunks)
            await response.aclose(finished=True)
            # The body's end was read, so the connection serves the next request.
            assert await post(transport) == b"data: one\ndata: two\n"
        finally:
            await transport.aclose()
    assert server.connections == 1


async def test_a_gzip_body_is_decoded_although_the_request_asks_for_none() -> None:
    payload = b'{"usage": {"prompt_tokens": 3}}' * 100

    async def respond(received: Received, writer: asyncio.StreamWriter) -> None:
        assert _header(received.head, "accept-encoding") == "identity"
        await json_reply(gzip.compress(payload), "content-encoding: gzip\r\n")(received, writer)

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            assert await post(transport) == payload
        finally:
            await transport.aclose()


async def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{"a":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" 1}")
        writer.close()

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            assert await post(transport) == b'{"a": 1}'
        finally:
            await transport.aclose()


async def test_a_large_body_comes_through_intact_to_a_slow_reader() -> None:
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB, more than the transport buffers

    async with scripted(json_reply(payload)) as server:
        transport = transport_to(server)
        try:
            response = await transport.send("/chat/completions", b"{}", {}, stream=True)
            parts = []
            async for chunk in response.chunks:
                parts.append(chunk)
                if len(parts) % 16 == 0:
                    await asyncio.sleep(0.001)
            await response.aclose(finished=True)
        finally:
            await transport.aclose()
    assert b"".join(parts) == payload


async def test_no_answer_within_the_read_timeout_is_a_timeout_and_the_connection_goes() -> None:
    async def respond(received: Received, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 1:
            await asyncio.sleep(1.0)  # answers after the client's timeout
        await json_reply()(received, writer)

    async with scripted(respond) as server:
        transport = transport_to(server, timeout_s=0.2)
        try:
            with pytest.raises(UpstreamTimeout) as timed_out:
                await post(transport)
            assert "did not answer within 0.2 s" in timed_out.value.message
            assert timed_out.value.may_have_billed
            assert await post(transport) == b'{"ok": true}'
        finally:
            await transport.aclose()
    assert server.connections == 2  # the late answer was not read as the second one's


async def test_a_stream_that_stalls_between_chunks_times_out() -> None:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(1.0)

    async with scripted(respond) as server:
        transport = transport_to(server, timeout_s=0.2)
        try:
            response = await transport.send("/chat/completions", b"{}", {}, stream=True)
            chunks = aiter(response.chunks)
            assert await anext(chunks) == b"first"
            with pytest.raises(UpstreamTimeout, match=r"stopped sending for 0\.2 s"):
                await anext(chunks)
            await response.aclose()
        finally:
            await transport.aclose()


async def test_a_connection_broken_mid_body_is_an_upstream_failure() -> None:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial":')
        await writer.drain()
        writer.close()

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            with pytest.raises(UpstreamFailed, match="broke the connection mid-response"):
                await post(transport)
        finally:
            await transport.aclose()


async def test_what_is_not_http_is_an_upstream_failure_not_a_crash() -> None:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            with pytest.raises(UpstreamFailed, match="not valid HTTP"):
                await post(transport)
        finally:
            await transport.aclose()


async def test_a_refused_connection_never_left_so_it_cannot_have_billed() -> None:
    async with scripted(json_reply()) as server:
        port = server.port
    transport = transport_to(ScriptedServer(json_reply(), port=port))
    try:
        with pytest.raises(UpstreamFailed) as failed:
            await post(transport)
    finally:
        await transport.aclose()
    assert not failed.value.may_have_billed
    assert "sk-provider-secret" not in failed.value.message


async def test_an_abandoned_stream_closes_its_connection() -> None:
    async def respond(received: Received, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            return  # and never ends that body
        await json_reply()(received, writer)

    async with scripted(respond) as server:
        transport = transport_to(server)
        try:
            response = await transport.send("/chat/completions", b"{}", {}, stream=True)
            assert await anext(aiter(response.chunks)) == b"first"
            await response.aclose()  # the client left
            assert await post(transport) == b'{"ok": true}'
        finally:
            await transport.aclose()
    assert server.connections == 2


async def test_a_header_that_would_split_the_request_is_refused_before_anything_is_sent() -> None:
    async with scripted(json_reply()) as server:
        transport = transport_to(server)
        try:
            with pytest.raises(InvalidRequest):
                await post(transport, **{"anthropic-beta": "x\r\nx-injected: 1"})
        finally:
            await transport.aclose()
    assert server.requests == []


async def test_https_with_a_certificate_the_system_trusts(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    async with scripted(json_reply(), tls=server_tls) as server:
        untrusted = transport_to(server, scheme="https")
        try:
            with pytest.raises(UpstreamFailed) as failed:
                await post(untrusted)
            assert not failed.value.may_have_billed
        finally:
            await untrusted.aclose()

        # A private authority is trusted the usual OpenSSL way, through SSL_CERT_FILE.
        bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
        authority.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        trusted = transport_to(server, scheme="https")
        try:
            assert await post(trusted) == b'{"ok": true}'
            assert await post(trusted) == b'{"ok": true}'
        finally:
            await trusted.aclose()
    assert server.requests[0].head.startswith("POST /v1/chat/completions HTTP/1.1")


@pytest.mark.parametrize("damage", ["truncated", "checksum"])
async def test_a_damaged_gzip_body_is_an_upstream_failure(damage: str) -> None:
    whole = gzip.compress(b'{"ok": true}')
    damaged = whole[:-8] if damage == "truncated" else whole[:-8] + b"\x00" * 8
    async with scripted(json_reply(damaged, "content-encoding: gzip\r\n")) as server:
        transport = transport_to(server)
        try:
            with pytest.raises(UpstreamFailed, match="does not decompress"):
                await post(transport)
        finally:
            await transport.aclose()


async def test_connections_idle_past_keep_alive_are_closed_not_reused() -> None:
    async with scripted(json_reply()) as server:
        pool = ConnectionPool(
            Origin("http", "127.0.0.1", server.port), connect_timeout_s=2.0, keepalive_s=0.5
        )
        try:
            for pause_s in (0.0, 0.05, 0.8):
                await asyncio.sleep(pause_s)
                connection = await pool.acquire()
                connection.send(request_head(pool.origin, "/", {}, 2), b"{}")
                assert (await connection.response_head(2.0))[0] == 200
                while await connection.next_chunk(2.0) is not None:
                    pass
                pool.release(connection)
        finally:
            pool.close()
    # The second request reused the first connection; the third came after 0.8 s idle.
    assert [r.connection for r in server.requests] == [1, 1, 2]
