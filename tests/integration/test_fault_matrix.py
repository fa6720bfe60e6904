"""The fault matrix under load: whatever breaks, every request sent is one ledger entry.

Each scenario fires a burst of concurrent requests through the official async SDKs —
OpenAI and Anthropic, streaming and not — at one Ledger per database whose provider (or
client) misbehaves in one way. Then, for that burst alone (its own team, key, budgets and
``x-ledger-tags`` run tag):

- every client got a clear answer in its own protocol: the SDK's status error with the
  protocol's error body, an error event that ends the stream, or a clean stream end;
- the ledger holds exactly one entry per request sent — none lost, none duplicated, and
  every request id a client saw is among them — with the right status and cost;
- no budget reservation is left behind, and each budget's spend equals the ledger's.

Single-request error cases live in ``test_gateway_errors.py``; this file is about load.
The figures of every scenario are printed as a table at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from ledger.config import ModelConfig, ProviderConfig, Settings
from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import (
    ALL,
    ANTHROPIC,
    MODELS,
    OPENAI,
    PLAIN,
    STREAMS,
    ZERO_USD,
    Clients,
    Kind,
    Outcome,
    backend_of,
    kind_of,
    reservations_left,
    tally,
)
from tests.live import ADMIN_KEY, LiveServer

# Catalog prices, USD per million tokens: gpt-4.1-mini $0.40 / $1.60, claude-sonnet-4-5 $3 / $15.
INPUT_PRICE = {OPENAI: Decimal("0.40"), ANTHROPIC: Decimal("3.00")}
OUTPUT_PRICE = {OPENAI: Decimal("1.60"), ANTHROPIC: Decimal("15.00")}

PER_KIND = 6  # requests of each kind in a burst: 24 (or 12 for stream-only rows)
READ_TIMEOUT_S = 1.0  # the provider read timeout of the Ledger under test (answered with 504)
CONNECT_TIMEOUT_S = 0.5
ABORT_WITHIN_S = 10.0  # an aborting client leaves once the provider has its request
CLOSE_AFTER_EVENTS = 5  # "disconnect mid-stream"
SLOW_READ_S = 0.05  # "very slow reader": a pause after every event
# The team budget is far from its limit (requests run on leases); the key budget is near
# enough that every request reserves exactly in the database. Neither refuses anything.
TEAM_LIMIT_USD = "1000.00"
KEY_LIMIT_USD = "0.25"


@dataclass(frozen=True)
class Expect:
    """What one request of a scenario should end as, for the client and in the ledger."""

    answer: str  # ok | status | stream_error | decode_error | aborted | closed
    http: int | None  # the status the client saw, for answer == "status"
    status: str  # the ledger entry's status
    entry_http: int  # the entry's http_status
    cost: str  # none ($0, no usage) | estimated (> 0) | provider (> 0)


@dataclass(frozen=True)
class Scenario:
    name: str
    text: str  # the prompt: fake-provider directives
    kinds: tuple[Kind, ...]
    expect: dict[bool, Expect]  # by stream
    model_prefix: str = ""  # "refused-" or "blackhole-": a provider that cannot be reached
    client: str = "read"  # read | abort | close_early | slow

    def __str__(self) -> str:
        return self.name


def _same(expect: Expect) -> dict[bool, Expect]:
    return {False: expect, True: expect}


def _relayed(status: int) -> dict[bool, Expect]:
    return _same(Expect("status", status, "upstream_error", status, "none"))


SCENARIOS = [
    # -- the provider --------------------------------------------------------------------
    Scenario("provider_http_500", "fault=http_500", ALL, _relayed(500)),
    Scenario("provider_http_502", "fault=http_502", ALL, _relayed(502)),
    Scenario("provider_http_503", "fault=http_503", ALL, _relayed(503)),
    Scenario("provider_http_429_retry_after", "fault=http_429", ALL, _relayed(429)),
    Scenario(
        "connection_refused",
        "hello there",
        ALL,
        _same(Expect("status", 502, "upstream_error", 502, "none")),
        model_prefix="refused-",
    ),
    Scenario(
        "connect_timeout",
        "hello there",
        ALL,
        _same(Expect("status", 504, "timeout", 504, "none")),
        model_prefix="blackhole-",
    ),
    Scenario(
        "read_timeout",
        "fault=stall stall_s=3",
        ALL,
        _same(Expect("status", 504, "timeout", 504, "estimated")),
    ),
    Scenario(
        "reset_mid_body",
        "fault=reset reply_words=40",
        ALL,
        {
            False: Expect("status", 502, "upstream_error", 502, "estimated"),
            True: Expect("stream_error", None, "upstream_error", 200, "estimated"),
        },
    ),
    Scenario(
        "stream_cut_half_way",
        "fault=cut_stream reply_words=40",
        STREAMS,
        {True: Expect("stream_error", None, "upstream_error", 200, "estimated")},
    ),
    Scenario(
        "stream_stalls",
        "fault=stall_stream stall_s=3 reply_words=20",
        STREAMS,
        {True: Expect("stream_error", None, "timeout", 200, "estimated")},
    ),
    Scenario(
        "malformed_json",
        "fault=malformed_json",
        PLAIN,
        {False: Expect("status", 502, "upstream_error", 502, "estimated")},
    ),
    # A malformed event is relayed as the provider sent it (Ledger never rewrites a
    # stream): the SDK raises its own decode error there, as it would against the
    # provider, and closes; the entry is the client leaving, priced from what was seen.
    Scenario(
        "malformed_sse",
        "fault=malformed_sse reply_words=20 chunk_delay_ms=50",
        STREAMS,
        {True: Expect("decode_error", None, "client_disconnected", 200, "estimated")},
    ),
    Scenario(
        "usage_missing",
        "fault=no_usage reply_words=12",
        ALL,
        _same(Expect("ok", 200, "ok", 200, "estimated")),
    ),
    # Usage that is not a plausible count is not believed: priced from the estimate.
    *(
        Scenario(
            f"provider_sends_garbage_usage_{garbage}",
            f"usage={garbage} reply_words=12",
            ALL,
            _same(Expect("ok", 200, "ok", 200, "estimated")),
        )
        for garbage in ("negative", "string", "float", "huge", "absurd")
    ),
    # A provider refusing Ledger's own key is a 502, never the client's 401; the key it
    # echoes is in no answer and no entry (checked for every scenario below).
    Scenario(
        "provider_echoes_its_key_in_a_401",
        "fault=echo_key",
        ALL,
        _same(Expect("status", 502, "upstream_error", 502, "none")),
    ),
    Scenario(
        "provider_refuses_the_gateway_403",
        "fault=http_403",
        ALL,
        _same(Expect("status", 502, "upstream_error", 502, "none")),
    ),
    # -- the client ----------------------------------------------------------------------
    # The client gives up while the provider is still thinking. A stream is cancelled when
    # its first byte would go out; a plain response is complete (and billed) by the time
    # Ledger could notice, so it is recorded with the provider's usage.
    Scenario(
        "client_gone_before_first_byte",
        "fault=stall stall_s=0.6 reply_words=30 chunk_delay_ms=20",
        ALL,
        {
            # Answered and paid for, but nobody was there to receive it.
            False: Expect("aborted", None, "client_disconnected", 200, "provider"),
            True: Expect("aborted", None, "client_disconnected", 200, "estimated"),
        },
        client="abort",
    ),
    Scenario(
        "client_gone_mid_stream",
        "reply_words=60 chunk_delay_ms=20",
        STREAMS,
        {True: Expect("closed", None, "client_disconnected", 200, "estimated")},
        client="close_early",
    ),
    Scenario(
        "very_slow_reader",
        "reply_words=30",
        STREAMS,
        {True: Expect("ok", 200, "ok", 200, "provider")},
        client="slow",
    ),
]


# -- the Ledger under test ----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a connect hangs until it times out.

    A listener with backlog 0 that never accepts holds one connection in its queue; once
    that is taken, Linux drops further SYNs and the client's connect times out.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in (*fillers, listener):
        sock.close()


@pytest.fixture(scope="module")
def matrix(
    module_database_url: str, fake_upstream: FakeUpstream, blackhole: int
) -> Iterator[LiveServer]:
    """One Ledger per database for every scenario; its providers include unreachable ones."""
    refused = f"http://127.0.0.1:{_closed_port()}"
    hole = f"http://127.0.0.1:{blackhole}"
    bases = {
        "": (fake_upstream.openai_base_url, fake_upstream.anthropic_base_url),
        "refused-": (refused + "/v1", refused),
        "blackhole-": (hole + "/v1", hole),
    }
    providers: list[ProviderConfig] = []
    models: list[ModelConfig] = []
    for prefix, (openai_url, anthropic_url) in bases.items():
        for protocol, url in ((OPENAI, openai_url), (ANTHROPIC, anthropic_url)):
            name = prefix + protocol
            providers.append(
                ProviderConfig(
                    name=name, kind=protocol, base_url=url, api_key=fake_upstream.api_key,
                    timeout_s=READ_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
                    # One upstream call per request keeps the timing of the stall rows exact.
                    use_count_tokens=False,
                )
            )  # fmt: skip
            models.append(ModelConfig(prefix + MODELS[protocol], name, MODELS[protocol]))
    settings = Settings(
        database_url=module_database_url,
        admin_key=ADMIN_KEY,
        providers=tuple(providers),
        models=tuple(models),
        scheduler=False,
    )
    with LiveServer(settings) as server:
        yield server


# -- one burst ----------------------------------------------------------------------------


async def _given_up(call: Awaitable[Outcome], kind: Kind, arrived: Callable[[], bool]) -> Outcome:
    """Leave once the provider has the request (and is still thinking): before any byte.

    Leaving after a fixed time instead lost the row under load: a client slower than the
    time allowed gave up before its request was even sent, and nothing reached Ledger.
    """
    task = asyncio.ensure_future(call)
    deadline = time.monotonic() + ABORT_WITHIN_S
    while not task.done() and not arrived() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return Outcome(kind, "aborted")


async def _burst(
    server: LiveServer, key: str, tag: str, scenario: Scenario, upstream: FakeUpstream
) -> list[Outcome]:
    clients = Clients(server.url, key, tag)
    calls = []
    for index in range(PER_KIND):
        for number, kind in enumerate(scenario.kinds):
            # A number in the prompt makes each request distinct, as real traffic is.
            text = f"{scenario.text} n{index}k{number} {tag}"
            call = clients.send(
                kind,
                text,
                model=scenario.model_prefix + MODELS[kind.protocol],
                mode=scenario.client,
                close_after=CLOSE_AFTER_EVENTS,
                pause_s=SLOW_READ_S,
            )
            if scenario.client == "abort":
                call = _given_up(call, kind, _arrival_of(upstream, text))
            calls.append(call)
    try:
        return list(await asyncio.gather(*calls))
    finally:
        await clients.close()


def _arrival_of(upstream: FakeUpstream, text: str) -> Callable[[], bool]:
    # Only what arrives from now on: the session's fake has every earlier test's bodies,
    # and each of 24 waiting clients polls every 10 ms.
    marker, already = text.encode(), len(upstream.requests)
    return lambda: any(marker in request.body for request in upstream.requests[already:])


# -- checks -------------------------------------------------------------------------------


def _check_answer(outcome: Outcome, expect: Expect) -> None:
    assert outcome.answer == expect.answer, outcome
    protocol = outcome.kind.protocol
    if expect.answer == "status":
        assert outcome.http == expect.http, outcome
        assert outcome.request_id, outcome
        body = outcome.body
        # The SDKs hand OpenAI's error object, or Anthropic's whole envelope, as ``body``.
        error = body if protocol == OPENAI else body["error"]
        if protocol == ANTHROPIC:
            assert body["type"] == "error", body
        assert isinstance(error["message"], str) and error["message"], body
        assert isinstance(error["type"], str) and error["type"], body
        if expect.http == 429:
            sdk = openai if protocol == OPENAI else anthropic
            assert isinstance(outcome.error, sdk.RateLimitError), outcome
            assert outcome.headers.get("retry-after") == "7", outcome.headers
    elif expect.answer == "stream_error":
        assert outcome.http == 200 and outcome.request_id, outcome
        error = outcome.body if protocol == OPENAI else outcome.body["error"]
        assert "message" in error and error["type"] == "api_error", outcome.body
        assert not outcome.finished
    elif expect.answer in ("ok", "closed", "decode_error"):
        assert outcome.http == 200 and outcome.request_id, outcome
        assert outcome.events > 0 or not outcome.kind.stream, outcome


def _catalog_cost(protocol: str, entry: dict[str, Any]) -> Decimal:
    usage = entry["usage"]
    return (
        usage["input_tokens"] * INPUT_PRICE[protocol]
        + usage["output_tokens"] * OUTPUT_PRICE[protocol]
    ) / Decimal(1_000_000)


def _check_entry(entry: dict[str, Any], expect: Expect, tag: str) -> None:
    protocol = kind_of(entry).protocol
    assert tag in entry["tags"], entry
    assert entry["status"] == expect.status, entry
    assert entry["http_status"] == expect.entry_http, entry
    if expect.cost == "none":
        assert entry["cost_usd"] == ZERO_USD, entry
        assert entry["usage_source"] == "none", entry
        return
    assert entry["usage_source"] == expect.cost, entry
    assert entry["usage"]["input_tokens"] > 0, entry
    # Never $0 once the prompt may have been billed; always the catalog price, exactly.
    assert Decimal(entry["cost_usd"]) == _catalog_cost(protocol, entry) > 0, entry


def _wait_for_entries(server: LiveServer, team: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        entries = server.entries(team=team)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def _budget_status(server: LiveServer, budget_id: int) -> dict[str, Any]:
    response = server.admin.get(f"/admin/budgets/{budget_id}/status")
    assert response.status_code == 200, response.text
    return response.json()


def _wait_until_released(
    server: LiveServer, database_url: str, budget_ids: list[int]
) -> tuple[int, list[dict[str, Any]]]:
    """Reservation rows left and budget states, once leases had time to go back (~1 s)."""
    deadline = time.monotonic() + 6
    while True:
        left = reservations_left(database_url, budget_ids)
        statuses = [_budget_status(server, budget_id) for budget_id in budget_ids]
        reserved = [s["reserved_usd"] for s in statuses]
        if (left == 0 and set(reserved) == {ZERO_USD}) or time.monotonic() > deadline:
            return left, statuses
        time.sleep(0.1)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_every_request_of_a_faulty_burst_is_one_ledger_entry(
    matrix: LiveServer, module_database_url: str, scenario: Scenario, fake_upstream: FakeUpstream
) -> None:
    run = uuid.uuid4().hex[:10]
    team, tag = f"fm-{run}", f"run-{run}"
    matrix.create_team(team)
    created = matrix.admin.post("/admin/keys", json={"team": team, "name": "burst"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    budget_ids = []
    for body in (
        {"team": team, "limit_usd": TEAM_LIMIT_USD, "period": "monthly", "mode": "hard"},
        {"key_id": key_id, "limit_usd": KEY_LIMIT_USD, "period": "monthly", "mode": "hard"},
    ):
        response = matrix.admin.post("/admin/budgets", json=body)
        assert response.status_code == 201, response.text
        budget_ids.append(response.json()["id"])

    outcomes = asyncio.run(_burst(matrix, key, tag, scenario, fake_upstream))
    sent = len(outcomes)

    # Every client got a clear answer in its own protocol.
    for outcome in outcomes:
        _check_answer(outcome, scenario.expect[outcome.kind.stream])

    # One entry per request: none lost, none duplicated, each with its status and cost.
    entries = _wait_for_entries(matrix, team, sent)
    time.sleep(0.2)  # a late duplicate would show up here
    entries = matrix.entries(team=team)
    left, statuses = _wait_until_released(matrix, module_database_url, budget_ids)
    ids = [entry["request_id"] for entry in entries]
    seen = [outcome.request_id for outcome in outcomes]
    figures = tally(scenario.name, backend_of(module_database_url), sent, ids, seen, left)
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    assert figures.recorded == sent
    for entry in entries:
        _check_entry(entry, scenario.expect[entry["stream"]], tag)
    provider_key = fake_upstream.api_key
    assert provider_key not in repr([(o.body, o.headers, o.error) for o in outcomes])
    assert provider_key not in repr(entries)
    sent_kinds = Counter(str(outcome.kind) for outcome in outcomes)
    recorded_kinds = Counter(str(kind_of(entry)) for entry in entries)
    assert recorded_kinds == sent_kinds

    # Settlement rides with each entry: the budgets hold exactly the ledger's spend.
    spent = sum(Decimal(entry["cost_usd"]) for entry in entries)
    for status in statuses:
        assert status["reserved_usd"] == ZERO_USD, status
        assert Decimal(status["spent_usd"]) == spent, (status, spent)


# -- statuses that are not right yet ------------------------------------------------------


def test_plain_request_whose_client_left_before_the_answer_is_recorded_as_disconnected(
    matrix: LiveServer, fake_upstream: FakeUpstream
) -> None:
    team = f"gone-{uuid.uuid4().hex[:8]}"
    key = matrix.team_key(team)

    async def leave() -> Outcome:
        clients = Clients(matrix.url, key)
        try:
            text = f"fault=stall stall_s=0.6 {team}"
            call = clients.send(Kind(OPENAI, False), text)
            return await _given_up(call, Kind(OPENAI, False), _arrival_of(fake_upstream, text))
        finally:
            await clients.close()

    assert asyncio.run(leave()).answer == "aborted"
    entries = _wait_for_entries(matrix, team, 1)
    assert len(entries) == 1
    assert entries[0]["usage_source"] == "provider"
    assert entries[0]["status"] == "client_disconnected", entries[0]


def _refused_by_an_unreadable_budget(
    gateway: LiveServer, database_url: str, limit_usd: str
) -> tuple[Outcome, dict[str, Any]]:
    """One request under a hard budget whose state table is gone (renamed away)."""
    team = f"unreadable-{uuid.uuid4().hex[:6]}"
    assert gateway.admin.post("/admin/teams", json={"name": team}).status_code == 201
    key = gateway.admin.post("/admin/keys", json={"team": team}).json()
    budget = gateway.admin.post(
        "/admin/budgets", json={"key_id": key["id"], "limit_usd": limit_usd, "mode": "hard"}
    )
    assert budget.status_code == 201
    asyncio.run(_rename(database_url, "budget_periods", "budget_periods_away"))
    try:
        outcome = asyncio.run(_one_request(gateway.url, key["key"]))
    finally:
        asyncio.run(_rename(database_url, "budget_periods_away", "budget_periods"))
    assert outcome.request_id is not None, outcome
    return outcome, gateway.entry(outcome.request_id)


@pytest.mark.parametrize("limit_usd", ["0.25", "1000.00"], ids=["near_limit", "far_from_limit"])
def test_a_hard_budget_that_cannot_be_read_fails_closed(
    gateway: LiveServer, database_url: str, limit_usd: str
) -> None:
    # Far from its limit the first request takes a lease; the database failing right
    # then must refuse the request too (it used to let it through: fail open).
    outcome, entry = _refused_by_an_unreadable_budget(gateway, database_url, limit_usd)
    assert outcome.answer == "status" and outcome.http == 503, outcome
    assert outcome.body["code"] == "budget_unavailable", outcome.body
    assert entry["cost_usd"] == ZERO_USD and entry["usage_source"] == "none", entry


def test_request_refused_because_its_budget_cannot_be_checked_is_recorded_as_blocked(
    gateway: LiveServer, database_url: str
) -> None:
    _, entry = _refused_by_an_unreadable_budget(gateway, database_url, "0.25")
    assert entry["status"] == "blocked", entry


async def _rename(database_url: str, old: str, new: str) -> None:
    from ledger.db.engine import create_engine

    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")
    finally:
        await engine.dispose()


async def _one_request(url: str, key: str) -> Outcome:
    clients = Clients(url, key)
    try:
        return await clients.send(Kind(OPENAI, False), "hello")
    finally:
        await clients.close()
