"""Budgets as a client and an admin see them: hard limits, scopes, status, checks.

Everything runs against a live gateway with the official SDKs as clients. The
scheduler is off (see ``gateway_settings``); the tests call the scheduled checks
themselves so that what they see does not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.checks import check_budgets, release_expired_reservations
from ledger.budgets.periods import period_bounds
from ledger.db.engine import create_engine
from ledger.db.tables import BudgetPeriod, BudgetReservation
from tests.fake_upstream import (
    FakeUpstream,
    count_anthropic_input_tokens,
    count_openai_prompt_tokens,
    encoding_for_model,
)
from tests.live import LiveServer

T = TypeVar("T")

MODEL = "gpt-4.1-mini"
CLAUDE = "claude-sonnet-4-5"
# Catalog prices in USD per token: gpt-4.1-mini $0.40 / $1.60 per million, claude-sonnet-4-5
# $3 / $15 per million.
INPUT, OUTPUT = Decimal("0.40") / 10**6, Decimal("1.60") / 10**6
CLAUDE_INPUT, CLAUDE_OUTPUT = Decimal("3.00") / 10**6, Decimal("15.00") / 10**6
MAX_TOKENS = 1000
DEFAULT_OUTPUT_CAP = 4096  # Settings.default_max_output_tokens
ZERO = "0.000000000"
TINY = "0.000000001"  # smaller than any request's worst case: every request is refused
QUESTION = "How much of the budget is left for us?"


# -- helpers --------------------------------------------------------------------------------


def usd(value: Decimal) -> str:
    """A Decimal USD amount as Ledger prints it: nine places."""
    return f"{value:.9f}"


def _messages(text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _reply_tokens(text: str) -> int:
    """What the fake provider bills as output for ``text``: its echo of the first 8 words."""
    reply = " ".join(["Echo:", *text.split()[:8]])
    return len(encoding_for_model(MODEL).encode_ordinary(reply))


def _prompt_tokens(text: str = QUESTION) -> int:
    return count_openai_prompt_tokens({"model": MODEL, "messages": _messages(text)})


def actual_cost(text: str = QUESTION) -> Decimal:
    """What one gpt-4.1-mini request for ``text`` costs once it is answered."""
    return _prompt_tokens(text) * INPUT + _reply_tokens(text) * OUTPUT


def worst_case(text: str = QUESTION, max_tokens: int = MAX_TOKENS) -> Decimal:
    """What Ledger reserves for it: the estimated prompt plus ``max_tokens`` of output."""
    return _prompt_tokens(text) * INPUT + max_tokens * OUTPUT


def _openai(gateway: LiveServer, key: str, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=max_retries)


def _ask(client: openai.OpenAI, text: str = QUESTION, **options: Any) -> Any:
    """One chat completion; returns the raw response (headers) or raises the SDK's error."""
    options.setdefault("model", MODEL)
    options.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.with_raw_response.create(messages=_messages(text), **options)


def _passes(client: openai.OpenAI, **options: Any) -> bool:
    """Whether a request is served (True) or refused by a budget (False)."""
    try:
        _ask(client, **options)
    except openai.RateLimitError as exc:
        assert exc.response.json()["error"]["code"] == "budget_exceeded"
        return False
    return True


def _create_budget(gateway: LiveServer, **body: Any) -> dict[str, Any]:
    response = gateway.admin.post("/admin/budgets", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _status(gateway: LiveServer, budget_id: int) -> dict[str, Any]:
    response = gateway.admin.get(f"/admin/budgets/{budget_id}/status")
    assert response.status_code == 200, response.text
    return response.json()


def _key_with_id(gateway: LiveServer, team: str, name: str) -> tuple[str, int]:
    response = gateway.admin.post("/admin/keys", json={"team": team, "name": name})
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def _ledger_total(gateway: LiveServer, **params: Any) -> Decimal:
    return sum((Decimal(e["cost_usd"]) for e in gateway.entries(**params)), Decimal(0))


def _percent(part: Decimal, whole: Decimal) -> str:
    hundredths = int(part * 10_000 // whole)
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def on_db(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` against the test's database from this (synchronous) test."""

    async def run() -> T:
        engine = create_engine(database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _current_month_end() -> datetime:
    end = period_bounds("monthly", "UTC", datetime.now(UTC))[1]
    assert end is not None
    return end


# -- a hard budget refuses what it cannot cover ------------------------------------------------


def test_hard_budget_admits_what_it_covers_then_refuses_in_each_protocols_shape(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key("research")
    client = _openai(gateway, key)
    cost, worst = actual_cost(), worst_case()
    # Room for exactly three requests: two settled ones and the third's worst case.
    limit = 2 * cost + worst
    budget = _create_budget(gateway, team="research", limit_usd=usd(limit), name="research cap")
    assert budget["scope"] == "team" and budget["mode"] == "hard"
    assert budget["limit_usd"] == usd(limit) and budget["period"] == "monthly"

    for served in range(3):
        raw = _ask(client)
        # The header tells the client what is left once this request's worst case is held.
        assert raw.headers["x-ledger-budget-id"] == str(budget["id"])
        assert raw.headers["x-ledger-budget-remaining-usd"] == usd(limit - served * cost - worst)
        assert raw.headers["x-ledger-budget-reset"] == _current_month_end().isoformat()
        entry = gateway.entry(raw.headers["x-ledger-request-id"])
        assert entry["status"] == "ok"
        assert Decimal(entry["cost_usd"]) == cost

    remaining = limit - 3 * cost  # less than a fourth request's worst case
    reset = _current_month_end().isoformat()
    forwarded = len(fake_upstream.requests)
    # A client that would retry a 429 does not retry this one: x-should-retry is false.
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(_openai(gateway, key, max_retries=2))
    response = refused.value.response
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["code"] == "budget_exceeded"
    assert "'research cap'" in error["message"]
    assert f"${usd(remaining)} left" in error["message"]
    assert f"may cost up to ${usd(worst)}" in error["message"]
    assert reset in error["message"]
    assert response.headers["x-ledger-budget-id"] == str(budget["id"])
    assert response.headers["x-ledger-budget-remaining-usd"] == usd(remaining)
    assert response.headers["x-ledger-budget-reset"] == reset
    assert response.headers["x-should-retry"] == "false"
    blocked_openai = response.headers["x-ledger-request-id"]

    # The same budget refuses a Claude request on /v1/messages, in Anthropic's shape.
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=2)
    with pytest.raises(anthropic.RateLimitError) as refused_claude:
        claude.messages.create(model=CLAUDE, max_tokens=MAX_TOKENS, messages=_messages())
    response = refused_claude.value.response
    assert response.status_code == 429
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "budget_exceeded"
    claude_worst = (
        count_anthropic_input_tokens({"messages": _messages()}) * CLAUDE_INPUT
        + MAX_TOKENS * CLAUDE_OUTPUT
    )
    assert "'research cap'" in body["error"]["message"]
    assert f"${usd(remaining)} left" in body["error"]["message"]
    assert f"may cost up to ${usd(claude_worst)}" in body["error"]["message"]
    assert reset in body["error"]["message"]
    assert response.headers["x-ledger-budget-remaining-usd"] == usd(remaining)
    assert response.headers["x-should-retry"] == "false"
    blocked_claude = response.headers["x-ledger-request-id"]

    # Neither refused request reached the provider (count_tokens for the estimate aside).
    assert [r.path for r in fake_upstream.requests[forwarded:]] == ["/v1/messages/count_tokens"]
    # Each refusal is one ledger entry at no cost: the SDKs did not retry.
    blocked = gateway.entries(status="blocked")
    assert sorted(e["request_id"] for e in blocked) == sorted([blocked_openai, blocked_claude])
    for entry in blocked:
        assert entry["http_status"] == 429
        assert entry["cost_usd"] == ZERO
        assert entry["error"] and "research cap" in entry["error"]
        assert entry["budget_id"] == budget["id"]

    # The status is the ledger's own total, to the nano, with nothing left reserved.
    status = _status(gateway, budget["id"])
    spent = _ledger_total(gateway)
    assert spent == 3 * cost
    assert status["spent_usd"] == usd(spent)
    assert status["reserved_usd"] == ZERO
    assert status["remaining_usd"] == usd(remaining)
    assert status["percent_used"] == _percent(spent, limit)
    assert status["blocked"] is False
    assert status["period_end"] == reset
    assert Decimal(status["projected_usd"]) >= spent  # straight-line to the period's end
    assert status["budget"]["limit_usd"] == usd(limit)


def test_a_changed_limit_applies_to_the_next_request_and_deleting_lifts_the_budget(
    gateway: LiveServer,
) -> None:
    client = _openai(gateway, gateway.team_key("research"))
    budget = _create_budget(gateway, team="research", limit_usd=usd(worst_case()))
    assert _passes(client)
    assert not _passes(client)  # the first request's spend leaves less than a worst case

    response = gateway.admin.patch(f"/admin/budgets/{budget['id']}", json={"limit_usd": "5.00"})
    assert response.status_code == 200, response.text
    assert response.json()["limit_usd"] == "5.000000000"
    assert _passes(client)
    # Far from the limit this process leases a slice of it, so part may show as reserved.
    status = _status(gateway, budget["id"])
    assert status["spent_usd"] == usd(_ledger_total(gateway))
    assert sum(Decimal(status[f"{k}_usd"]) for k in ("spent", "reserved", "remaining")) == 5

    response = gateway.admin.patch(f"/admin/budgets/{budget['id']}", json={"limit_usd": TINY})
    assert response.status_code == 200, response.text
    assert not _passes(client)

    response = gateway.admin.delete(f"/admin/budgets/{budget['id']}")
    assert response.status_code == 200, response.text
    assert _passes(client)
    assert gateway.admin.get(f"/admin/budgets/{budget['id']}/status").status_code == 404
    assert gateway.admin.get("/admin/budgets").json()["data"] == []


def test_a_soft_budget_never_blocks_but_still_counts(gateway: LiveServer) -> None:
    client = _openai(gateway, gateway.team_key("research"))
    budget = _create_budget(gateway, team="research", limit_usd=TINY, mode="soft")
    for _ in range(3):
        raw = _ask(client)
        assert "x-ledger-budget-remaining-usd" not in raw.headers  # no hard budget applies

    [check] = on_db(gateway.settings.database_url, check_budgets)
    assert check.blocked is False
    assert _passes(client)
    status = _status(gateway, budget["id"])
    spent = _ledger_total(gateway)
    assert status["spent_usd"] == usd(spent)
    assert status["blocked"] is False
    assert status["remaining_usd"] == ZERO
    assert Decimal(status["percent_used"]) > 100


def test_each_budget_scope_applies_only_to_the_requests_it_names(gateway: LiveServer) -> None:
    key_a, key_a_id = _key_with_id(gateway, gateway.create_team("research")["name"], "a")
    key_b, _ = _key_with_id(gateway, "research", "b")
    key_ops, _ = _key_with_id(gateway, gateway.create_team("ops")["name"], "ops")
    a, b, ops = (_openai(gateway, k) for k in (key_a, key_b, key_ops))

    def tagged(tags: str) -> dict[str, Any]:
        return {"extra_headers": {"x-ledger-tags": tags}}

    # (budget body, [(client, request options, refused?)])
    cases: list[tuple[dict[str, Any], list[tuple[openai.OpenAI, dict[str, Any], bool]]]] = [
        ({"team": "research"}, [(a, {}, True), (b, {}, True), (ops, {}, False)]),
        ({"key_id": key_a_id}, [(a, {}, True), (b, {}, False), (ops, {}, False)]),
        (
            {"team": "research", "user": "alice"},
            [
                (a, {"user": "alice"}, True),
                (a, {"user": "bob"}, False),
                (a, {}, False),
                (ops, {"user": "alice"}, False),
            ],
        ),
        (
            {"team": "research", "model": MODEL},
            [(a, {}, True), (a, {"model": "gpt-4o-mini"}, False), (ops, {}, False)],
        ),
        (
            {"tag": "batch"},
            [
                (a, tagged("a,batch"), True),
                (ops, tagged("batch"), True),
                (a, tagged("a,b"), False),
                (a, tagged("batches"), False),
                (a, {}, False),
            ],
        ),
        ({"scope": "org"}, [(a, {}, True), (ops, {}, True)]),
    ]
    for body, requests in cases:
        budget = _create_budget(gateway, **body, limit_usd=TINY)
        for client, options, refused in requests:
            try:
                raw = _ask(client, **options)
            except openai.RateLimitError as exc:
                assert refused, (budget["scope"], options)
                assert exc.response.headers["x-ledger-budget-id"] == str(budget["id"])
            else:
                assert not refused, (budget["scope"], options)
                assert "x-ledger-budget-id" not in raw.headers
        # Deleting the budget removes its effect on the very next request.
        response = gateway.admin.delete(f"/admin/budgets/{budget['id']}")
        assert response.status_code == 200, response.text
        for client, options, _ in requests:
            assert _passes(client, **options), (budget["scope"], options)


INVALID_BUDGETS: list[tuple[dict[str, Any], str | None]] = [
    ({"team": "research", "limit_usd": 5.0}, "limit_usd"),  # a float is not exact money
    ({"team": "research", "limit_usd": "five"}, "limit_usd"),
    ({"team": "research", "limit_usd": "-1"}, "limit_usd"),
    ({"team": "research", "limit_usd": "0.0000000001"}, "limit_usd"),  # finer than a nano
    ({"team": "research"}, "limit_usd"),
    ({"scope": "planet", "limit_usd": "5"}, "scope"),
    ({"team": "no-such-team", "limit_usd": "5"}, "team"),
    ({"team": "research", "limit_usd": "5", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"team": "research", "limit_usd": "5", "period": "yearly"}, "period"),
    ({"team": "research", "limit_usd": "5", "mode": "strict"}, "mode"),
    ({"team": "research", "limit_usd": "5", "thresholds": [50, 0]}, "thresholds"),
    ({"team": "research", "limit_usd": "5", "colour": "red"}, None),
    ({"scope": "user", "team": "research", "limit_usd": "5"}, "user"),
    ({"scope": "team", "limit_usd": "5"}, "team"),
    ({"key_id": 9999, "limit_usd": "5"}, "key_id"),
]


@pytest.mark.parametrize("alias", ["gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"])
def test_a_model_budget_holds_for_a_dated_or_prefixed_name_of_its_model(
    gateway: LiveServer, database_url: str, alias: str
) -> None:
    covered, sent = 6, 20
    text = "How far does a model budget reach?"
    max_tokens = _reply_tokens(text)  # what the fake writes: the worst case is the cost
    cost = actual_cost(text)
    assert cost == worst_case(text, max_tokens)
    key = gateway.team_key("research")
    budget = _create_budget(
        gateway, team="research", model=MODEL, limit_usd=usd(covered * cost), name="mini cap"
    )

    async def fire() -> list[int]:
        client = openai.AsyncOpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)

        async def one() -> int:
            try:
                await client.chat.completions.create(
                    model=alias, messages=_messages(text), max_tokens=max_tokens
                )
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        try:
            return await asyncio.gather(*(one() for _ in range(sent)))
        finally:
            await client.close()

    statuses = asyncio.run(fire())
    assert statuses.count(200) == covered and statuses.count(429) == sent - covered, statuses
    entries = gateway.entries()
    assert len(entries) == sent
    # The names are recorded as sent; only the budget knows they are gpt-4.1-mini.
    assert {(e["requested_model"], e["served_model"]) for e in entries} == {(alias, alias)}
    assert all(e["budget_id"] == budget["id"] for e in entries if e["status"] == "blocked")
    # The scheduled check recomputes the spend from the ledger and finds the same total.
    on_db(database_url, lambda engine: check_budgets(engine))
    status = _status(gateway, budget["id"])
    assert status["spent_usd"] == usd(covered * cost) == usd(_ledger_total(gateway))
    assert status["reserved_usd"] == ZERO


def test_an_invalid_budget_is_refused_with_a_400_that_says_why(gateway: LiveServer) -> None:
    gateway.create_team("research")
    for body, param in INVALID_BUDGETS:
        response = gateway.admin.post("/admin/budgets", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", body
        assert error["param"] == param, body
        assert error["message"], body
    assert (
        "decimal string"
        in gateway.admin.post("/admin/budgets", json={"team": "research", "limit_usd": 5.0}).json()[
            "error"
        ]["message"]
    )
    assert (
        "colour"
        in gateway.admin.post(
            "/admin/budgets", json={"team": "research", "limit_usd": "5", "colour": "red"}
        ).json()["error"]["message"]
    )
    assert gateway.admin.get("/admin/budgets").json()["data"] == []


def test_a_budget_change_that_is_not_allowed_is_refused_and_changes_nothing(
    gateway: LiveServer,
) -> None:
    gateway.create_team("research")
    budget = _create_budget(gateway, team="research", limit_usd="5")
    for body in ({"scope": "org"}, {"limit_usd": 7.5}, {"timezone": "Nowhere/Else"}):
        response = gateway.admin.patch(f"/admin/budgets/{budget['id']}", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert gateway.admin.get(f"/admin/budgets/{budget['id']}").json() == budget
    assert gateway.admin.patch("/admin/budgets/9999", json={"limit_usd": "1"}).status_code == 404


def test_under_a_hard_budget_a_request_without_max_tokens_is_capped_upstream(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    capped = _openai(gateway, gateway.team_key("research"))
    free = _openai(gateway, gateway.team_key("ops"))
    _create_budget(gateway, team="research", limit_usd="100")

    def send(client: openai.OpenAI, **options: Any) -> dict[str, Any]:
        """What reached the provider for one request (the fake is shared: find it by marker)."""
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        client.chat.completions.create(model=MODEL, messages=_messages(marker), **options)
        [request] = [r for r in fake_upstream.requests if marker in str(r.json)]
        return request.json

    assert send(capped)["max_completion_tokens"] == DEFAULT_OUTPUT_CAP
    # The client's own cap is left as it was sent.
    sent = send(capped, max_tokens=50)
    assert sent["max_tokens"] == 50
    assert "max_completion_tokens" not in sent
    # With no hard budget in the way, nothing is added.
    sent = send(free)
    assert "max_completion_tokens" not in sent
    assert "max_tokens" not in sent


def test_the_capped_body_is_the_clients_own_bytes_with_the_cap_in_front(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    sent_by_client: list[bytes] = []
    client = openai.OpenAI(
        base_url=gateway.openai_base_url,
        api_key=gateway.team_key("research"),
        max_retries=0,
        http_client=httpx.Client(
            event_hooks={"request": [lambda request: sent_by_client.append(request.read())]}
        ),
    )
    _create_budget(gateway, team="research", limit_usd="100")
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    # Text the SDK writes with escapes, and a field Ledger does not know: both pass as sent.
    client.chat.completions.create(
        model=MODEL, messages=_messages(f"{marker} café 🚀"), extra_body={"x_custom": [1, 2.50]}
    )
    [request] = [r for r in fake_upstream.requests if marker in str(r.json)]
    [original] = sent_by_client
    cap = f'{{"max_completion_tokens":{DEFAULT_OUTPUT_CAP},'.encode()
    assert request.body == cap + original[1:]
    assert request.json["x_custom"] == [1, 2.50]


# -- reservations never outlive their request --------------------------------------------------


def _reservations(database_url: str) -> int:
    async def count(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            return int(
                await connection.scalar(select(func.count()).select_from(BudgetReservation)) or 0
            )

    return on_db(database_url, count)


def test_a_client_that_leaves_mid_stream_is_charged_and_leaves_no_reservation(
    gateway: LiveServer, database_url: str
) -> None:
    key = gateway.team_key("research")
    budget = _create_budget(gateway, team="research", limit_usd="10")
    body = {
        "model": MODEL,
        "stream": True,
        "messages": _messages("chunk_delay_ms=50 reply_words=60"),
    }
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-ledger-request-id"]
        chunks = response.iter_bytes()
        received = b""
        while received.count(b"data: ") < 4:
            received += next(chunks)
        # Leaving the block closes the connection long before the 60 words are sent.

    entry = gateway.entry(request_id)
    assert entry["status"] == "client_disconnected"
    assert entry["usage_source"] == "estimated"
    assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
    assert 0 < entry["usage"]["output_tokens"] < 60
    assert Decimal(entry["cost_usd"]) > 0

    deadline = time.monotonic() + 5
    while True:
        status = _status(gateway, budget["id"])
        reservations = _reservations(database_url)
        if (status["reserved_usd"] == ZERO and reservations == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["reserved_usd"] == ZERO
    assert reservations == 0
    assert status["spent_usd"] == entry["cost_usd"]


def test_a_crashed_process_reservation_expires_and_the_budget_is_usable_again(
    gateway: LiveServer, database_url: str
) -> None:
    client = _openai(gateway, gateway.team_key("research"))
    budget = _create_budget(gateway, team="research", limit_usd="0.01")
    assert _passes(client)
    start, end = period_bounds("monthly", "UTC", datetime.now(UTC))
    held = 9_000_000  # $0.009 of the $0.01, held by a process that died

    async def crash(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            now = datetime.now(UTC)
            await connection.execute(
                insert(BudgetReservation).values(
                    id="dead-process-reservation",
                    budget_id=budget["id"],
                    period_start=start,
                    kind="request",
                    request_id="req_dead",
                    owner="dead-process",
                    amount_nanos=held,
                    created_at=now - timedelta(minutes=5),
                    expires_at=now - timedelta(minutes=4),
                )
            )
            await connection.execute(
                update(BudgetPeriod)
                .where(BudgetPeriod.budget_id == budget["id"], BudgetPeriod.period_start == start)
                .values(reserved_nanos=BudgetPeriod.reserved_nanos + held)
            )

    on_db(database_url, crash)
    assert _status(gateway, budget["id"])["reserved_usd"] == "0.009000000"
    assert not _passes(client)  # the dead process's hold is in the way

    released = on_db(database_url, release_expired_reservations)
    assert released == 1
    assert _passes(client)
    status = _status(gateway, budget["id"])
    assert status["reserved_usd"] == ZERO
    assert status["blocked"] is False
    assert status["spent_usd"] == usd(_ledger_total(gateway, status="ok"))
    assert status["period_end"] == end.isoformat()
    assert _reservations(database_url) == 0
    assert on_db(database_url, release_expired_reservations) == 0  # nothing is released twice


# -- the scheduled check keeps the counters honest ---------------------------------------------


def test_the_check_corrects_drift_blocks_what_is_spent_and_a_new_period_starts_fresh(
    gateway: LiveServer, database_url: str
) -> None:
    client = _openai(gateway, gateway.team_key("research"))
    # Spend made before the budget existed still counts: the ledger is the source of truth.
    for _ in range(3):
        _ask(client, text="reply_words=200 spend before the budget")
    before = _ledger_total(gateway)
    budget = _create_budget(gateway, team="research", limit_usd=usd(before))
    start, end = period_bounds("monthly", "UTC", datetime.now(UTC))
    assert end is not None
    # The counter does not know that spend yet, so a small request is let through.
    assert _passes(client, max_tokens=10)
    spent = _ledger_total(gateway)
    assert _status(gateway, budget["id"])["spent_usd"] == usd(spent - before)

    [check] = on_db(database_url, check_budgets)
    assert check.drift == int(before * 10**9)
    assert check.spent == int(spent * 10**9)
    assert check.blocked is True
    status = _status(gateway, budget["id"])
    assert status["spent_usd"] == usd(spent)
    assert status["blocked"] is True
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, max_tokens=10)
    assert "is blocked" in refused.value.response.json()["error"]["message"]

    # Someone tampers with the counter: the next check puts it back and says by how much.
    async def tamper(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await connection.execute(
                update(BudgetPeriod)
                .where(BudgetPeriod.budget_id == budget["id"])
                .values(spent_nanos=123, blocked=False)
            )

    on_db(database_url, tamper)
    [check] = on_db(database_url, check_budgets)
    assert check.drift == int(spent * 10**9) - 123
    assert check.blocked is True
    assert _status(gateway, budget["id"])["spent_usd"] == usd(spent)
    [check] = on_db(database_url, check_budgets)
    assert check.drift == 0  # nothing to correct the second time

    # Next month: a new period from zero, unblocked; this month's row keeps its history.
    next_month = end + timedelta(days=3)
    [check] = on_db(database_url, lambda engine: check_budgets(engine, now=next_month))
    assert (check.period_start, check.spent, check.blocked) == (end, 0, False)

    async def periods(engine: AsyncEngine) -> list[tuple[datetime, int, bool]]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(BudgetPeriod.period_start, BudgetPeriod.spent_nanos, BudgetPeriod.blocked)
                .where(BudgetPeriod.budget_id == budget["id"])
                .order_by(BudgetPeriod.period_start)
            )
            return [(row[0], row[1], row[2]) for row in rows]

    assert on_db(database_url, periods) == [(start, int(spent * 10**9), True), (end, 0, False)]

    # Raising the limit above the spend unblocks the current period straight away.
    response = gateway.admin.patch(
        f"/admin/budgets/{budget['id']}", json={"limit_usd": usd(spent + 1)}
    )
    assert response.status_code == 200, response.text
    assert _passes(client, max_tokens=10)
    assert _status(gateway, budget["id"])["blocked"] is False


def test_a_blocked_entry_names_the_budget_that_blocked_it(gateway: LiveServer) -> None:
    client = _openai(gateway, gateway.team_key("research"))
    budget = _create_budget(gateway, team="research", limit_usd=TINY)
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client)
    entry = gateway.entry(refused.value.response.headers["x-ledger-request-id"])
    assert entry["status"] == "blocked"
    assert entry["budget_id"] == budget["id"]


def test_a_request_that_asks_for_caching_is_reserved_at_the_cache_write_rate(
    gateway: LiveServer,
) -> None:
    """Claude's one-hour cache writes cost twice its input price; a prompt that merely
    talks about caching is not charged for them."""
    claude = anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.team_key("cachers"), max_retries=0
    )
    _create_budget(gateway, team="cachers", limit_usd=TINY, name="cache cap")
    cache_write_1h = Decimal("6.00") / 10**6  # claude-sonnet-4-5, per token

    def reserved(**request: Any) -> Decimal:
        """The worst case the refusal names for ``request``."""
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(model=CLAUDE, max_tokens=MAX_TOKENS, **request)
        message = refused.value.response.json()["error"]["message"]
        return Decimal(message.split("may cost up to $")[1][: len(ZERO)])

    def worst(input_rate: Decimal, **request: Any) -> Decimal:
        return count_anthropic_input_tokens(request) * input_rate + MAX_TOKENS * CLAUDE_OUTPUT

    ephemeral = {"type": "ephemeral"}
    cached_system = {
        "system": [{"type": "text", "text": "Be terse.", "cache_control": ephemeral}],
        "messages": _messages(),
    }
    cached_block = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": QUESTION, "cache_control": ephemeral}],
            }
        ]
    }
    mentions_it = {
        "system": [{"type": "text", "text": "Explain cache_control in one line."}],
        "messages": _messages('What does "cache_control": {"type": "ephemeral"} do?'),
    }
    assert reserved(**cached_system) == worst(cache_write_1h, **cached_system)
    assert reserved(**cached_block) == worst(cache_write_1h, **cached_block)
    assert reserved(**mentions_it) == worst(CLAUDE_INPUT, **mentions_it)
