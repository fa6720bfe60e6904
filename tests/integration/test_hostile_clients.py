"""Clients that lie about their address, hold connections open, or find the database locked.

- The failed-key throttle counts the connection's peer unless a proxy is configured as
  trusted (``LEDGER_TRUSTED_PROXIES``), and it never refuses a valid key.
- A request head, and a request body, must arrive in time; a body is read only for a
  caller with a valid key in the headers (or a small body that may carry the key).
- A budget decision waits a bounded time for a locked SQLite file, then answers 503.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import backend_of, reservations_left, tally
from tests.live import LiveServer, gateway_settings
from tests.processes import LedgerProcess

MODEL = "gpt-4.1-mini"
CLAUDE = "claude-sonnet-4-5"
# Generous bounds for behaviour that happens "within the configured timeout" on a busy
# host; the timeouts themselves are 1 s.
WITHIN_S = 8.0


def _client(local_address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=local_address), timeout=10)


def _models(client: httpx.Client, server: LiveServer, key: str, forwarded: str | None = None):
    headers = {"authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["x-forwarded-for"] = forwarded
    return client.get(server.url + "/v1/models", headers=headers)


def _chat(client: httpx.Client, server: LiveServer, key: str, forwarded: str) -> httpx.Response:
    return client.post(
        server.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": forwarded},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
    )


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A SQLite file, for tests that are about one backend only."""
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


# -- finding 10: the throttle counts an address nobody can forge ---------------------------


# uvicorn alone believes X-Forwarded-For from 127.0.0.1: the clients below connect from there.


def test_made_up_forwarded_addresses_do_not_escape_the_throttle_by_default(
    gateway: LiveServer,
) -> None:
    with _client("127.0.0.1") as guesser:
        for n in range(30):
            response = _models(guesser, gateway, f"sk-ledger-guess-{n}", f"203.0.113.{n}")
            assert response.status_code == 401, (n, response.text)
        refused = _models(guesser, gateway, "sk-ledger-guess-30", "198.51.100.77")
        assert refused.status_code == 429, refused.text


def test_a_forged_forwarded_address_cannot_lock_out_a_valid_key(gateway: LiveServer) -> None:
    key = gateway.team_key()
    with _client("127.0.0.1") as forger, _client("127.0.0.5") as neighbour:
        for n in range(31):
            _models(forger, gateway, f"sk-ledger-forged-{n}", "127.0.0.5")
        assert _models(neighbour, gateway, key).status_code == 200
        assert _models(neighbour, gateway, "sk-ledger-wrong").status_code == 401
        # The forger's own address is what was counted, and still its valid key is served.
        assert _models(forger, gateway, "sk-ledger-forged-31").status_code == 429
        assert _models(forger, gateway, key, "127.0.0.5").status_code == 200


def test_a_trusted_proxys_forwarded_address_is_what_the_throttle_counts(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(database_url, fake_upstream, trusted_proxies="127.0.0.1")
    with LiveServer(settings) as server, _client("127.0.0.1") as proxy:
        key = server.team_key()
        for n in range(30):
            response = _models(proxy, server, f"sk-ledger-guess-{n}", "203.0.113.9")
            assert response.status_code == 401, (n, response.text)
        assert _models(proxy, server, "sk-ledger-guess-30", "203.0.113.9").status_code == 429
        # Another client behind the same proxy is not affected.
        assert _models(proxy, server, "sk-ledger-guess-31", "203.0.113.10").status_code == 401
        # A valid key is never refused by the throttle, even from the throttled address.
        assert _models(proxy, server, key, "203.0.113.9").status_code == 200
        served = _chat(proxy, server, key, "203.0.113.9")
        assert served.status_code == 200, served.text
        # An address that is not a trusted proxy is counted as itself, whatever it forwards.
        with _client("127.0.0.2") as untrusted:
            assert _models(untrusted, server, "sk-ledger-other", "203.0.113.9").status_code == 401


# -- finding 11: slow clients are cut off, and no key means no body ------------------------


@pytest.fixture
def impatient(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    """A server whose header and body deadlines are 1 s."""
    settings = gateway_settings(
        database_url, fake_upstream, header_read_timeout_s=1.0, body_read_timeout_s=1.0
    )
    with LiveServer(settings) as server:
        yield server


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WITHIN_S)


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (within WITHIN_S)."""
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def _head(path: str, length: int | None, key: str | None = None, *, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
    if key is not None:
        lines.append(f"authorization: Bearer {key}")
    if chunked:
        lines.append("transfer-encoding: chunked")
    elif length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _request_id(answer: bytes) -> str | None:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-ledger-request-id":
            return value.strip().decode()
    return None


def test_a_connection_that_never_finishes_its_headers_is_closed_at_the_header_deadline(
    impatient: LiveServer,
) -> None:
    started = time.monotonic()
    with _connect(impatient) as partial, _connect(impatient) as silent:
        partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bea")
        answer = _until_closed(partial)
        # A connection that sent nothing is closed without an answer to a request it never
        # made (a client reusing it would read that answer as the reply to its next one).
        assert _until_closed(silent) == b""
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < WITHIN_S
    # The server still serves everyone else.
    assert impatient.admin.get("/healthz").status_code == 200


def test_ledger_serve_with_several_workers_keeps_the_head_deadline(sqlite_url: str) -> None:
    # The server's settings, not the database: one backend is enough.
    env = {"LEDGER_HEADER_READ_TIMEOUT_S": "1", "LEDGER_WORKERS": "2"}
    with LedgerProcess(sqlite_url, env=env) as process:
        for _ in range(2):  # the connections may land on either worker
            with socket.create_connection(("127.0.0.1", process.port), timeout=WITHIN_S) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                answer = _until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_recorded_once(
    impatient: LiveServer, database_url: str
) -> None:
    key = impatient.team_key()
    slow = [_connect(impatient) for _ in range(3)]
    anonymous = _connect(impatient)
    try:
        for sock in slow:
            sock.sendall(_head("/v1/chat/completions", 1_000_000, key) + b'{"model": "gpt')
        # Without a key, a small body on a seed path may carry one: it gets the same deadline.
        anonymous.sendall(_head("/api/v7/llm/chat/completions", 500) + b'{"key": "sk-')
        answers = [_until_closed(sock) for sock in slow]
        anonymous_answer = _until_closed(anonymous)
    finally:
        for sock in (*slow, anonymous):
            sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"code":"request_timeout"' in answer
    assert anonymous_answer.startswith(b"HTTP/1.1 408"), anonymous_answer
    assert _request_id(anonymous_answer) is None  # nobody to charge: no entry

    seen = [_request_id(answer) for answer in answers]
    entries = impatient.wait_for_entries(len(slow))
    assert sorted(e["request_id"] for e in entries) == sorted(seen)  # type: ignore[type-var]
    assert {(e["status"], e["http_status"]) for e in entries} == {("invalid_request", 408)}
    figures = tally(
        "slow_body_408",
        backend_of(database_url),
        len(slow),
        [e["request_id"] for e in entries],
        seen,
        reservations_left(database_url),
    )
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures


@pytest.mark.parametrize("key", [None, "sk-ledger-not-a-key"], ids=["no-key", "bad-key"])
def test_a_large_body_without_a_valid_key_is_refused_before_it_is_read(
    impatient: LiveServer, key: str | None
) -> None:
    declared = 29 * 1024 * 1024
    with _connect(impatient) as sock:
        sock.sendall(_head("/v1/chat/completions", declared, key) + b"x" * 1024)
        # The answer comes while the client has sent 1 KiB of its 29 MiB.
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert impatient.entries() == []


def test_a_chunked_body_without_a_key_is_read_only_up_to_64_kib(impatient: LiveServer) -> None:
    chunk = b"x" * 16384
    with _connect(impatient) as sock:
        # 80 KiB of a body that never ends: refused once past 64 KiB, not at the deadline.
        sock.sendall(
            _head("/api/v7/llm/chat/completions", None, chunked=True)
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 5
        )
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert b"64 KiB" in answer


# -- finding 12: a locked SQLite file does not stall budgeted requests ----------------------
# SQLite only, by nature: the lock is another process's write lock on the database file
# (PostgreSQL outages are tested in test_fault_matrix.py).


def _forwarded(fake: FakeUpstream, marker: str) -> list[Any]:
    """Billable requests carrying ``marker`` that reached the provider (token counts are free)."""
    return [
        r
        for r in fake.requests
        if not r.path.endswith("/count_tokens") and marker in r.body.decode(errors="replace")
    ]


@contextmanager
def _file_locked(database_url: str, *, release_after_s: float | None = None) -> Iterator[None]:
    """Another connection holds ``BEGIN IMMEDIATE`` on the file, as the sqlite3 CLI would."""
    path = database_url.split(":///", 1)[1]
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("ROLLBACK")

    timer = threading.Timer(release_after_s, release) if release_after_s else None
    if timer is not None:
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.join()
        release()
        holder.close()


def _budgeted(server: LiveServer) -> str:
    key = server.team_key("research")
    response = server.admin.post("/admin/budgets", json={"team": "research", "limit_usd": "100"})
    assert response.status_code == 201, response.text
    return key


def test_a_budgeted_request_gets_a_fast_503_while_the_sqlite_file_is_locked(
    sqlite_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(sqlite_url, fake_upstream, budget_db_timeout_s=1.0)
    with LiveServer(settings) as server:
        key = _budgeted(server)
        marker = uuid.uuid4().hex
        headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/v1/chat/completions", {"model": MODEL, "max_tokens": 10}),
            ("/v1/messages", {"model": CLAUDE, "max_tokens": 10}),
        ]
        answers = []
        with _file_locked(sqlite_url):
            for path, body in calls:
                started = time.monotonic()
                response = httpx.post(
                    server.url + path,
                    headers=headers,
                    json={**body, "messages": [{"role": "user", "content": marker}]},
                    timeout=60,
                )
                answers.append((response, time.monotonic() - started))
        openai_answer, anthropic_answer = (response for response, _ in answers)
        for response, elapsed in answers:
            assert response.status_code == 503, response.text
            assert elapsed < WITHIN_S, elapsed  # not the 30 s SQLite busy timeout
        assert openai_answer.json()["error"]["code"] == "budget_unavailable"
        assert anthropic_answer.json()["type"] == "error"
        assert anthropic_answer.json()["error"]["type"] == "overloaded_error"
        assert not _forwarded(fake_upstream, marker)
        # Once the lock is gone, each refusal is in the ledger, once.
        seen = [response.headers["x-ledger-request-id"] for response, _ in answers]
        for request_id in seen:
            entry = server.entry(request_id, timeout=30)
            assert (entry["status"], entry["http_status"]) == ("blocked", 503)
        entries = server.entries()
        figures = tally(
            "sqlite_locked_503",
            "sqlite",
            len(calls),
            [e["request_id"] for e in entries],
            seen,
            reservations_left(sqlite_url),
        )
        assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures


def test_a_request_whose_client_left_while_the_budget_waited_is_never_forwarded(
    sqlite_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(sqlite_url, fake_upstream, budget_db_timeout_s=5.0)
    with LiveServer(settings) as server:
        key = _budgeted(server)
        marker = uuid.uuid4().hex
        with _file_locked(sqlite_url, release_after_s=1.5), pytest.raises(httpx.ReadTimeout):
            httpx.post(
                server.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": marker}]},
                timeout=0.5,
            )
        entries = server.wait_for_entries(1, timeout=30)
        assert [(e["status"], e["http_status"]) for e in entries] == [("client_disconnected", 499)]
        assert not _forwarded(fake_upstream, marker)
