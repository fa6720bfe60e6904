"""End users as the ledger keeps them: any length a client sends, Claude Code's ids, no key leak.

Live server on both databases, the official SDKs as clients. PostgreSQL refuses a value
longer than its column, so before these fixes a long end user was answered (and paid
for) and then its entry was dropped by the writer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer

GPT = "gpt-4.1-mini"
CLAUDE = "claude-sonnet-4-5"
TINY = "0.000000001"  # smaller than any request's worst case: every request is refused


def _long_user(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}-" + "x" * 300


def _stored(value: str, column: int = 256) -> str:
    """The documented stored form of an over-long value: its start, "…#" and 16 hex digits
    of its sha256, the start 200 characters long or what the column leaves room for."""
    kept = min(200, column - 18)
    return value[:kept] + "…#" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _ask(gateway: LiveServer, key: str, source: str, user: str, *, messages: Any = None) -> str:
    """One request naming ``user`` through ``source``; returns its x-ledger-request-id."""
    messages = _messages("Who am I?") if messages is None else messages
    header = {"x-ledger-user": user} if source == "header" else {}
    if source == "anthropic_metadata":
        client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
        try:
            raw = client.messages.with_raw_response.create(
                model=CLAUDE, max_tokens=50, messages=messages, metadata={"user_id": user}
            )
        except anthropic.APIStatusError as error:
            return error.response.headers["x-ledger-request-id"]
        return raw.headers["x-ledger-request-id"]
    sdk = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    extra: dict[str, Any] = {"user": user} if source == "openai_user" else {}
    try:
        response = sdk.chat.completions.with_raw_response.create(
            model=GPT, messages=messages, extra_headers=header, **extra
        )
    except openai.APIStatusError as error:
        return error.response.headers["x-ledger-request-id"]
    return response.headers["x-ledger-request-id"]


@pytest.mark.parametrize("source", ["openai_user", "anthropic_metadata", "header"])
def test_a_300_character_end_user_is_recorded_once_answered_blocked_or_refused(
    gateway: LiveServer, source: str
) -> None:
    key = gateway.team_key("research")
    user = _long_user(source)

    answered = _ask(gateway, key, source, user)
    refused = _ask(gateway, key, source, user, messages=[])  # a bad body: a 400 from Ledger
    # A per-user budget named with the whole 300 characters applies to that user only.
    budget = gateway.admin.post(
        "/admin/budgets",
        json={"team": "research", "user": user, "limit_usd": TINY, "mode": "hard"},
    )
    assert budget.status_code == 201, budget.text
    assert budget.json()["user"] == _stored(user)
    blocked = _ask(gateway, key, source, user)
    other = _ask(gateway, key, source, _long_user("someone-else"))

    entries = {e["request_id"]: e for e in gateway.wait_for_entries(4)}
    assert sorted(entries) == sorted([answered, refused, blocked, other])
    outcomes = {rid: (entries[rid]["status"], entries[rid]["http_status"]) for rid in entries}
    assert outcomes[answered] == ("ok", 200)
    assert outcomes[refused] == ("invalid_request", 400)
    assert outcomes[blocked] == ("blocked", 429)
    assert outcomes[other] == ("ok", 200)
    assert entries[blocked]["budget_id"] == budget.json()["id"]
    for request_id in (answered, refused, blocked):
        assert entries[request_id]["end_user"] == _stored(user)
        assert entries[request_id]["end_user_full"] == user

    # Reports find the user by the name it was sent with, and group it as one.
    report = gateway.admin.get("/api/reports/spend", params={"group_by": "user", "user": user})
    assert report.status_code == 200, report.text
    groups = report.json()["groups"]
    assert [(g["group"]["user"], g["requests"]) for g in groups] == [(_stored(user), 3)]


def test_a_body_that_is_not_json_still_records_the_long_header_user(gateway: LiveServer) -> None:
    key = gateway.team_key("research")
    user = _long_user("header")
    response = httpx.post(
        gateway.openai_base_url + "/chat/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {key}", "x-ledger-user": user},
    )
    assert response.status_code == 400, response.text
    entry = gateway.entry(response.headers["x-ledger-request-id"])
    assert entry["status"] == "invalid_request"
    assert entry["end_user"] == _stored(user)


def test_a_model_name_too_long_to_route_is_refused_and_still_recorded(gateway: LiveServer) -> None:
    key = gateway.team_key("research")
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    model = "m" * 300
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=_messages("hi"))
    assert refused.value.response.json()["error"]["param"] == "model"
    entry = gateway.entry(refused.value.response.headers["x-ledger-request-id"])
    assert entry["status"] == "invalid_request"
    assert entry["requested_model"] == _stored(model, column=200)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("also_in_header", [False, True])
def test_a_ledger_key_in_the_body_never_reaches_the_provider(
    gateway: LiveServer, fake_upstream: FakeUpstream, path: str, also_in_header: bool
) -> None:
    key = gateway.team_key("research")
    marker = "marker-" + uuid.uuid4().hex[:8]
    body: dict[str, Any] = {"key": key, "messages": _messages(f"key {marker}")}
    body |= (
        {"model": GPT} if path == "/v1/chat/completions" else {"model": CLAUDE, "max_tokens": 50}
    )
    headers = {"authorization": f"Bearer {key}"} if also_in_header else {}
    response = httpx.post(gateway.url + path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = [r for r in fake_upstream.requests if marker in r.body.decode()]
    assert sent and all(r.json is not None and "key" not in r.json for r in sent)
    assert all(key not in r.body.decode() and key not in str(r.headers) for r in sent)
    assert gateway.entry(response.headers["x-ledger-request-id"])["status"] == "ok"


# -- Claude Code ---------------------------------------------------------------------------


def _claude_code_id(device: str, account: str, session: str, *, legacy: bool) -> str:
    if legacy:
        return f"user_{device}_account_{account}_session_{session}"
    return json.dumps({"device_id": device, "account_uuid": account, "session_id": session})


@pytest.mark.parametrize("legacy", [False, True], ids=["json", "legacy"])
def test_claude_code_sessions_of_one_account_are_one_end_user_under_one_budget(
    gateway: LiveServer, legacy: bool
) -> None:
    key = gateway.team_key("research")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    device, account = hashlib.sha256(uuid.uuid4().bytes).hexdigest(), str(uuid.uuid4())
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    budget = gateway.admin.post(
        "/admin/budgets",
        json={"team": "research", "user": account, "limit_usd": "1.00", "mode": "hard"},
    )
    assert budget.status_code == 201, budget.text

    def ask(session: str, account: str = account) -> Any:
        user_id = _claude_code_id(device, account, session, legacy=legacy)
        return client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=50, messages=_messages("hi"), metadata={"user_id": user_id}
        )

    first, second = (
        gateway.entry(ask(session).headers["x-ledger-request-id"]) for session in sessions[:2]
    )
    for entry, session in ((first, sessions[0]), (second, sessions[1])):
        assert entry["status"] == "ok"
        assert entry["end_user"] == account
        assert entry["end_user_session"] == session
        assert entry["end_user_full"] is None
    # Both sessions were charged to the account's one budget.
    status = gateway.admin.get(f"/admin/budgets/{budget.json()['id']}/status").json()
    spent = sum(int(e["cost_usd"].replace(".", "")) for e in (first, second))
    assert int(status["spent_usd"].replace(".", "")) == spent > 0

    # Spent out, the budget refuses the account's next session too.
    patched = gateway.admin.patch(f"/admin/budgets/{budget.json()['id']}", json={"limit_usd": TINY})
    assert patched.status_code == 200, patched.text
    with pytest.raises(anthropic.RateLimitError) as refused:
        ask(sessions[2])
    third = gateway.entry(refused.value.response.headers["x-ledger-request-id"])
    assert (third["status"], third["end_user"], third["end_user_session"]) == (
        "blocked",
        account,
        sessions[2],
    )

    # Without an account, the device is the end user.
    deviced = gateway.entry(ask(sessions[0], account="").headers["x-ledger-request-id"])
    assert (deviced["end_user"], deviced["end_user_session"]) == (device, sessions[0])

    # Reports group the account's spend by session.
    report = gateway.admin.get(
        "/api/reports/spend", params={"group_by": ["user", "session"], "user": account}
    )
    assert report.status_code == 200, report.text
    rows = sorted(
        (g["group"]["user"], g["group"]["session"], g["requests"]) for g in report.json()["groups"]
    )
    assert rows == sorted((account, s, 1) for s in sessions)
