"""Anthropic's count_tokens is asked only when a hard budget needs an exact count (issue 18, §4).

On the common path (no hard budget, or one far from its limit) a message costs one
provider call: the prompt is estimated locally, erring high. Near a hard budget's limit
(the local worst case more than a tenth of what is left) the provider counts it first, so
the reservation is exact and a request that fits is not refused.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import anthropic

from ledger.tokens import approximate_anthropic_prompt
from tests.fake_upstream import FakeUpstream, count_anthropic_input_tokens
from tests.live import LiveServer

CLAUDE = "claude-sonnet-4-5"
C_INPUT, C_OUTPUT = Decimal("3.00") / 10**6, Decimal("15.00") / 10**6  # per token
MAX_TOKENS = 200


def _usd(value: Decimal) -> str:
    return f"{value:.9f}"


def _body() -> tuple[str, dict[str, Any]]:
    marker = "marker-" + uuid.uuid4().hex[:8]  # the fake is shared by the whole session
    return marker, {"messages": [{"role": "user", "content": f"How are you? {marker}"}]}


def _send(gateway: LiveServer, key: str, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=MAX_TOKENS, messages=body["messages"]
    )
    return gateway.entry(raw.headers["x-ledger-request-id"]), raw.headers


def _paths(fake: FakeUpstream, marker: str) -> list[str]:
    return [r.path for r in fake.requests if marker in str(r.json)]


def _budget(gateway: LiveServer, limit: Decimal, mode: str = "hard") -> None:
    response = gateway.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": _usd(limit), "mode": mode}
    )
    assert response.status_code == 201, response.text


def test_far_from_a_hard_budgets_limit_a_message_makes_no_count_tokens_call(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    _budget(gateway, Decimal(500))
    _send(gateway, key, _body()[1])  # the first request reads the budget's state
    marker, body = _body()
    entry, _headers = _send(gateway, key, body)
    assert _paths(fake_upstream, marker) == ["/v1/messages"]
    assert entry["estimated_input_tokens"] == approximate_anthropic_prompt(body)
    assert entry["status"] == "ok"


def test_a_soft_budget_alone_makes_no_count_tokens_call(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    _budget(gateway, Decimal("0.000000001"), mode="soft")
    marker, body = _body()
    _send(gateway, key, body)
    assert _paths(fake_upstream, marker) == ["/v1/messages"]


def test_near_a_hard_budgets_limit_the_provider_counts_the_prompt_and_the_hold_is_exact(
    gateway: LiveServer, fake_upstream: FakeUpstream
) -> None:
    key = gateway.team_key()
    marker, body = _body()
    local = approximate_anthropic_prompt(body)
    exact = count_anthropic_input_tokens(body)
    assert local > exact  # the local estimate errs high; the provider's count is exact
    local_worst = local * C_INPUT + MAX_TOKENS * C_OUTPUT
    limit = 5 * local_worst  # five worst cases left: under ten, so near the limit
    _budget(gateway, limit)

    for _ in range(2):  # the budget's state unread, then read and still near
        marker, body = _body()
        exact = count_anthropic_input_tokens(body)
        entry, headers = _send(gateway, key, body)
        assert _paths(fake_upstream, marker) == ["/v1/messages/count_tokens", "/v1/messages"]
        assert entry["estimated_input_tokens"] == exact
        assert entry["status"] == "ok"
    # The second request's hold was the exact worst case, not the local one.
    spent = Decimal(gateway.entries()[-1]["cost_usd"])
    exact_worst = exact * C_INPUT + MAX_TOKENS * C_OUTPUT
    assert Decimal(headers["x-ledger-budget-remaining-usd"]) == limit - spent - exact_worst
