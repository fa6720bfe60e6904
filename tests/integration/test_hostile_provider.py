"""A provider that sends what nobody asked for, or far too much: no leak, no blow-up.

The provider here is a small raw HTTP/1.1 server on loopback (aiohttp would not send a
response unasked, nor count what its socket took), driven by words in the prompt:

- ``stray``: answer, then 0.1 s later write a second, unasked response on the same
  kept-alive connection (with a huge usage, as a bill for someone else);
- ``flood``: a JSON answer without a length, endless (up to 64 MiB);
- ``bomb``: a gzip body (plain or stream) that would inflate about a thousand times;
- ``huge_event``: a stream whose second event never ends (up to 64 MiB).

Ledger runs with small limits (2 MiB a response, 1 MiB an event) so that "refused
before reading past the limit" shows in the bytes the provider managed to send.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from ledger.config import ProviderConfig, Settings
from tests.integration.fault_support import (
    ALL,
    ANTHROPIC,
    MODELS,
    OPENAI,
    PLAIN,
    STREAMS,
    Clients,
    Kind,
    backend_of,
    kind_of,
    reservations_left,
    tally,
)
from tests.live import ADMIN_KEY, LiveServer

MIB = 1024 * 1024
MAX_RESPONSE = 2 * MIB
MAX_EVENT = 1 * MIB
FLOOD = 64 * MIB  # what the provider would send, were it let
# Refused at the limit, the provider can have sent no more than the limit and what the
# sockets' buffers took meanwhile; reading it whole would be all 64 MiB.
SENT_AT_MOST = 24 * MIB
INPUT_PRICE = {OPENAI: Decimal("0.40"), ANTHROPIC: Decimal("3.00")}  # catalog, per million
OUTPUT_PRICE = {OPENAI: Decimal("1.60"), ANTHROPIC: Decimal("15.00")}
STRAY_TOKENS = 99_999


def prompt_tokens(text: str) -> int:
    """The usage this provider reports for a prompt: its own, distinct per request."""
    return 100 + len(text)


# -- the provider -----------------------------------------------------------------------------


@dataclass
class Served:
    text: str
    connection: int
    sent: int = 0  # body bytes the socket took, for the floods


@dataclass
class HostileProvider:
    port: int = 0
    served: list[Served] = field(default_factory=list)
    _connections: int = 0

    def __enter__(self) -> HostileProvider:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop)
        started.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def served_for(self, marker: str) -> list[Served]:
        return [s for s in self.served if marker in s.text]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                protocol = OPENAI if head.startswith("POST /v1/chat/completions") else ANTHROPIC
                content = body["messages"][-1]["content"]
                served = Served(content, number)
                self.served.append(served)
                await self._answer(writer, protocol, bool(body.get("stream")), served)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, protocol: str, stream: bool, served: Served
    ) -> None:
        words = served.text.split()
        if "flood" in words:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
            await _flood(writer, served, head, b'{"id": "x", "pad": "', b" " * 65536)
        elif "bomb" in words:
            kind = b"text/event-stream" if stream else b"application/json"
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\n"
                b"content-encoding: gzip\r\nconnection: close\r\n\r\n"
            )
            first, piece = _bomb_pieces()
            await _flood(writer, served, head, first, piece)
        elif "huge_event" in words:
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            start = _stream_events(protocol, served.text, "Echo")[0]
            await _flood(writer, served, head, start + b"data: " + b"x" * 10, b"x" * 65536)
        else:
            writer.write(_response(protocol, stream, served.text, prompt_tokens(served.text)))
            await writer.drain()
            if "stray" in words:
                await asyncio.sleep(0.1)
                writer.write(_response(protocol, False, "STRAY", STRAY_TOKENS))
                await writer.drain()


async def _flood(
    writer: asyncio.StreamWriter, served: Served, head: bytes, first: bytes, piece: bytes
) -> None:
    writer.write(head + first)
    try:
        while served.sent < FLOOD:
            writer.write(piece)
            await writer.drain()
            served.sent += len(piece)
    except ConnectionError:
        pass
    writer.close()


def _bomb_pieces() -> tuple[bytes, bytes]:
    # After a full flush, every further MiB of zeros compresses to the very same bytes.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)


def _response(protocol: str, stream: bool, text: str, prompt: int) -> bytes:
    reply = f"Echo: {text}"
    if stream:
        body = b"".join(_stream_events(protocol, text, reply, prompt))
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    if protocol == OPENAI:
        payload: dict[str, Any] = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5},
        }  # fmt: skip
    else:
        payload = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 5},
        }  # fmt: skip
    data = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


def _stream_events(protocol: str, text: str, reply: str, prompt: int = 100) -> list[bytes]:
    def event(data: dict[str, Any]) -> bytes:
        name = f"event: {data['type']}\n" if "type" in data else ""
        return f"{name}data: {json.dumps(data)}\n\n".encode()

    if protocol == OPENAI:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        usage = {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
        return [
            event({**chunk, "choices": [{"index": 0, "delta": {"content": reply}}]}),
            event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            event({**chunk, "choices": [], "usage": usage}),
            b"data: [DONE]\n\n",
        ]
    usage = {"input_tokens": prompt, "output_tokens": 1}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m"}
    block = {"type": "text", "text": ""}
    return [
        event({"type": "message_start", "message": {**message, "content": [], "usage": usage}}),
        event({"type": "content_block_start", "index": 0, "content_block": block}),
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": reply},
            }
        ),
        event({"type": "content_block_stop", "index": 0}),
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 5},
            }
        ),
        event({"type": "message_stop"}),
    ]


# -- the Ledger under test ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileProvider]:
    with HostileProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def ledger(module_database_url: str, hostile: HostileProvider) -> Iterator[LiveServer]:
    base = f"http://127.0.0.1:{hostile.port}"
    providers = (
        ProviderConfig(name="openai", kind="openai", base_url=base + "/v1", timeout_s=10),
        ProviderConfig(
            name="anthropic", kind="anthropic", base_url=base, timeout_s=10,
            use_count_tokens=False,  # one upstream call per request
        ),
    )  # fmt: skip
    settings = Settings(
        database_url=module_database_url,
        admin_key=ADMIN_KEY,
        providers=providers,
        scheduler=False,
        writer_process=False,
        max_response_bytes=MAX_RESPONSE,
        max_event_bytes=MAX_EVENT,
    )
    with LiveServer(settings) as server:
        yield server


def _team_with_budget(server: LiveServer) -> tuple[str, str, str]:
    """A new team, its key and run tag, under a hard budget: reservations are made."""
    run = uuid.uuid4().hex[:10]
    team = f"hp-{run}"
    server.create_team(team)
    key = server.create_key(team)
    budget = {"team": team, "limit_usd": "1000.00", "period": "monthly", "mode": "hard"}
    assert server.admin.post("/admin/budgets", json=budget).status_code == 201
    return team, key, f"run-{run}"


def _entries(server: LiveServer, team: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while len(server.entries(team=team)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a late duplicate would show up here
    return server.entries(team=team)


def _released(database_url: str) -> int:
    deadline = time.monotonic() + 6
    while (left := reservations_left(database_url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _catalog_cost(entry: dict[str, Any]) -> Decimal:
    protocol, usage = kind_of(entry).protocol, entry["usage"]
    return (
        usage["input_tokens"] * INPUT_PRICE[protocol]
        + usage["output_tokens"] * OUTPUT_PRICE[protocol]
    ) / Decimal(1_000_000)


# -- a stray response ---------------------------------------------------------------------


async def _ask(base_url: str, key: str, kind: Kind, text: str) -> tuple[str, str]:
    """The answer's text and the request id, through the official SDK."""
    messages: Any = [{"role": "user", "content": text}]
    if kind.protocol == OPENAI:
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0) as c:
            model = MODELS[OPENAI]
            if kind.stream:
                stream = await c.chat.completions.create(
                    model=model, messages=messages, stream=True
                )
                parts = [e.choices[0].delta.content or "" async for e in stream if e.choices]
                return "".join(parts), stream.response.headers["x-ledger-request-id"]
            raw = await c.chat.completions.with_raw_response.create(model=model, messages=messages)
            content = raw.parse().choices[0].message.content or ""
            return content, raw.headers["x-ledger-request-id"]
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0) as c:
        model = MODELS[ANTHROPIC]
        if kind.stream:
            stream = await c.messages.create(
                model=model, max_tokens=100, messages=messages, stream=True
            )
            parts = [e.delta.text async for e in stream if e.type == "content_block_delta"]
            return "".join(parts), stream.response.headers["x-ledger-request-id"]
        raw = await c.messages.with_raw_response.create(
            model=model, max_tokens=100, messages=messages
        )
        block = (await raw.parse()).content[0]
        return getattr(block, "text", ""), raw.headers["x-ledger-request-id"]


@pytest.mark.parametrize("kind", ALL, ids=str)
def test_a_stray_response_never_becomes_another_clients_answer_or_bill(
    ledger: LiveServer, hostile: HostileProvider, module_database_url: str, kind: Kind
) -> None:
    team_a, key_a, run = _team_with_budget(ledger)
    team_b, key_b, _ = _team_with_budget(ledger)
    asked = [(key_a, f"stray first {run}"), (key_b, f"second {run}"), (key_a, f"third {run}")]

    async def one_after_another() -> list[tuple[str, str]]:
        answers = []
        for key, text in asked:
            answers.append(await _ask(ledger.url, key, kind, text))
            await asyncio.sleep(0.4)  # the stray response arrives while the connection idles
        return answers

    answers = asyncio.run(one_after_another())
    mixed = sum(
        answer != f"Echo: {text}" for (_, text), (answer, _) in zip(asked, answers, strict=True)
    )
    entries = _entries(ledger, team_a, 2) + _entries(ledger, team_b, 1)
    by_id = {entry["request_id"]: entry for entry in entries}
    for (_, text), (_, request_id) in zip(asked, answers, strict=True):
        entry = by_id.get(request_id)
        # Each entry is priced by its own request's usage, never by the stray one.
        if entry is None or entry["usage"]["input_tokens"] != prompt_tokens(text):
            mixed += 1
        else:
            assert entry["status"] == "ok" and entry["usage_source"] == "provider", entry
            assert Decimal(entry["cost_usd"]) == _catalog_cost(entry), entry
    figures = tally(
        f"hostile_stray_response_{kind}",
        backend_of(module_database_url),
        len(asked),
        list(by_id),
        [request_id for _, request_id in answers],
        _released(module_database_url),
        mixed,
    )
    assert (figures.lost, figures.duplicated, figures.mixed) == (0, 0, 0), (figures, answers)
    assert figures.recorded == len(asked) and figures.reservations_left == 0
    # The connection that carried the stray response was never used again.
    (first,) = hostile.served_for(asked[0][1])
    later = hostile.served_for(asked[1][1]) + hostile.served_for(asked[2][1])
    assert first.connection not in {s.connection for s in later}


# -- too much -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TooMuch:
    name: str
    word: str
    kinds: tuple[Kind, ...]

    def __str__(self) -> str:
        return self.name


TOO_MUCH = [
    TooMuch("hostile_oversize_json", "flood", PLAIN),
    TooMuch("hostile_gzip_bomb", "bomb", (*PLAIN, *STREAMS)),
    TooMuch("hostile_oversize_sse_event", "huge_event", STREAMS),
]


@pytest.mark.parametrize("case", TOO_MUCH, ids=str)
def test_an_answer_over_the_limits_is_refused_early_and_billed_as_estimated(
    ledger: LiveServer, hostile: HostileProvider, module_database_url: str, case: TooMuch
) -> None:
    team, key, tag = _team_with_budget(ledger)
    per_kind = 2

    async def burst() -> list[Any]:
        clients = Clients(ledger.url, key, tag)
        try:
            return await asyncio.gather(
                *(
                    clients.send(kind, f"{case.word} n{n} {tag}")
                    for n in range(per_kind)
                    for kind in case.kinds
                )
            )
        finally:
            await clients.close()

    outcomes = asyncio.run(burst())
    for outcome in outcomes:
        if outcome.kind.stream:  # the client has its 200: the stream ends with an error
            assert outcome.answer == "stream_error" and outcome.http == 200, outcome
            error = outcome.body if outcome.kind.protocol == OPENAI else outcome.body["error"]
        else:  # a 502 in the caller's own protocol
            assert (outcome.answer, outcome.http) == ("status", 502), outcome
            error = outcome.body if outcome.kind.protocol == OPENAI else outcome.body["error"]
            if outcome.kind.protocol == ANTHROPIC:
                assert outcome.body["type"] == "error"
        assert error["type"] == "api_error" and "LEDGER_MAX_" in error["message"], error

    entries = _entries(ledger, team, len(outcomes))
    for entry in entries:
        assert entry["status"] == "upstream_error", entry
        assert entry["http_status"] == (200 if entry["stream"] else 502), entry
        assert "LEDGER_MAX_" in entry["error"], entry
        # The provider had the request and may have billed it: never $0.
        assert entry["usage_source"] == "estimated" and entry["usage"]["input_tokens"] > 0
        assert Decimal(entry["cost_usd"]) == _catalog_cost(entry) > 0, entry
    # Ledger stopped reading at the limit: the provider could not send it all.
    served = hostile.served_for(tag)
    assert len(served) == len(outcomes)
    assert max(s.sent for s in served) < SENT_AT_MOST, [s.sent for s in served]
    figures = tally(
        case.name,
        backend_of(module_database_url),
        len(outcomes),
        [entry["request_id"] for entry in entries],
        [outcome.request_id for outcome in outcomes],
        _released(module_database_url),
    )
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    assert figures.recorded == len(outcomes)
